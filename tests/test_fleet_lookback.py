"""A storm that outlasts the fleet ledger's lookback: a process (re)started during it must hold.

A process reads the ledger from ``lookback_seconds`` ago (wall clock) when it (re)starts, e.g.
after a ledger hiccup restarted its session. A storm lasts as long as held entities stay
unhealthy, so it can have started before that: the process must still know the storm from the
held entities' needs it reads, and hold, not repair at the budget's rate.
"""

from __future__ import annotations

import asyncio

import pytest
from selfheal.connectors.fleet_ledger import KafkaFleet
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.fleet import FleetArbiter
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import (
    DecisionStatus,
    FleetRequest,
    RepairAction,
    StormEnd,
    Suppression,
    Verdict,
)

from tests.test_fleet import _anomaly

CONFIG = PolicyConfig.model_validate(
    {
        "budget": {"max_repairs": 10, "window_seconds": 600},
        "storm_threshold": 2,
        "storm_window_seconds": 300,
        "rules": [{"name": "mem", "kinds": ["memory_high"], "actions": [{"action": "restart"}]}],
    }
)
LOOKBACK = 2.0  # wall seconds a (re)started gate reads back


@pytest.mark.asyncio
async def test_process_restarted_during_a_long_storm_still_holds(broker, topic_prefix) -> None:
    topic = f"{topic_prefix}.fleet"
    await ensure_topics(broker.bootstrap, [topic], 1)

    def gate() -> KafkaFleet:
        arbiter = FleetArbiter.from_policy(CONFIG)
        return KafkaFleet(broker.bootstrap, topic, "g", arbiter, lookback_seconds=LOOKBACK)

    first = gate()
    await first.start()
    restarted = gate()
    try:
        engine = PolicyEngine(CONFIG, first)
        started = [d for i in range(3) for d in engine.decide(_anomaly(f"svc-{i}", 100.0 + i))]
        storm = next(d for d in started if d.action is RepairAction.ESCALATE)
        await asyncio.sleep(LOOKBACK + 1.0)  # the storm's start is older than the lookback
        # a held entity is still unhealthy: its need keeps the storm going
        held = engine.decide(_anomaly("svc-0", 200.0))
        assert [d.suppressed_by for d in held] == [Suppression.STORM]
        assert first.active_storm(RepairAction.RESTART, 210.0) == storm.id
        await restarted.start()
        other = PolicyEngine(CONFIG, restarted)
        decisions = other.decide(_anomaly("svc-9", 210.0))
        # held by the running storm, as in the process that read it start: no repair, and no
        # second storm escalation
        assert not [d for d in decisions if d.status is DecisionStatus.EXECUTE]
        assert [(d.action, d.suppressed_by) for d in decisions] == [
            (RepairAction.RESTART, Suppression.STORM)
        ]
        assert restarted.active_storm(RepairAction.RESTART, 210.0) == storm.id
        assert restarted.budget_used(210.0) == 0
        assert first.active_storm(RepairAction.RESTART, 211.0) == storm.id
    finally:
        await restarted.stop()
        await first.stop()


def test_a_held_note_never_revives_a_storm_that_ended_or_was_released() -> None:
    a = FleetArbiter.from_policy(CONFIG)
    claims = [_claim(i, 100.0 + i) for i in range(3)]
    assert [a.apply(r).verdict for r in claims][-1] is Verdict.STORM_STARTED
    a.end(StormEnd("s2", RepairAction.RESTART, 110.0, released=True, by="ana"))
    # a heartbeat logged before this process read the release names the storm: no hold
    assert a.apply(_held("late", 111.0, "s2")).verdict is Verdict.NOTED
    assert a.active_storm(RepairAction.RESTART, 111.0) is None
    # a reader whose log starts at that heartbeat never saw the storm start or end: it runs
    late = FleetArbiter.from_policy(CONFIG)
    assert late.apply(_held("late", 111.0, "s2")).verdict is Verdict.STORM
    assert late.active_storm(RepairAction.RESTART, 111.0) == "s2"


def _claim(i: int, ts: float) -> FleetRequest:
    return FleetRequest(f"d{i}", ts, f"svc-{i}", RepairAction.RESTART, True, f"s{i}")


def _held(name: str, ts: float, storm_id: str) -> FleetRequest:
    return FleetRequest(name, ts, "svc-0", RepairAction.RESTART, False, storm_id, held=True)
