"""Partition state snapshots: data only (``codec``), versioned, state without configuration.

A snapshot holds the state of one ``PartitionStage`` (watermark, guard buckets and label
sets, validation windows, detector banks, the policy engine's own snapshot) and the input
offsets it covers, so a process that takes the partition over resumes exactly where the state
ends. Configuration is never written: ``restore`` pours the state into a stage the running
process built from its own settings (routing, guard limits, tick interval, policy rules).

Nothing is unpickled: the codec rebuilds only the allow-listed classes below (``STATE_CLASSES``).
A snapshot that fails any check raises ``SnapshotError``; the caller reports it and starts the
partition fresh instead of crashing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from selfheal.pipeline.core.codec import Codec, CodecError
from selfheal.pipeline.core.reconcile import Reconciled, reconcile

VERSION = 4  # 4: data-only codec (3 was pickle)

Offsets = dict[tuple[str, int], int]


class SnapshotError(ValueError):
    """The snapshot is corrupt, forged or from an incompatible version."""

    retriable = False


def state_classes() -> tuple[type, ...]:
    """The explicit allow-list: every class a partition's state may hold."""
    # imported here: policy.py asks for this list too, and stage imports policy indirectly
    import drain3.drain as drain
    from cachetools import LRUCache
    from drain3.simple_profiler import NullProfiler
    from selfheal.models import (
        cusum,
        error_rate,
        forecast,
        latency,
        log_templates,
        logs,
        memory,
        rules,
        security,
    )
    from selfheal.pipeline.core import fleet, guard, repair
    from selfheal.pipeline.kernel import lru, types

    return (
        # kernel records and enums that sit in state (pending findings, cases, verdicts)
        types.Severity,
        types.AnomalyKind,
        types.RepairAction,
        types.LogLevel,
        types.Mode,
        types.DecisionStatus,
        types.Suppression,
        types.Verdict,
        types.RejectReason,
        types.Sample,
        types.LogLine,
        types.Forecast,
        types.Finding,
        types.Anomaly,
        types.Decision,
        types.Verification,
        types.FleetOutcome,
        types.FleetRequest,
        types.StormEnd,
        lru.LRU,
        guard._Bucket,
        guard.FailureRatio,
        repair.Cooldowns,
        repair.Budget,
        repair.Storm,
        repair.StormDetector,
        repair.PendingVerification,
        repair.Case,
        repair.CaseBook,
        repair.SeenIds,
        fleet.FleetArbiter,
        fleet._Storm,
        # detectors (hyperparameters are part of a river-style model's state)
        rules.RatioOfLimitRule,
        rules.ConsecutiveRule,
        rules.LoopRule,
        rules.ThresholdRule,
        rules.RatioOfLimitJudge,
        rules.ConsecutiveJudge,
        rules.ThresholdJudge,
        rules.LoopJudge,
        memory.MemoryLeakJudge,
        forecast.ResourceForecastJudge,
        cusum.BinomialCusum,
        latency.LatencyDetector,
        latency.LatencyJudge,
        latency._Layout,
        error_rate.KSWin,
        error_rate._Stream,
        error_rate.ErrorRateJudge,
        logs._Ring,
        logs._TemplateStats,
        logs.LogAnalyzerJudge,
        security.SecurityJudge,
        security.AttackHit,
        log_templates.LogTemplateMiner,
        log_templates.TemplateMatch,
        # drain3's miner: clusters and prefix tree (the masker and config are rebuilt)
        drain.Drain,
        drain.LogCluster,
        drain.LogClusterCache,
        drain.Node,
        NullProfiler,
        LRUCache,
    )


@cache
def _default_codec() -> Codec:
    return Codec(state_classes())


def codec(key: bytes | None = None) -> Codec:
    """The state codec (signed with ``key`` when one is configured)."""
    base = _default_codec()
    return base if key is None else Codec(base.classes.values(), key=key)


def dumps(obj: Any, key: bytes | None = None) -> bytes:
    """Encode allow-listed state (API for other state owners, e.g. the policy engine)."""
    return codec(key).dumps(obj)


def loads(data: bytes, key: bytes | None = None) -> Any:
    """Decode what ``dumps`` wrote; ``SnapshotError`` when it cannot be trusted."""
    try:
        return codec(key).loads(data)
    except CodecError as exc:
        raise SnapshotError(str(exc)) from exc


# -- partition stages ------------------------------------------------------------------------


def stage_state(stage: Any) -> dict[str, Any]:
    """The state of a ``PartitionStage``, without its configuration."""
    g = stage.guard
    policy = stage.policy
    snap = getattr(policy, "snapshot", None)
    return {
        "watermark": stage.watermark,
        "next_tick": stage._next_tick,
        "guard": {
            "buckets": g.buckets,
            "label_sets": g.label_sets,
            "findings": g.findings,
            "newcomers": g.newcomers.state(),
        },
        "guard_time": g.time_state() if hasattr(g, "time_state") else None,
        # what two entities' clocks agree on (watermark runs: ``partition_time``)
        "clocks": stage.clocks.state() if hasattr(stage, "clocks") else None,
        "failures": {t: (f.ok, f.failed, f.last_ts, f.by_field) for t, f in stage.failures.items()},
        "series": stage.series,
        "entities": stage.entities,
        "tickers": stage.tickers,
        # the engine's own snapshot: plain data (rules, budgets, dry run stay out of it)
        "policy": snap() if snap is not None else None,
        # incidents: the partition's learned call graph and its entities' recent deploys
        "topology": stage.topology.edges_state() if hasattr(stage, "topology") else None,
        "topology_seen": stage.topology.edge_times() if hasattr(stage, "topology") else None,
        "changes": stage.changes.to_state() if hasattr(stage, "changes") else None,
        # OTLP cumulative series (last point per series, plain tuples) and ignored-point counts
        "otlp": {"series": stage.otlp_series, "counts": stage.otlp_counts}
        if hasattr(stage, "otlp_series")
        else None,
    }


