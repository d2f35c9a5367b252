"""A page must arrive: escalations are delivered again while their receiver is down.

After an escalation nothing repairs the entity automatically, so a page lost to an
Alertmanager restart would leave a failing service alone and unseen. Through the real broker
and the executor stage:

- Alertmanager down when the escalation is decided, up a few seconds later: the alert becomes
  active without anyone re-sending it, and its outcome is one ``ok``;
- the process stops while Alertmanager is still down: the next process delivers it;
- the resolution comes while the page is still undelivered: the page is not delivered after
  it (no resolved alert fired again), the resolution is.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.control import ControlPlane
from selfheal.pipeline.app.executor_stage import ExecutorStage
from selfheal.pipeline.app.wiring import build_executors
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.kernel.protocols import ExecutionResult
from selfheal.pipeline.kernel.types import Decision, RepairAction

from tests.alertmanager_proc import alerts, free_port, running_alertmanager
from tests.conftest import consume_all
from tests.spine_helpers import settings_for, until
from tests.test_alertmanager import escalate_then_resolve

pytestmark = pytest.mark.asyncio


async def _publish(producer: AIOKafkaProducer, topic: str, d: Decision) -> None:
    await producer.send_and_wait(topic, oc.repair_like(d), key=d.entity.encode(), partition=0)


async def _outcomes(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    events = [orjson.loads(v) for v in await consume_all(bootstrap, topic, idle=1.0)]
    return [ev["data"] for ev in events if ev["type"] == oc.OUTCOME_TYPE]


def _active(base: str, entity: str) -> bool:
    return any(a["labels"]["entity"] == entity for a in alerts(base, active="true"))


class _Run:
    """One executor stage process: started on enter, stopped (as a shutdown does) on exit."""

    def __init__(self, settings: Settings, executors: list[Any]) -> None:
        control = ControlPlane(settings, settings.kafka.bootstrap, {})
        self.stage = ExecutorStage(
            settings, executors, Metrics(), control, started=time.time() - 30
        )
        self.stop = asyncio.Event()

    async def __aenter__(self) -> ExecutorStage:
        self.task = asyncio.create_task(
            self.stage.run(self.stage.settings.kafka.bootstrap, self.stop)
        )
        await until(lambda: len(self.stage._live_from) == 1, 30, "the assignment")
        return self.stage

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 60)
        await self.stage.aclose()


async def _setup(broker: Any, prefix: str, **executors: Any) -> Settings:
    s = settings_for(prefix, broker.bootstrap, partitions=1, executors=executors)
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.repairs, t.outcomes, t.control], 1)
    return s


async def test_a_page_decided_while_alertmanager_is_down_arrives_when_it_is_back(
    broker, producer: AIOKafkaProducer, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    s = await _setup(broker, topic_prefix, alertmanager_url=f"http://127.0.0.1:{port}")
    firing, _ = escalate_then_resolve("checkout-3")
    async with _Run(s, build_executors(s)):
        await _publish(producer, s.kafka.topics.repairs, firing)
        await asyncio.sleep(6.0)  # the executor's own retries are long over
        with running_alertmanager(tmp_path / "am", port) as base:
            await until(lambda: _active(base, "checkout-3"), 60, "the page to arrive")
    got = [o for o in await _outcomes(broker.bootstrap, s.kafka.topics.outcomes)]
    assert [(o["decision_id"], o["outcome"]) for o in got] == [(firing.id, "ok")]


async def test_a_page_still_undelivered_at_shutdown_is_delivered_by_the_next_process(
    broker, producer: AIOKafkaProducer, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    s = await _setup(broker, topic_prefix, alertmanager_url=f"http://127.0.0.1:{port}")
    firing, _ = escalate_then_resolve("checkout-4")
    async with _Run(s, build_executors(s)) as stage:
        await _publish(producer, s.kafka.topics.repairs, firing)
        await until(lambda: stage.ledger.get(firing.id) == oc.STARTED, 30, "the first attempt")
        await asyncio.sleep(4.0)
    assert await _outcomes(broker.bootstrap, s.kafka.topics.outcomes) == []
    with running_alertmanager(tmp_path / "am", port) as base:
        async with _Run(s, build_executors(s)):
            await until(lambda: _active(base, "checkout-4"), 60, "the page to arrive")
    got = await _outcomes(broker.bootstrap, s.kafka.topics.outcomes)
    assert [(o["decision_id"], o["outcome"]) for o in got] == [(firing.id, "ok")]


class _Receiver:
    """An escalation receiver that answers 503 until ``up`` (a retriable failure)."""

    name = "receiver"

    def __init__(self) -> None:
        self.up = False
        self.delivered: list[str] = []

    def handles(self, decision: Decision) -> bool:
        return decision.action is RepairAction.ESCALATE

    async def execute(self, decision: Decision) -> ExecutionResult:
        if not self.up:
            return ExecutionResult(decision.id, self.name, False, "HTTP 503", True)
        self.delivered.append(decision.id)
        return ExecutionResult(decision.id, self.name, True, "HTTP 200")


async def test_a_page_whose_resolution_came_first_is_not_delivered_after_it(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    s = await _setup(broker, topic_prefix)
    firing, resolution = escalate_then_resolve("checkout-5")
    receiver = _Receiver()
    topic = s.kafka.topics.outcomes
    async with _Run(s, [receiver]):
        await _publish(producer, s.kafka.topics.repairs, firing)
        await asyncio.sleep(3.0)  # failed once, waiting to try again
        await _publish(producer, s.kafka.topics.repairs, resolution)

        async def firing_done() -> bool:
            return any(
                o["decision_id"] == firing.id for o in await _outcomes(broker.bootstrap, topic)
            )

        deadline = time.monotonic() + 60
        while not await firing_done():
            assert time.monotonic() < deadline, "the page kept being retried after its resolution"
        receiver.up = True
        await until(lambda: receiver.delivered, 60, "the resolution to be delivered")
    assert receiver.delivered == [resolution.id]
    got = {o["decision_id"]: o for o in await _outcomes(broker.bootstrap, topic)}
    assert got[firing.id]["outcome"] == "failed"
    assert "its resolution came first" in got[firing.id]["detail"]
    assert got[resolution.id]["outcome"] == "ok"
