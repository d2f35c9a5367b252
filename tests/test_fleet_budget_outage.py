"""The fleet budget across an outage longer than the ledger's wall-clock read-back.

A process spends the fleet budget, checkpoints and goes down. It comes back (wall clock) after
more than the ledger's lookback (1 h plus twice the longer window) and works through the
backlog: records whose event times fall in the same budget window as the repairs it made
before. The budget is judged in event time, so those repairs count: the read-back must reach
the ledger records of that window, not only those of the last wall-clock hour.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from selfheal.connectors.fleet_ledger import KafkaFleet, encode_request
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app.runner import Runner
from selfheal.pipeline.core.fleet import FleetArbiter
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import (
    Decision,
    FleetRequest,
    RepairAction,
    Suppression,
    Verdict,
)

from tests.conftest import consume_all
from tests.spine_helpers import critical_memory, produce_records, run_until, settings_for

pytestmark = pytest.mark.asyncio

BUDGET = {"max_repairs": 2, "window_seconds": 600.0}
#: the runner's read-back of the fleet ledger (wall seconds): 1 h plus twice the longer window
LOOKBACK = 3600 + 2 * 600.0


def _burst(entities: list[str], start: float) -> list[dict[str, Any]]:
    return [critical_memory(e, start + 15 * i) for i in range(4) for e in entities]


async def test_budget_spent_before_a_long_outage_holds_for_the_backlog(
    broker, producer, topic_prefix
) -> None:
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        detection={"models_enabled": False},
        policy={"budget": BUDGET, "storm_threshold": 50},
    )
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    base = time.time() - 900
    before = _burst(["a-0", "a-1", "a-2"], base)
    await produce_records(producer, t.metrics, before)
    first = Runner(s, lambda: PolicyEngine(s.policy))
    await run_until(first, broker.bootstrap, lambda: first.stats.messages >= len(before))
    assert first.stats.repairs == 2  # the budget, spent; a-2 waits for the window

    # the backlog of the outage: new entities, event times inside the same budget window
    backlog = _burst(["b-0", "b-1", "b-2"], base + 120)
    await produce_records(producer, t.metrics, backlog)
    # another deployment shares the ledger topic and writes during the outage (the embedded
    # broker finds offsets by append time: the outage is one of real seconds, the clock below
    # puts the restart just past the read-back; and with no record after the read-back's
    # start Kafka would seek to the end, the embedded broker to offset 0)
    await asyncio.sleep(6.0)
    other = encode_request(_claim(0, base), "another-deployment")
    md = await producer.send_and_wait(t.fleet, other, partition=0)
    written = md.timestamp / 1000
    # the read-back starts 4 s before that record: after every record of the first process
    ahead = LOOKBACK - (time.time() - written) - 4.0
    later = Runner(s, lambda: PolicyEngine(s.policy), clock=lambda: time.time() + ahead)
    decided: list[Decision] = []
    later.output_hooks.append(lambda out: decided.extend(out.decisions))
    await run_until(later, broker.bootstrap, lambda: later.stats.messages >= len(backlog))

    repairs = [orjson.loads(r) for r in await consume_all(broker.bootstrap, t.repairs)]
    executed = {
        r["id"]: (r["data"].get("entity"), r.get("time"))
        for r in repairs
        if r["data"]["status"] == "execute" and r["data"]["action"] == "restart"
    }
    # every repair's event time lies within one budget window: at most the budget of them
    assert len(executed) <= BUDGET["max_repairs"], sorted(executed.values())
    assert later.stats.repairs == 0
    # the backlog was decided, and held by the budget spent before the outage
    held = {d.entity for d in decided if d.suppressed_by is Suppression.BUDGET}
    assert held == {"b-0", "b-1", "b-2"}, decided


CONFIG = PolicyConfig.model_validate({"budget": BUDGET, "storm_threshold": 50})


async def test_a_gate_reads_back_to_an_older_event_time(broker, producer, topic_prefix) -> None:
    """``read_back``: a gate that started reading the ledger after the budget was spent (wall
    clock) learns of it by reading again from earlier; it never reads less than it did."""
    topic = f"{topic_prefix}.fleet"
    await ensure_topics(broker.bootstrap, [topic], 1)

    def gate(lookback: float) -> KafkaFleet:
        return KafkaFleet(
            broker.bootstrap,
            topic,
            "g",
            FleetArbiter.from_policy(CONFIG),
            lookback_seconds=lookback,
            fresh=lambda: FleetArbiter.from_policy(CONFIG),
        )

    first = gate(60.0)
    await first.start()
    late = gate(2.0)
    try:
        spent = time.time()
        verdicts = [first.request(_claim(i, spent - 300 + i)).verdict for i in range(3)]
        assert verdicts == [Verdict.GRANTED, Verdict.GRANTED, Verdict.BUDGET]
        await asyncio.sleep(4.0)
        # a record after them (another deployment's), so the lookup by time finds a place
        await producer.send_and_wait(topic, encode_request(_claim(0, 0.0), "other"), partition=0)
        await late.start()
        assert late.budget_used(spent - 200) == 0  # its lookback alone misses them
        await late.read_back(spent + 1.0)  # later than it read from: nothing to do
        assert late.budget_used(spent - 200) == 0
        await late.read_back(spent - 60)
        assert late.budget_used(spent - 200) == 2
        # a redelivered request keeps its verdict; a new one in the window finds none left
        assert late.request(_claim(0, spent - 300)).verdict is Verdict.GRANTED
        assert late.request(_claim(7, spent - 200)).verdict is Verdict.BUDGET
        assert first.request(_claim(8, spent - 199)).verdict is Verdict.BUDGET
    finally:
        await late.stop()
        await first.stop()


def _claim(i: int, ts: float) -> FleetRequest:
    return FleetRequest(f"d{i}", ts, f"svc-{i}", RepairAction.RESTART, True, f"s{i}")