def encode(stage: Any, offsets: Offsets, key: bytes | None = None) -> bytes:
    doc = {
        "version": VERSION,
        "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
        "stage": stage_state(stage),
    }
    return dumps(doc, key)


def decode(blob: bytes, key: bytes | None = None) -> tuple[Offsets, dict[str, Any]]:
    """(offsets, stage state) from a snapshot; ``SnapshotError`` when it cannot be trusted."""
    doc = loads(blob, key)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise SnapshotError(f"snapshot version {version!r}, this build reads {VERSION}")
    try:
        offsets = {(str(t), int(p)): int(o) for t, p, o in doc["offsets"]}
        state = doc["stage"]
        _check_stage_state(state)
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"malformed snapshot: {type(exc).__name__}: {exc}") from exc
    return offsets, state


def _check_stage_state(state: Any) -> None:
    from selfheal.pipeline.kernel.lru import LRU

    if not isinstance(state, dict):
        raise SnapshotError("stage state is not a mapping")
    for name in ("series", "entities", "tickers"):
        if not isinstance(state[name], LRU):
            raise SnapshotError(f"stage field {name} is not an LRU")
    g = state["guard"]
    if not (isinstance(g["buckets"], LRU) and isinstance(g["label_sets"], LRU)):
        raise SnapshotError("guard state is malformed")
    for name in ("watermark", "next_tick"):
        if not isinstance(state[name], float):
            raise SnapshotError(f"stage field {name} is not a float")
    if not isinstance(state["failures"], dict):
        raise SnapshotError("validation windows are malformed")
    if state["policy"] is not None and not isinstance(state["policy"], bytes):
        raise SnapshotError("policy snapshot is not bytes")


def restore(stage: Any, state: dict[str, Any]) -> Reconciled:
    """Pour decoded ``state`` into ``stage``, built from the running process's settings.

    Bounds come from the current config: collections keep its ``max_series``/``max_entities``;
    the judges are rebuilt through the stage's router (``reconcile``): a restored judge keeps
    what it learned only where the running settings build the same one. Returns what that did.
    """
    stage.watermark = state["watermark"]
    stage._next_tick = state["next_tick"]
    g = stage.guard
    for name in ("buckets", "label_sets"):
        coll = state["guard"][name]
        coll.maxsize = getattr(g, name).maxsize
        coll.shrink(coll.maxsize)
        setattr(g, name, coll)
    g.fit_to_config()  # tokens and label sets within the running burst and cap
    g.findings = list(state["guard"]["findings"])
    g.newcomers.restore(state["guard"].get("newcomers"))
    if state.get("guard_time") is not None and hasattr(g, "restore_time_state"):
        g.restore_time_state(state["guard_time"])
    if hasattr(stage, "clocks"):
        try:
            stage.clocks.restore(state.get("clocks"))
        except (TypeError, ValueError) as exc:
            raise SnapshotError(f"entity clocks: {exc}") from exc
    for topic, (ok, failed, last_ts, by_field) in state["failures"].items():
        fr = stage._failure(topic)
        fr.ok, fr.failed, fr.last_ts, fr.by_field = int(ok), int(failed), float(last_ts), by_field
    for name in ("series", "entities", "tickers"):
        coll = state[name]
        coll.maxsize = getattr(stage, name).maxsize
        coll.shrink(coll.maxsize)
        setattr(stage, name, coll)
    judges = reconcile(stage.router, stage.series, stage.entities, stage.tickers)
    share = getattr(stage, "series_share", None)
    if share is not None:  # counted from the restored bank, against the running config's share
        share.attach(stage.series)
    from selfheal.pipeline.kernel.lru import LRU

    otlp = state.get("otlp")
    if isinstance(otlp, dict) and isinstance(otlp.get("series"), LRU):
        otlp["series"].maxsize = stage.otlp_series.maxsize
        otlp["series"].shrink(stage.otlp_series.maxsize)
        stage.otlp_series = otlp["series"]
        try:
            counts = {str(k): int(v) for k, v in dict(otlp.get("counts") or {}).items()}
        except (TypeError, ValueError) as exc:
            raise SnapshotError(f"otlp counts: {exc}") from exc
        stage.otlp_counts = counts
    try:
        if state.get("topology") is not None:
            stage.topology.load_edges(state["topology"], state.get("topology_seen"))
        if state.get("changes") is not None:
            stage.changes.load_state(state["changes"])
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"incident state: {exc}") from exc
    restore_policy = getattr(stage.policy, "restore", None)
    if state["policy"] is not None and restore_policy is not None:
        try:
            restore_policy(state["policy"])
        except (ValueError, SnapshotError) as exc:
            raise SnapshotError(f"policy state: {exc}") from exc
    return judges
