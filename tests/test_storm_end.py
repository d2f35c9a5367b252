"""A storm ends once its held entities' needs stop, even when a clearing is lost.

A held entity keeps its storm going while it is flagged (``_Storm.flagged``); the engine holding
it clears it when its condition clears or has been silent for two storm windows
(``storm_hold.unflag_stale``, in that engine's event time). Engines sharing one ``LocalFleet``
stand for the partitions of a deployment; ``LoggedFleet`` keeps the log so that fresh arbiters
(the other processes, a process started later) can read it again.
"""

from __future__ import annotations

import math

from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Decision,
    FleetOutcome,
    FleetProgress,
    FleetRequest,
    RepairAction,
    StormEnd,
    Suppression,
    Verdict,
)

from tests.test_fleet import _anomaly

W = 300.0
CONFIG = PolicyConfig.model_validate(
    {
        "budget": {"max_repairs": 10, "window_seconds": 600},
        "storm_threshold": 2,
        "storm_window_seconds": W,
        "rules": [{"name": "mem", "kinds": ["memory_high"], "actions": [{"action": "restart"}]}],
    }
)
RESTART = RepairAction.RESTART
SCALE_UP = RepairAction.SCALE_UP
MEMORY = AnomalyKind.MEMORY_HIGH
Record = FleetRequest | StormEnd


class LoggedFleet(LocalFleet):
    """A ``LocalFleet`` that keeps its log (what a ledger topic would hold)."""

    def __init__(self) -> None:
        super().__init__(FleetArbiter.from_policy(CONFIG))
        self.log: list[Record] = []

    def request(self, req: FleetRequest) -> FleetOutcome:
        self.log.append(req)
        return super().request(req)

    def note(self, req: FleetRequest) -> None:
        self.log.append(req)
        super().note(req)

    def end_storm(self, end: StormEnd) -> None:
        self.log.append(end)
        super().end_storm(end)


def _read(log: list[Record]) -> FleetArbiter:
    """Another process's arbiter, having read ``log``."""
    arbiter = FleetArbiter.from_policy(CONFIG)
    for rec in log:
        if isinstance(rec, StormEnd):
            arbiter.end(rec)
        else:
            arbiter.apply(rec)
    return arbiter


def _storm(gate: LoggedFleet) -> tuple[PolicyEngine, PolicyEngine, Decision]:
    """Engine ``a`` (partition 0) starts a storm; engine ``b`` (partition 1) holds gone-1."""
    a, b = PolicyEngine(CONFIG, gate), PolicyEngine(CONFIG, gate)
    started = [d for i in range(3) for d in a.decide(_anomaly(f"svc-{i}", 100.0 + i))]
    (storm,) = [d for d in started if d.action is RepairAction.ESCALATE]
    held = b.decide(_anomaly("gone-1", 103.0))
    assert [d.suppressed_by for d in held] == [Suppression.STORM]
    # a's held entity clears: from now on only gone-1 holds the storm up
    a.observe(ConditionReport("svc-2", MEMORY, 110.0, True))
    a.observe(ConditionReport("svc-2", MEMORY, 120.0, False))
    return a, b, storm


def _run(engine: PolicyEngine, start: float, end: float) -> list[Decision]:
    """``engine``'s partition moves on (its other entities' data), every 30 s of event time."""
    out: list[Decision] = []
    t = start
    while t <= end:
        out.extend(engine.tick(t)[1])
        t += 30.0
    return out


def _resolution(decisions: list[Decision], storm: Decision) -> Decision | None:
    done = [d for d in decisions if d.params.get("escalation_id") == storm.id]
    return next((d for d in done if d.params.get("resolved")), None)


def test_storm_ends_when_the_holder_of_a_flagged_entity_never_clears_it() -> None:
    """Partition 1 moves to another process (or its process restarts) and gets no more data:
    gone-1 was decommissioned. A restored partition is ticked only once a record arrives
    (``PartitionState._restore`` sets ``data_wall`` to infinity, ``Pipeline.tick`` skips it), so
    its engine never sends the clearing: the storm must end on the fleet log alone."""
    gate = LoggedFleet()
    a, b, storm = _storm(gate)
    # the new owner restores partition 1 (it knows gone-1 is held) and gets no record
    settings = load_settings(None, {"detection": {"models_enabled": False}})
    pipe = Pipeline(settings, lambda: PolicyEngine(CONFIG, gate), fleet=gate)
    moved = pipe.stage(1)
    assert isinstance(moved.policy, PolicyEngine)
    moved.policy.load_state(b.to_state())
    moved.watermark = 103.0
    pipe.tick(103.0 + 10 * W, idle_grace=1.0)
    assert moved.policy.watermark == 103.0, "a restored partition without data is not ticked"
    early = _run(a, 130.0, 103.0 + 2 * W)
    assert _resolution(early, storm) is None, "gone-1 may just be lagging: not over yet"
    assert gate.active_storm(RESTART, 103.0 + 2 * W) == storm.id
    late = _run(a, 103.0 + 2 * W + 30.0, 103.0 + 10 * W)
    done = _resolution(late, storm)
    assert done is not None, "the storm never ends: restarts held fleet-wide for ever"
    # three storm windows after gone-1's need was last renewed (its holder, had it run, would
    # have cleared it after two)
    assert done.ts == 103.0 + 3 * W
    assert gate.active_storm(RESTART, done.ts + 30.0) is None
    # automatic repair resumes: a new need is repaired, not held
    again = a.decide(_anomaly("svc-7", 103.0 + 10 * W + 1.0))
    assert [d.suppressed_by for d in again] == [None]
    # every process reading the log agrees, at the same record
    full = _read(gate.log)
    assert full.active_storms() == [] and full.storm_last_need(storm.id) == done.ts - W
    (end,) = [i for i, r in enumerate(gate.log) if isinstance(r, StormEnd)]
    # and without the end record (the escalating process died first) the log alone ends it:
    # a need at the stale bound is the first one judged as if no storm ran
    for ts, verdict in [(done.ts - 1.0, Verdict.STORM), (done.ts, Verdict.GRANTED)]:
        need = FleetRequest("x", ts, "svc-9", RESTART, claim=True, storm_id="x")
        assert _read(gate.log[:end]).apply(need).verdict is verdict


