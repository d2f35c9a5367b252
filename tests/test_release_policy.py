"""The policy side of an operator release, and storm ends judged on every partition's progress.

Pure: engines sharing one ``LocalFleet`` stand for the partitions of a deployment; the Kafka
ledger and real processes are in ``test_release.py`` and ``test_storm_two_process.py``.
"""

from __future__ import annotations

import math

import pytest
from selfheal.connectors.fleet_ledger import decode_record, encode_progress
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.policy import PolicyEngine, storm_entity
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    DecisionStatus,
    FleetProgress,
    FleetRequest,
    RepairAction,
    Suppression,
)

from tests.test_policy_ladder import _HC, T0, _finding, replay

RESTART = RepairAction.RESTART
MEMORY = AnomalyKind.MEMORY_HIGH


def test_an_escalation_is_released_by_its_id_once() -> None:
    records = [
        {"ts": T0 + 10 * i, "entity": "web-1", "metric": "health_check_ok", "value": 0.0}
        for i in range(150)
    ]
    decisions, _, pipe = replay(records, policy={"rules": [_HC]})
    eng = pipe.stages[0].policy
    assert isinstance(eng, PolicyEngine)
    (escalation,) = [
        d
        for d in decisions
        if d.action is RepairAction.ESCALATE and d.status is DecisionStatus.EXECUTE
    ]
    assert eng.escalated_case(escalation.id) == ("hc", "web-1")
    assert [e["id"] for e in eng.open_escalations()] == [escalation.id]
    assert eng.release_escalation("not-an-escalation", "alice") is None
    (resolution,) = eng.release_escalation(escalation.id, "alice") or []
    assert resolution.params["resolved"] is True and resolution.params["released_by"] == "alice"
    assert resolution.params["escalation_id"] == escalation.id
    assert eng.release_escalation(escalation.id, "alice") is None  # released already
    assert eng.open_escalations() == []
    # the next finding, even within the dedup window of the escalation, is the first rung
    again = eng.decide(_finding(eng.watermark + 1, "web-1", AnomalyKind.HEALTH_CHECK_FAILED))
    assert [(d.action, d.status) for d in again] == [(RESTART, DecisionStatus.EXECUTE)]


def _engines(n: int) -> tuple[list[PolicyEngine], LocalFleet]:
    cfg = load_settings(None, {"policy": {"storm_threshold": 3}}).policy  # the default rules
    fleet = LocalFleet(FleetArbiter.from_policy(cfg))
    return [PolicyEngine(cfg, fleet) for _ in range(n)], fleet


def test_a_storm_released_by_its_id_ends_in_every_engine_sharing_the_fleet() -> None:
    engines, fleet = _engines(2)
    out = [d for i in range(8) for d in engines[i % 2].decide(_finding(T0 + i, f"svc-{i}", MEMORY))]
    (storm,) = [d for d in out if d.entity == storm_entity(RESTART)]
    owner = next(e for e in engines if e.escalated_storm(storm.id) is RESTART)
    other = next(e for e in engines if e is not owner)
    assert other.escalated_storm(storm.id) is None
    assert other.release_escalation(storm.id, "bob") is None  # not raised there
    (resolution,) = owner.release_escalation(storm.id, "bob") or []
    assert resolution.params == {**resolution.params, "resolved": True, "released_by": "bob"}
    assert fleet.storm_released(storm.id) == "bob" and fleet.active_storm(RESTART, T0 + 9) is None
    # the other engine's held entities are repaired again (at the budget's rate), not held
    later = [
        d for i in range(1, 8, 2) for d in other.decide(_finding(T0 + 100 + i, f"svc-{i}", MEMORY))
    ]
    assert not [d for d in later if d.suppressed_by is Suppression.STORM]
    assert [d for d in later if d.status is DecisionStatus.EXECUTE]
    # ... and the storm does not form again while the needs go on
    assert not [d for d in later if d.entity == storm_entity(RESTART)]


def _need(i: int, ts: float) -> FleetRequest:
    return FleetRequest(f"d{i}", ts, f"e{i}", RESTART, claim=True, storm_id=f"s{i}")


def test_a_storm_ends_only_once_every_partition_passed_its_window() -> None:
    a = FleetArbiter(10, 600.0, 1, 300.0, wait_for_progress=True)
    a.apply(_need(0, 0.0))
    assert a.apply(_need(1, 10.0)).storm_id == "s1"
    # one partition far ahead (a need of another action): its time alone would end the storm
    a.apply(FleetRequest("x", 2000.0, "e9", RepairAction.SCALE_UP, claim=True, storm_id=""))
    assert a.active_storm(RESTART, 2000.0) == "s1", "nobody reported progress yet"
    a.progress(FleetProgress(0, 2, math.inf))
    assert a.active_storm(RESTART, 2000.0) == "s1", "partition 1 not reported"
    a.progress(FleetProgress(1, 2, 200.0))
    assert a.fleet_time(2000.0) == 200.0 and a.active_storm(RESTART, 2000.0) == "s1"
    a.progress(FleetProgress(1, 2, 2000.0))
    assert a.active_storm(RESTART, 2000.0) is None
    assert [s.id for s in a.active_storms()] == []
    # without reports (a replay, one engine) the arbiter's own time decides, as before
    b = FleetArbiter(10, 600.0, 1, 300.0)
    b.apply(_need(0, 0.0))
    b.apply(_need(1, 10.0))
    assert b.active_storm(RESTART, 400.0) is None


@pytest.mark.parametrize("ts", [math.inf, -math.inf, 1_795_842_000.5])
def test_progress_records_round_trip(ts: float) -> None:
    report = FleetProgress(3, 4, ts)
    assert decode_record(encode_progress(report, "g"), "g") == report
    assert decode_record(encode_progress(report, "g"), "h") is None
