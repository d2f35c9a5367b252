"""A restored partition runs under the running process's settings, not the snapshot's.

Snapshots hold each series' judges whole (a rule judge carries its rule, a model its
hyperparameters). After a restore the stage's banks are rebuilt through its router
(``pipeline/core/reconcile.py``): a judge is kept with what it learned only where the running
settings build the same one; a changed one relearns, a removed one is gone, a new one is added.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import orjson
import pytest
from selfheal.connectors.kafka import ensure_topics
from selfheal.models.latency import LatencyJudge
from selfheal.models.logs import LogAnalyzerJudge
from selfheal.models.memory import MemoryLeakJudge
from selfheal.models.rules import DEFAULT_RULES
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import AnomalyKind, Envelope

from tests.conftest import consume_all
from tests.spine_helpers import (
    committed_offset,
    produce_records,
    settings_for,
    start_pipeline,
    wait_while_running,
    write_config,
)

MEM = "container_memory_working_set_bytes"
T0 = 1_795_842_000.0


def _pipe(**detection: Any) -> Pipeline:
    s = settings_for("rs", "unused:9092", partitions=1, detection=detection)
    return Pipeline(s, lambda: PolicyEngine(s.policy), live=False)


def _metric(entity: str, metric: str, ts: float, value: float, **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "entity": entity, "metric": metric, "value": value, **extra}


def _feed(pipe: Pipeline, records: list[dict[str, Any]], topic: str = "rs.metrics") -> Outputs:
    envs = [Envelope(topic, 0, i, orjson.dumps(r), None) for i, r in enumerate(records)]
    return pipe.process(envs, None)


def _mixed(start: float, steps: int) -> list[dict[str, Any]]:
    """Memory, latency, a queue, a loop, disk usage and request counters on a few entities."""
    out = []
    for i in range(steps):
        ts = start + 15.0 * i
        out += [
            _metric("api", MEM, ts, 4e8 + 1e5 * i, limit=1e9),
            _metric("api", "http_request_duration_seconds", ts, 0.2 + 0.01 * (i % 5)),
            _metric("worker", "queue_depth", ts, 10.0, limit=100.0),
            _metric("worker", "loop_iteration_seconds", ts, 1.0, limit=10.0),
            _metric("db", "disk_used_bytes", ts, 5e10 + 1e6 * i, limit=1e11),
            _metric("api", "requests_total", ts, 100.0 * i),
            _metric("api", "errors_total", ts, float(i // 10)),
        ]
    return out


def _logs(start: float, n: int) -> list[dict[str, Any]]:
    return [
        {"ts": start + i, "entity": "web", "level": "info", "message": f"GET /item/{i} 200"}
        for i in range(n)
    ]


def _restart(old: Pipeline, new: Pipeline) -> snapshots.Reconciled:
    _, state = snapshots.decode(snapshots.encode(old.stages[0], {}))
    return snapshots.restore(new.stage(0), state)


def _judges(pipe: Pipeline) -> list[Any]:
    stage = pipe.stages[0]
    return [j for js in stage.series.values() for j in js] + list(stage.entities.values())


def _busy(**detection: Any) -> Pipeline:
    pipe = _pipe(**detection)
    _feed(pipe, _mixed(T0, 400))
    _feed(pipe, _logs(T0, 300), topic="rs.logs")
    return pipe


def test_the_same_settings_keep_every_judge_and_what_it_learned() -> None:
    old = _busy()
    new = _pipe()
    got = _restart(old, new)
    kinds = {type(j).__name__ for j in _judges(new)}
    assert {"MemoryLeakJudge", "LatencyJudge", "LogAnalyzerJudge", "ErrorRateJudge"} <= kinds
    assert {"RatioOfLimitJudge", "LoopJudge", "ResourceForecastJudge"} <= kinds
    assert (got.rebuilt, got.added, got.dropped) == (0, 0, 0)
    assert got.kept == len(_judges(new))
    lat = next(j for j in _judges(new) if isinstance(j, LatencyJudge))
    assert lat.detector.n == 400, "the restored latency model keeps what it learned"
    # the tickers are the banks' judges, not stale copies
    tick_ids = {id(j) for j in new.stages[0].tickers.values()}
    assert tick_ids and tick_ids <= {id(j) for j in _judges(new)}


def test_a_changed_rule_threshold_governs_the_restored_series() -> None:
    def rules(warning: float) -> dict[str, Any]:
        rule = {"type": "ratio_of_limit", "name": "memory_high", "metrics": [MEM]}
        return {"rules": [{**rule, "kind": "memory_high", "warning": warning, "critical": 0.99}]}

    at_60 = [_metric("api", MEM, T0 + 15.0 * i, 6e8, limit=1e9) for i in range(40)]
    old = _pipe(**rules(0.9))
    assert not _feed(old, at_60).anomalies
    mem_before = next(j for j in _judges(old) if isinstance(j, MemoryLeakJudge))
    new = _pipe(**rules(0.5))
    got = _restart(old, new)
    assert (got.rebuilt, got.added, got.dropped) == (1, 0, 0), got
    later = [_metric("api", MEM, T0 + 600 + 15.0 * i, 6e8, limit=1e9) for i in range(4)]
    found = _feed(new, later).anomalies
    assert [(a.finding.kind, a.finding.threshold) for a in found] == [
        (AnomalyKind.MEMORY_HIGH, 0.5)
    ]
    # the snapshot's process, fed the same, stays quiet: the difference is the new setting
    assert not _feed(old, later).anomalies
    # the memory model's settings did not change: it is restored with its history
    mem = next(j for j in _judges(new) if isinstance(j, MemoryLeakJudge))
    assert mem.__getstate__() != MemoryLeakJudge().__getstate__()
    assert type(mem) is type(mem_before)


def test_a_removed_loop_rule_no_longer_ticks_after_a_restore() -> None:
    loop = [_metric("worker", "loop_iteration_seconds", T0 + 5.0 * i, 1.0, limit=10.0)
            for i in range(10)]  # fmt: skip
    # then only two other entities (the partition's time is what two entities' clocks agree
    # on): the loop goes silent for many intervals
    silence = [_metric(f"other-{i % 2}", "queue_depth", T0 + 60 + 5.0 * i, 1.0, limit=10.0)
               for i in range(20)]  # fmt: skip
    without_loop = {"rules": [r for r in _rules_json() if r["type"] != "loop"]}

    def stuck_after_restart(**detection: Any) -> list[Any]:
        old = _pipe()
        _feed(old, loop)
        new = _pipe(**detection)
        _restart(old, new)
        out = _feed(new, silence)
        return [a for a in out.anomalies if a.finding.entity == "worker"]

    assert stuck_after_restart(), "control: under the same rules the silent loop is stuck"
    assert not stuck_after_restart(**without_loop)


def _rules_json() -> list[dict[str, Any]]:
    from pydantic import TypeAdapter
    from selfheal.models.rules import RuleSpec

    adapter: TypeAdapter[Any] = TypeAdapter(tuple[RuleSpec, ...])
    return list(adapter.dump_python(DEFAULT_RULES, mode="json"))


def test_models_turned_off_leave_only_the_rules() -> None:
    old = _busy()
    new = _pipe(models_enabled=False)
    got = _restart(old, new)
    assert got.dropped > 0 and got.rebuilt == 0 and got.added == 0
    assert {type(j).__name__ for j in _judges(new)} == {
        "RatioOfLimitJudge", "LoopJudge"
    }  # fmt: skip
    assert len(new.stages[0].entities) == 0
    assert all(not isinstance(j, LogAnalyzerJudge) for j in new.stages[0].tickers.values())


def test_a_changed_model_setting_rebuilds_that_model_only() -> None:
    old = _busy()
    changed = {
        "latency": {"alarm_z": 3.5},
        "logs": {"sim_th": 0.8},
        "error_rate": {"min_requests": 30},
    }
    new = _pipe(models=changed)
    got = _restart(old, new)
    # api's latency, web's log miner, the error-rate judges of api (counters) and web (logs)
    assert (got.rebuilt, got.added, got.dropped) == (4, 0, 0), got
    judges = _judges(new)
    lat = next(j for j in judges if isinstance(j, LatencyJudge))
    assert lat.config.alarm_z == 3.5 and lat.detector.n == 0, "relearns under its new setting"
    logs = next(j for j in judges if isinstance(j, LogAnalyzerJudge))
    assert logs.sim_th == 0.8 and logs._lines == 0
    web_errors = new.stages[0].entities.peek(("web", "error_rate"))
    assert web_errors is not None and web_errors.min_requests == 30
    assert new.stages[0].tickers.peek(("web", "error_rate")) is web_errors, "the fresh one ticks"
    mem = next(j for j in judges if isinstance(j, MemoryLeakJudge))
    assert mem.__getstate__() != MemoryLeakJudge().__getstate__(), "memory keeps its history"


def test_a_newly_configured_rule_watches_restored_series() -> None:
    rules = [r for r in _rules_json() if r["name"] != "queue_high"]
    old = _pipe(rules=rules)
    full = [_metric("worker", "queue_depth", T0 + 15.0 * i, 99.0, limit=100.0) for i in range(5)]
    assert not _feed(old, full).anomalies
    new = _pipe()
    got = _restart(old, new)
    assert got.added == 1
    later = [_metric("worker", "queue_depth", T0 + 300 + 15.0 * i, 99.0, limit=100.0)
             for i in range(3)]  # fmt: skip
    assert [a.finding.kind for a in _feed(new, later).anomalies] == [AnomalyKind.QUEUE_HIGH]


@pytest.mark.asyncio
async def test_a_restarted_process_applies_its_new_threshold_to_restored_series(
    broker, producer, topic_prefix, tmp_path
):
    """``selfheal run`` killed with SIGKILL after a snapshot; the next process starts with a
    lower memory threshold (the runbook's "tighten a rule" change) and restores the partition:
    the restored series are judged by the new threshold, and the log says what was rebuilt."""

    def settings(warning: float) -> Any:
        rule = {"type": "ratio_of_limit", "name": "memory_high", "metrics": [MEM]}
        rules = [{**rule, "kind": "memory_high", "warning": warning, "critical": 0.99}]
        return settings_for(
            topic_prefix,
            broker.bootstrap,
            partitions=1,
            detection={"models_enabled": False, "rules": rules},
        )

    old, new = settings(0.9), settings(0.6)
    t = old.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    log = tmp_path / "run.log"
    base = time.time() - 3600
    first = [_metric(f"old-{e}", MEM, base + 15 * i, 7e8, limit=1e9) for i in range(4)
             for e in range(3)]  # fmt: skip
    await produce_records(producer, t.metrics, first)

    async def committed(n: int) -> bool:
        return await committed_offset(broker.bootstrap, old.kafka.group_id, t.metrics) >= n

    proc = start_pipeline(write_config(tmp_path / "old.yaml", old), broker.bootstrap, log)
    try:  # a commit follows a snapshot of the partition
        await wait_while_running(lambda: committed(len(first)), proc, log)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    later = base + 900
    second = [_metric(f"old-{e}", MEM, later + 15 * i, 7e8, limit=1e9) for i in range(4)
              for e in range(3)]  # fmt: skip
    await produce_records(producer, t.metrics, second)
    proc = start_pipeline(write_config(tmp_path / "new.yaml", new), broker.bootstrap, log)
    try:
        await wait_while_running(lambda: committed(len(first) + len(second)), proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    text = log.read_text()
    assert "starting it fresh" not in text, "the snapshot was restored"
    assert "3 judges rebuilt" in text, text[-3000:]
    events = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.anomalies)]
    high = [e["data"] for e in events if e["data"]["kind"] == "memory_high"]
    assert {(d["entity"], d["threshold"]) for d in high} == {
        ("old-0", 0.6), ("old-1", 0.6), ("old-2", 0.6)
    }  # fmt: skip
