"""A silent partition's clock-found repairs keep their ids across a crash.

A partition that stops receiving data is ticked by the wall clock (``Pipeline.tick``), and a
loop that stopped iterating is found stuck on such a tick. If the process dies after that
tick's restart was executed but before the next snapshot, the next owner restores the last
snapshot and ticks at other wall times: it must find the same anomaly (same id) and decide the
same restart (same decision id), so the executor's at-most-once ledger skips it, and the
anomaly's incident must be reported again under its id rather than lost.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from selfheal.models.base import Judge, LogJudge, ticks
from selfheal.models.registry import Router
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.events import anomaly_event, to_anomaly
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.repair_plan import IncidentHub
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import (
    DecisionStatus,
    Envelope,
    LogLevel,
    LogLine,
    RepairAction,
    Sample,
)

from tests.spine_helpers import settings_for

T0 = 1_795_842_000.0
TOPIC = "sr.metrics"
BATCH = 5
ENTITY = "loop-1"
#: the loop's interval (sample ``limit``): stuck after ``stuck_intervals`` (2) silent intervals
INTERVAL = 30.0
GRACE = 30.0


def _records(n: int = 40) -> list[dict[str, Any]]:
    """A healthy loop (and a healthy queue) reporting every 15 s, then the partition falls
    silent: no later data, so only the clock can find the loop stuck."""
    out = []
    for i in range(n):
        ts = T0 + 15.0 * i
        out += [
            {"ts": ts, "entity": ENTITY, "metric": "loop_iteration_seconds",
             "value": 1.0, "limit": INTERVAL},
            {"ts": ts, "entity": "worker-1", "metric": "queue_depth",
             "value": 10.0, "limit": 100.0},
        ]  # fmt: skip
    return out


def _live(like: Pipeline | None = None) -> Pipeline:
    s = settings_for("sr", "unused:9092", partitions=1)
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=True)
    if like is not None:  # a new process on the deployment's shared logs
        pipe.fleet = like.fleet
        hub = like.incidents
        assert hub is not None
        pipe.incidents = IncidentHub(hub.config, hub.change_window_seconds, hub.log)
    return pipe


def _feed(pipe: Pipeline) -> float:
    """Feed the records live (the clock 1 s behind each batch); returns the last event time."""
    records = _records()
    envs = [Envelope(TOPIC, 0, i, orjson.dumps(r), None) for i, r in enumerate(records)]
    for start in range(0, len(envs), BATCH):
        batch = envs[start : start + BATCH]
        pipe.process(batch, orjson.loads(batch[-1].value)["ts"] + 1.0)
    return float(records[-1]["ts"])


def _restarts(out: Outputs) -> list[str]:
    return [
        d.id
        for d in out.decisions
        if d.entity == ENTITY
        and d.action is RepairAction.RESTART
        and d.status is DecisionStatus.EXECUTE
    ]


def _anomalies(out: Outputs) -> list[tuple[str, str, str, float]]:
    """The anomaly events' ids, types and event times (``data.score`` says how long the loop
    had been silent when the tick found it: it depends on the clock, as it should)."""
    events = [anomaly_event(a, "t") for a in out.anomalies if a.finding.entity == ENTITY]
    return [
        (e["id"], e["type"], e["time"], e["data"]["evidence"]["last_iteration"]) for e in events
    ]


def _opened(out: Outputs) -> list[str]:
    return [e.id for e in out.incidents if e.state == "opened"]


def _run(pipe: Pipeline, walls: list[float]) -> Outputs:
    out = Outputs()
    for wall in walls:
        out.extend(pipe.tick(wall, GRACE))
    return out


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # (wall offsets of the crashed process's ticks, of the next owner's), after the last
        # data's wall time; the loop's deadline is 60 s after its last iteration
        ([45.0, 95.0, 125.0], [80.0, 140.0]),
        ([200.0], [62.0, 63.0, 300.0]),
        ([61.5, 61.6, 400.0], [900.0]),
    ],
)
def test_a_stuck_loop_found_by_the_clock_is_restarted_once_across_a_crash(
    before: list[float], after: list[float]
) -> None:
    crashed = _live()
    last = _feed(crashed)
    wall0 = last + 1.0  # the wall time of the last data
    blob = snapshots.encode(crashed.stages[0], {})  # the last snapshot before the kill -9
    done = _run(crashed, [wall0 + w for w in before])
    executed = _restarts(done)
    assert len(executed) == 1, "the stuck loop is restarted once, on a clock tick"
    stuck = [a for a in done.anomalies if a.finding.entity == ENTITY]
    assert [a.finding.kind.value for a in stuck] == ["loop_stuck"]
    assert _opened(done), "the stuck loop opens an incident"
    used = crashed.fleet.budget_used(last + 61.0)
    assert used == 1

    restarted = _live(like=crashed)
    _, state = snapshots.decode(blob)
    snapshots.restore(restarted.stage(0), state)
    restarted.stages[0].data_wall = wall0
    again = _run(restarted, [wall0 + w for w in after])  # other wall times
    # the same restart: the executor's ledger (keyed by decision id) runs it once
    assert _restarts(again) == executed
    assert restarted.fleet.budget_used(last + 61.0) == used, "the fleet budget counts it once"
    assert _anomalies(again) == _anomalies(done)
    assert _opened(again) == _opened(done), "the incident's opening is not lost"


def _ticked(judge: Judge | LogJudge, clock: float) -> list[tuple[str, float]]:
    return [(to_anomaly(f).id, f.ts) for f in copy.deepcopy(judge).tick(clock)]


def test_what_a_tick_finds_is_stamped_by_the_data_not_by_the_tick() -> None:
    """Why the ids above hold: every judge the stage ticks stamps a finding with a time the data
    fixes (a loop's deadline, an error bucket's end), never with the time it was ticked at, so
    the clock (which differs on redelivery) cannot reach an anomaly id, nor the decision ids
    seeded by it. A new ticking judge must keep this (or the stage must name its findings)."""
    s = settings_for("sr", "unused:9092", partitions=1)
    router = Router(
        s.detection.rules, s.detection.models, models_enabled=s.detection.models_enabled
    )
    # a loop that iterated last at T0 (stuck 60 s later)
    iteration = Sample(T0, ENTITY, "loop_iteration_seconds", 1.0, limit=INTERVAL)
    loop = [j for j in router.series_judges(iteration) if ticks(j)]
    for j in loop:
        j.observe(iteration)
    # 50 log lines a minute, 1 error each until the last minute, then 20: a burst in the
    # bucket still open when the logs stop
    line = LogLine(T0, "api-1", LogLevel.INFO, "x")
    logs = [factory() for _, factory in router.log_judges(line)]
    logs = [j for j in logs if ticks(j)]
    for b in range(40):
        for k in range(50):
            bad = k < (20 if b == 39 else 1)
            level = LogLevel.ERROR if bad else LogLevel.INFO
            for j in logs:
                j.observe_log(LogLine(T0 + 60 * b + k, "api-1", level, "x"))  # type: ignore[union-attr]
    tickers = [*loop, *logs]
    assert {type(j).__name__ for j in tickers} == {"LoopJudge", "ErrorRateJudge"}
    for j in tickers:
        first = _ticked(j, T0 + 2400.0 + 1.0)
        assert first, f"{type(j).__name__} finds something on the clock's tick"
        for clock in (T0 + 2400.0 + 17.25, T0 + 2400.0 + 3600.0, T0 + 86_400.0):
            assert _ticked(j, clock) == first
