"""Prevention after decoding: time window, label cardinality, per-entity rate limit.

Pure and deterministic: the token buckets refill on event time, so a replay rejects exactly
what the live run rejected. Every per-key structure is an ``LRU``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from selfheal.pipeline.core.eventtime import EventClock
from selfheal.pipeline.core.newcomers import Newcomers
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Envelope,
    Finding,
    Reject,
    RejectReason,
    Sample,
    Severity,
)

_INF = float("inf")


@dataclass(frozen=True, slots=True)
class GuardConfig:
    max_future_seconds: float = 300.0
    max_past_seconds: float = 7 * 86400.0
    max_label_sets_per_series: int = 64
    rate_per_second: float = 50.0
    burst: float = 500.0
    max_entities: int = 100_000
    #: entities not seen before, admitted per event-time second after a burst (``newcomers.py``)
    new_entities_per_second: float = 200.0
    new_entities_burst: float = 20_000.0
    #: report a rate-limited entity at most once per this many event-time seconds
    report_every_seconds: float = 300.0


class _Bucket:
    __slots__ = ("dropped", "last", "reported", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last
        self.dropped = 0
        self.reported = float("-inf")


class Guard:
    """
    >>> g = Guard(GuardConfig(rate_per_second=1.0, burst=2.0))
    >>> env = Envelope("t", 0, 0, b"")
    >>> [g.admit(env, "a", "m", None, 10.0, 10.0) is None for _ in range(3)]
    [True, True, False]
    """

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.buckets: LRU[str, _Bucket] = LRU("rate_buckets", config.max_entities)
        self.label_sets: LRU[tuple[str, str], set[Hashable]] = LRU(
            "label_sets", config.max_entities
        )
        self.newcomers = Newcomers(config.new_entities_per_second, config.new_entities_burst)
        self.findings: list[Finding] = []
        #: event-time admission for watermark runs (gaps pass, lone far-future records do not)
        self.events = EventClock(config.max_future_seconds, config.max_past_seconds)

    def time_state(self) -> dict[str, object]:
        return self.events.state()

    def restore_time_state(self, state: dict[str, object]) -> None:
        self.events.restore(state)

    def fit_to_config(self) -> None:
        """Bring restored buckets and label sets within this guard's (the running) bounds.

        A snapshot's tokens can exceed a lowered ``burst`` (a bucket refills only when its
        event time moves on) and its label sets a lowered ``max_label_sets_per_series``
        (known sets are always admitted): left alone, the old bounds would govern.
        """
        cfg = self.config
        for b in self.buckets.values():
            b.tokens = min(b.tokens, cfg.burst)
        cap = cfg.max_label_sets_per_series
        for key, sets in list(self.label_sets.items()):
            if len(sets) > cap:
                # which sets stay is arbitrary; sorted, every process keeps the same ones
                self.label_sets._data[key] = set(sorted(sets, key=repr)[:cap])

    def admit(
        self,
        env: Envelope,
        entity: str,
        metric: str,
        labels: Hashable | None,
        ts: float,
        reference: float | None,
        upto: float | None = None,
    ) -> Reject | None:
        """None when the record may enter; else the Reject. ``reference`` is "now".

        ``labels`` identifies the record's label set, hashably (the stage passes its series
        key, which holds the sorted labels); falsy for a record without labels. The token
        buckets' time moves no further than ``upto`` (default ``reference``, the clock; the stage
        passes the partition's time without one): one record stamped ahead would leave the
        entity's next records, stamped right, no tokens back until time caught up with it
        (minutes of its data rejected as rate limited).
        """
        # hot path (once per record): the LRUs' dicts directly and the common case inline;
        # a new bucket, an empty bucket or a reject takes the slow path
        cfg = self.config
        if reference is not None:
            if ts > reference + cfg.max_future_seconds:
                return Reject(
                    env,
                    RejectReason.TIMESTAMP_FUTURE,
                    "ts",
                    f"{ts - reference:.0f} s in the future (max {cfg.max_future_seconds:.0f})",
                )
            if ts < reference - cfg.max_past_seconds:
                return Reject(
                    env,
                    RejectReason.TIMESTAMP_PAST,
                    "ts",
                    f"{reference - ts:.0f} s in the past (max {cfg.max_past_seconds:.0f})",
                )
        if upto is None:
            upto = _INF if reference is None else reference
        credit = ts if ts <= upto else upto
        if entity not in self.buckets._data and not self.newcomers.admit(credit):
            return self._stranger(env, entity)
        if labels:
            key = (entity, metric)
            label_sets = self.label_sets._data
            sets = label_sets.get(key)
            if sets is None:
                sets = set()
                self.label_sets.put(key, sets)
            else:
                label_sets.move_to_end(key)
            # the label set itself, not its hash(): str hashes differ between processes, and
            # these sets travel in snapshots to whichever process takes the partition over
            h = labels
            if h not in sets:
                if len(sets) >= cfg.max_label_sets_per_series:
                    return Reject(
                        env,
                        RejectReason.LABEL_CARDINALITY,
                        "labels",
                        f"more than {cfg.max_label_sets_per_series} label sets for "
                        f"{entity}/{metric}",
                    )
                sets.add(h)
        buckets = self.buckets._data
        b = buckets.get(entity)
        if b is not None:
            buckets.move_to_end(entity)
            if credit > b.last:
                tokens = b.tokens + (credit - b.last) * cfg.rate_per_second
                b.tokens = tokens if tokens < cfg.burst else cfg.burst
                b.last = credit
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return None
        return self._rate(env, entity, ts, credit)

    def admit_samples(
        self,
        samples: Sequence[tuple[Envelope, Sample]],
        keys: Sequence[Hashable],
        reference: float | None,
        upto: Sequence[float] | None = None,
    ) -> list[Reject | None]:
        """``admit`` for each of a batch's samples in order, against one ``reference``.

        ``keys`` are the samples' series keys (they hold the labels). Verdicts and state are
        those of one ``admit`` call per sample; the common case (in the time window, a known
        label set, a bucket with a token) is decided inline, without a call per sample.
        ``upto``: each sample's ``admit(upto=...)`` (default: ``reference``, the clock).
        """
        verdicts: list[Reject | None] = [None] * len(samples)
        cfg = self.config
        # the bounds ``admit`` computes per record, computed once (the same expressions)
        hi = _INF if reference is None else reference + cfg.max_future_seconds
        lo = -_INF if reference is None else reference - cfg.max_past_seconds
        label_sets = self.label_sets._data
        buckets = self.buckets._data
        rate, burst = cfg.rate_per_second, cfg.burst
        clock = _INF if reference is None else reference
        for i, ((env, s), key) in enumerate(zip(samples, keys, strict=True)):
            ts, entity = s.ts, s.entity
            cap = clock if upto is None else upto[i]
            b = buckets.get(entity)
            if ts > hi or ts < lo or b is None:
                verdicts[i] = self.admit(
                    env, entity, s.metric, key if s.labels else None, ts, reference, cap
                )
                continue
            if s.labels:
                pair = (entity, s.metric)
                sets = label_sets.get(pair)
                if sets is None or key not in sets:  # nothing changed yet: ``admit`` decides
                    verdicts[i] = self.admit(env, entity, s.metric, key, ts, reference, cap)
                    continue
                label_sets.move_to_end(pair)
            buckets.move_to_end(entity)
            credit = ts if ts <= cap else cap
            if credit > b.last:
                tokens = b.tokens + (credit - b.last) * rate
                b.tokens = tokens if tokens < burst else burst
                b.last = credit
            if b.tokens >= 1.0:
                b.tokens -= 1.0
            else:
                verdicts[i] = self._rate(env, entity, ts, credit)
        return verdicts

    def _stranger(self, env: Envelope, entity: str) -> Reject:
        cfg = self.config
        return Reject(
            env,
            RejectReason.ENTITY_CARDINALITY,
            "entity",
            f"new entity {entity[:64]!r} not admitted: more than "
            f"{cfg.new_entities_per_second:g} new entities/s (burst "
            f"{cfg.new_entities_burst:.0f}) on this partition",
        )

    def _rate(self, env: Envelope, entity: str, ts: float, credit: float) -> Reject | None:
        cfg = self.config
        b = self.buckets.get(entity)
        if b is None:
            b = _Bucket(cfg.burst, credit)
            self.buckets.put(entity, b)
        elif credit > b.last:
            b.tokens = min(cfg.burst, b.tokens + (credit - b.last) * cfg.rate_per_second)
            b.last = credit
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return None
        b.dropped += 1
        if ts - b.reported >= cfg.report_every_seconds:
            b.reported = ts
            self.findings.append(
                Finding(
                    ts=ts,
                    entity=entity,
                    metric="messages",
                    detector="guard:rate_limit",
                    kind=AnomalyKind.RATE_LIMITED,
                    severity=Severity.WARNING,
                    score=float(b.dropped),
                    threshold=cfg.rate_per_second,
                    value=float(b.dropped),
                    evidence={
                        "rate_per_second": cfg.rate_per_second,
                        "burst": cfg.burst,
                        "dropped_total": b.dropped,
                    },
                )
            )
        return Reject(
            env,
            RejectReason.RATE_LIMITED,
            "entity",
            f"entity {entity[:64]!r} above {cfg.rate_per_second}/s (burst {cfg.burst:.0f})",
        )

    def drain_findings(self) -> list[Finding]:
        out, self.findings = self.findings, []
        return out


class FailureRatio:
    """Tumbling window over messages: reports when rejects exceed ``ratio`` of a window.

    Fed one outcome per message in input order, so window borders (and the findings) do not
    depend on how the source batched the messages. The finding's time is the event time of
    the last valid message seen, which keeps replay and live runs identical.
    """

    def __init__(self, window: int, ratio: float, source: str) -> None:
        self.window = window
        self.ratio = ratio
        self.source = source
        self.ok = 0
        self.failed = 0
        self.last_ts = 0.0
        self.by_field: dict[str, int] = {}

    def add(self, reject_field: str | None, ts: float | None) -> Finding | None:
        if reject_field is None:
            self.ok += 1
            if ts is not None and ts > self.last_ts:
                self.last_ts = ts
        else:
            self.failed += 1
            if reject_field in self.by_field or len(self.by_field) < 64:
                self.by_field[reject_field] = self.by_field.get(reject_field, 0) + 1
        total = self.ok + self.failed
        if total < self.window:
            return None
        share = self.failed / total
        finding = None
        if share > self.ratio:
            top = sorted(self.by_field.items(), key=lambda kv: -kv[1])[:5]
            finding = Finding(
                ts=self.last_ts,
                entity=f"selfheal:{self.source}",
                metric="input_validation",
                detector="guard:validation",
                kind=AnomalyKind.VALIDATION_FAILURES,
                severity=Severity.WARNING,
                score=share,
                threshold=self.ratio,
                value=float(self.failed),
                evidence={"window_messages": total, "failed": self.failed, "top_fields": dict(top)},
            )
        self.ok = self.failed = 0
        self.by_field = {}
        return finding