def test_a_silent_entity_in_a_running_partition_is_cleared_by_its_engine() -> None:
    """gone-1 stops reporting, its partition goes on: its engine clears it after two windows."""
    gate = LoggedFleet()
    a, b, storm = _storm(gate)
    out: list[Decision] = []
    for t in range(130, int(103 + 10 * W), 30):
        b.tick(float(t))
        out.extend(a.tick(float(t))[1])
    done = _resolution(out, storm)
    assert done is not None and done.ts <= 103.0 + 3 * W + 30.0


def test_a_crash_before_the_snapshot_replays_the_hold_and_its_clearing() -> None:
    """b dies after flagging gone-1, before a snapshot: its successor replays the input from
    the last snapshot, holds gone-1 again (the redelivered note keeps its first verdict) and
    clears it when it clears: the storm ends a window later, not on the stale bound."""
    gate = LoggedFleet()
    snapshot = PolicyEngine(CONFIG, gate).to_state()  # partition 1 before gone-1's need
    a, _, storm = _storm(gate)
    successor = PolicyEngine(CONFIG, gate)
    successor.load_state(snapshot)
    held = successor.decide(_anomaly("gone-1", 103.0))
    assert [d.suppressed_by for d in held] == [Suppression.STORM]
    successor.observe(ConditionReport("gone-1", MEMORY, 130.0, True))
    successor.observe(ConditionReport("gone-1", MEMORY, 140.0, False))
    done = _resolution(_run(a, 150.0, 103.0 + 10 * W), storm)
    assert done is not None and done.ts <= 140.0 + W + 30.0


def test_a_new_owner_whose_restored_state_lost_the_hold_does_not_hold_the_storm() -> None:
    """Partition 1 moves to a process running a renamed rule: the restored state drops the
    holds of rules it no longer knows (``PolicyState.from_plain``), so the new owner, though it
    runs, never clears gone-1. The fleet log still ends the storm."""
    gate = LoggedFleet()
    a, b, storm = _storm(gate)
    renamed = CONFIG.model_copy(
        update={"rules": [CONFIG.rules[0].model_copy(update={"name": "memory"})]}
    )
    moved = PolicyEngine(renamed, gate)
    moved.load_state(b.to_state())
    out: list[Decision] = []
    for t in range(130, int(103 + 10 * W), 30):
        moved.tick(float(t))
        out.extend(a.tick(float(t))[1])
    done = _resolution(out, storm)
    assert done is not None and done.ts == 103.0 + 3 * W


def test_a_flagged_entity_of_a_lagging_partition_holds_however_far_the_others_are() -> None:
    """Not too early: staleness is judged on the event time every partition reached (their
    progress on the ledger), so a partition catching up after a restart keeps its entities."""
    a = FleetArbiter.from_policy(CONFIG, wait_for_progress=True)
    for i in range(3):
        a.apply(FleetRequest(f"d{i}", 100.0 + i, f"svc-{i}", RESTART, claim=True, storm_id=f"s{i}"))
    a.apply(FleetRequest("h", 103.0, "slow-1", RESTART, claim=False, storm_id="s2", held=True))
    a.progress(FleetProgress(0, 2, math.inf))
    a.progress(FleetProgress(1, 2, 110.0))  # slow-1's partition, restored from a snapshot
    # partition 0 is hours ahead (a need of another action moves the log's time)
    a.apply(FleetRequest("x", 103.0 + 20 * W, "svc-5", SCALE_UP, claim=True, storm_id=""))
    assert a.active_storm(RESTART, 103.0 + 20 * W) == "s2"
    a.progress(FleetProgress(1, 2, 103.0 + 3 * W - 1.0))  # caught up to just before the bound
    assert a.active_storm(RESTART, 103.0 + 20 * W) == "s2"
    a.progress(FleetProgress(1, 2, 103.0 + 3 * W))  # slow-1 never renewed its need
    assert a.active_storm(RESTART, 103.0 + 20 * W) is None and a.active_storms() == []
