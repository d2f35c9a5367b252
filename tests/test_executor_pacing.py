"""The executor stage runs repairs of one entity no closer in wall time than the policy spaced
them in event time (``pipeline/app/pacing.py``), through the real broker.

A backlog is read faster than repairs act: the decisions the policy spaced by a cooldown and a
verification window arrive within a second. Before, the stage ran them all (two restarts and a
scale-up of one service in a second, on hour-old data).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.control import ControlPlane
from selfheal.pipeline.app.executor_stage import ExecutorStage
from selfheal.pipeline.app.pacing import Pacing
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.kernel.protocols import ExecutionResult
from selfheal.pipeline.kernel.types import Decision, Mode, RepairAction

from tests.conftest import consume_all
from tests.spine_helpers import settings_for, until

pytestmark = pytest.mark.asyncio


class Recording:
    """Restarts, scale-ups and circuit breaks that succeed at once, recording when they ran."""

    name = "recording"

    def __init__(self) -> None:
        self.runs: list[tuple[str, float]] = []

    def handles(self, decision: Decision) -> bool:
        return decision.action in (
            RepairAction.RESTART, RepairAction.SCALE_UP, RepairAction.CIRCUIT_BREAK
        )  # fmt: skip

    async def execute(self, decision: Decision) -> ExecutionResult:
        self.runs.append((decision.id, time.time()))
        return ExecutionResult(decision.id, self.name, True, "done")


def _decision(name: str, entity: str, action: RepairAction, ts: float) -> Decision:
    return Decision(
        id=name, ts=ts, action=action, entity=entity, mode=Mode.ENFORCE, predictive=False,
        reason=("a1",), rule="health-check",
    )  # fmt: skip


async def _publish(producer: AIOKafkaProducer, topic: str, d: Decision) -> None:
    value = oc.repair_like(d, "selfheal-detect")
    await producer.send_and_wait(topic, value, key=d.entity.encode(), partition=0)


async def test_a_backlog_s_repairs_of_one_service_are_not_run_back_to_back(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    s = settings_for(topic_prefix, broker.bootstrap, partitions=1)
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.repairs, t.outcomes], 1)
    ex = Recording()
    stage = ExecutorStage(
        s, [ex], Metrics(), ControlPlane(s, broker.bootstrap, {}), started=time.time() - 5
    )
    stop = asyncio.Event()
    run = asyncio.create_task(stage.run(broker.bootstrap, stop))
    old = time.time() - 2 * 3600  # the backlog: decided on data two hours old
    now = time.time()
    try:
        await until(lambda: len(stage._live_from) == 1, 30, "the assignment")
        backlog = [
            _decision("r1", "web-1", RepairAction.RESTART, old),
            _decision("r2", "web-1", RepairAction.RESTART, old + 300),  # one cooldown later
            _decision("s1", "web-1", RepairAction.SCALE_UP, old + 600),  # one window later
            _decision("cb", "web-1", RepairAction.CIRCUIT_BREAK, old + 601),  # protective
            _decision("w1", "web-2", RepairAction.RESTART, now - 20),  # live: paced
        ]
        for d in backlog:
            await _publish(producer, t.repairs, d)
        await until(lambda: len(ex.runs) >= 3, 30, "the first repairs")
        await asyncio.sleep(5)  # the live one's next repair, decided 5 s later
        await _publish(
            producer, t.repairs, _decision("w2", "web-2", RepairAction.SCALE_UP, now - 15)
        )
        await until(lambda: len(ex.runs) >= 4, 30, "the live service's second repair")
        await asyncio.sleep(2)  # anything else would have run by now
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
    assert [name for name, _ in ex.runs] == ["r1", "cb", "w1", "w2"]
    events = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.outcomes, idle=1.0)]
    outcomes: dict[str, Any] = {
        e["data"]["decision_id"]: e["data"] for e in events if e["type"] == oc.OUTCOME_TYPE
    }
    for name in ("r2", "s1"):
        assert outcomes[name]["outcome"] == "skipped", outcomes[name]
        assert "restart of web-1 started" in outcomes[name]["detail"]
    assert {outcomes[n]["outcome"] for n in ("r1", "cb", "w1", "w2")} == {"ok"}


async def test_a_restarted_stage_paces_from_the_repairs_started_before_it(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    """The pacing memory is rebuilt from the outcome topic: a process restarted (or a
    partition's new owner) in the middle of a backlog does not run the next repair of an
    entity back to back with the one started just before the restart."""
    s = settings_for(topic_prefix, broker.bootstrap, partitions=1)
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.repairs, t.outcomes], 1)
    old = time.time() - 2 * 3600  # the backlog: decided on data two hours old
    runs: list[list[tuple[str, float]]] = []
    for batch in (
        [_decision("r1", "web-1", RepairAction.RESTART, old)],
        # after the restart: one cooldown later in event time, seconds later on the clock
        [
            _decision("r2", "web-1", RepairAction.RESTART, old + 300),
            _decision("o1", "web-3", RepairAction.RESTART, old + 300),  # no repair before
        ],
    ):
        ex = Recording()
        stage = ExecutorStage(
            s, [ex], Metrics(), ControlPlane(s, broker.bootstrap, {}), started=time.time() - 5
        )
        stop = asyncio.Event()
        run = asyncio.create_task(stage.run(broker.bootstrap, stop))
        try:
            await until(lambda st=stage: len(st._live_from) == 1, 30, "the assignment")
            for d in batch:
                await _publish(producer, t.repairs, d)
            last = batch[-1].id
            await until(
                lambda st=stage, i=last: st.ledger.get(i) not in (None, oc.STARTED),
                30,
                "the outcomes",
            )
        finally:
            stop.set()
            await asyncio.wait_for(run, 30)
        runs.append(ex.runs)
    assert [name for name, _ in runs[0]] == ["r1"]
    assert [name for name, _ in runs[1]] == ["o1"], "r2 ran back to back with r1 on old data"
    events = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.outcomes, idle=1.0)]
    outcomes = {e["data"]["decision_id"]: e["data"] for e in events if e["type"] == oc.OUTCOME_TYPE}
    assert outcomes["r2"]["outcome"] == "skipped"
    assert "restart of web-1 started" in outcomes["r2"]["detail"]


async def test_a_release_of_the_entity_s_escalation_lets_its_next_repair_run() -> None:
    """A person releasing an entity's escalation asks for its repair: the repairs started
    before the release (remembered, or read back after a restart) do not pace the next one."""
    pacing = Pacing(window=300.0)
    first = _decision("r1", "web-1", RepairAction.RESTART, 0.0)
    pacing.seed(oc.started_event(first, "selfheal", 1000.0))  # read back after a restart
    again = _decision("r2", "web-1", RepairAction.RESTART, 1200.0)
    assert pacing.hold(again, 1010.0).startswith("not run: restart of web-1 started 10s ago")
    release = _decision("e1", "web-1", RepairAction.ESCALATE, 1100.0)
    release = replace(release, params={"resolved": True, "released_by": "alice"})
    pacing.released(release, 1005.0)
    assert pacing.hold(again, 1010.0) == ""
    pacing.started(again, 1010.0)  # the repairs after it are paced again
    assert pacing.hold(_decision("r3", "web-1", RepairAction.RESTART, 1500.0), 1011.0)
