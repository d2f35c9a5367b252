"""An approved repair waits while another repair of its entity is under verification
(``pipeline/app/entity_hold.py``), through the real broker and the real executor stage.

The policy holds another rule's automatic repair of an entity while a repair of it is being
verified, but an approval request is not held (nothing runs until a human approves) and the
approval itself is turned into an ``execute`` decision by the executor stage, outside the
policy. Before, an approved rollback ran a second after a restart of the same service: two
repairs at once, each verification judging both. Now it waits until the restart's verification
window is over and then runs (the approval is kept, not dropped); pages, protective actions and
other entities do not wait.
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
from selfheal.pipeline.app.control import ControlPlane, encode_approval
from selfheal.pipeline.app.entity_hold import EntityHolds
from selfheal.pipeline.app.executor_stage import ExecutorStage
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.kernel.protocols import ExecutionResult
from selfheal.pipeline.kernel.types import (
    Decision,
    DecisionStatus,
    Mode,
    RepairAction,
    Verification,
)

from tests.conftest import consume_all
from tests.spine_helpers import settings_for, until

pytestmark = pytest.mark.asyncio

#: the policy's verification window (short: the test waits one out)
WINDOW = 8.0


class Recording:
    """Repairs that succeed at once, recording (approved id or id, entity, wall time)."""

    name = "recording"

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, float]] = []

    def handles(self, decision: Decision) -> bool:
        return decision.action is not RepairAction.ESCALATE

    async def execute(self, decision: Decision) -> ExecutionResult:
        name = str(decision.params.get("approved_decision_id", decision.id))
        self.runs.append((name, decision.entity, time.time()))
        return ExecutionResult(decision.id, self.name, True, "done")

    def at(self, name: str) -> float:
        return next(ts for n, _, ts in self.runs if n == name)


def _decision(
    name: str, entity: str, action: RepairAction, status: DecisionStatus = DecisionStatus.EXECUTE
) -> Decision:
    return Decision(
        id=name, ts=time.time(), action=action, entity=entity, mode=Mode.ENFORCE,
        predictive=False, reason=("a1",), rule=f"rule-{name}", status=status,
    )  # fmt: skip


async def _settings(bootstrap: str, topic_prefix: str, window: float) -> Settings:
    """One partition, the policy's verification window ``window``, the stage's topics made."""
    s = settings_for(
        topic_prefix,
        bootstrap,
        partitions=1,
        policy={"verification_window_seconds": window, "default_dedup_seconds": 1},
    )
    t = s.kafka.topics
    await ensure_topics(bootstrap, [t.repairs, t.outcomes, t.audit], 1)
    await ensure_topics(bootstrap, [t.control, t.approvals], 1)
    return s


async def _publish(producer: AIOKafkaProducer, s: Settings, d: Decision) -> None:
    value = oc.repair_like(d, "selfheal-detect")
    await producer.send_and_wait(s.kafka.topics.repairs, value, key=d.entity.encode(), partition=0)


async def _approve(producer: AIOKafkaProducer, s: Settings, decision_id: str) -> None:
    raw = encode_approval("approve", s.kafka.group_id, decision_id, by="alice", ts=time.time())
    await producer.send_and_wait(s.kafka.topics.approvals, raw)


async def test_an_approved_repair_waits_for_its_entity_s_repair_under_verification(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    s = await _settings(broker.bootstrap, topic_prefix, WINDOW)
    t = s.kafka.topics
    ex = Recording()
    control = ControlPlane(s, broker.bootstrap, {})
    await control.start()
    stage = ExecutorStage(s, [ex], Metrics(), control, started=time.time() - 5)
    stop = asyncio.Event()
    run = asyncio.create_task(stage.run(broker.bootstrap, stop))
    pending = DecisionStatus.PENDING_APPROVAL
    asks = [
        _decision("rollback-web-1", "web-1", RepairAction.ROLLBACK, pending),
        _decision("breaker-web-1", "web-1", RepairAction.CIRCUIT_BREAK, pending),  # protective
        _decision("rollback-web-2", "web-2", RepairAction.ROLLBACK, pending),  # another entity
    ]
    try:
        await until(lambda: len(stage._live_from) == 1, 30, "the assignment")
        # an automatic restart of web-1 runs; its verification window opens
        await _publish(producer, s, _decision("restart-web-1", "web-1", RepairAction.RESTART))
        await until(lambda: len(ex.runs) == 1, 30, "the restart")
        for d in asks:
            await _publish(producer, s, d)
        await until(lambda: {d.id for d in asks} <= set(stage.pending), 30, "the requests")
        for d in asks:
            await _approve(producer, s, d.id)
        await until(lambda: len(ex.runs) >= 4, 3 * WINDOW, "the approved repairs")
        await asyncio.sleep(1.0)  # anything run twice would have run by now
    finally:
        stop.set()
        await asyncio.wait_for(run, 60)
        await control.stop()
    assert sorted(n for n, _, _ in ex.runs) == sorted(
        ["restart-web-1", "rollback-web-1", "breaker-web-1", "rollback-web-2"]
    )
    restart = ex.at("restart-web-1")
    # not while the restart was being verified: right after its window
    assert restart + WINDOW - 1.0 <= ex.at("rollback-web-1") <= restart + WINDOW + 5.0
    assert ex.at("rollback-web-2") < restart + WINDOW / 2
    assert ex.at("breaker-web-1") < restart + WINDOW / 2
    events = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.outcomes, idle=1.0)]
    ran: dict[str, Any] = {
        e["data"].get("approved_decision_id", e["data"]["decision_id"]): e["data"]
        for e in events
        if e["type"] == oc.OUTCOME_TYPE
    }
    assert ran["rollback-web-1"]["outcome"] == "ok"
    assert ran["rollback-web-1"]["approved_by"] == "alice"


class _Running:
    """An executor stage with its control plane, running until ``stop``."""

    def __init__(self, s: Settings, ex: Recording) -> None:
        self.control = ControlPlane(s, s.kafka.bootstrap, {})
        self.stage = ExecutorStage(s, [ex], Metrics(), self.control, started=time.time() - 5)
        self._stop = asyncio.Event()
        self._run: asyncio.Task[None] | None = None

    async def start(self) -> ExecutorStage:
        await self.control.start()
        self._run = asyncio.create_task(
            self.stage.run(self.stage.settings.kafka.bootstrap, self._stop)
        )
        stage = self.stage
        await until(lambda: len(stage._live_from) == 1, 60, "the assignment")
        return stage

    async def stop(self) -> None:
        self._stop.set()
        if self._run is not None:
            await asyncio.wait_for(self._run, 60)
        await self.control.stop()


async def test_a_waiting_approved_repair_survives_a_restart_of_the_stage(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    """The wait is no state of its own: the approved decision's offset stays uncommitted and
    the next stage reads the restart's ``started`` back from the outcome topic. (A window
    longer than the group takes to assign the partition to the next stage.)"""
    window = 30.0
    s = await _settings(broker.bootstrap, topic_prefix, window)
    ex = Recording()
    ask = _decision(
        "rollback-web-1", "web-1", RepairAction.ROLLBACK, DecisionStatus.PENDING_APPROVAL
    )
    first = _Running(s, ex)
    try:
        stage = await first.start()
        await _publish(producer, s, _decision("restart-web-1", "web-1", RepairAction.RESTART))
        await until(lambda: len(ex.runs) == 1, 30, "the restart")
        await _publish(producer, s, ask)
        await until(lambda: ask.id in stage.pending, 30, "the request")
        await _approve(producer, s, ask.id)
        await until(lambda: bool(stage._inflight), 30, "the approved rollback to wait")
    finally:
        await first.stop()
    assert [n for n, _, _ in ex.runs] == ["restart-web-1"]  # stopped while it waited
    second = _Running(s, ex)
    try:
        await second.start()
        await until(lambda: len(ex.runs) >= 2, 3 * window, "the approved rollback")
        await asyncio.sleep(1.0)
    finally:
        await second.stop()
    assert [n for n, _, _ in ex.runs] == ["restart-web-1", "rollback-web-1"]
    assert ex.at("rollback-web-1") >= ex.at("restart-web-1") + window - 1.0


async def test_an_automatic_repair_is_not_run_while_an_approved_one_is_under_verification(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    """The reverse: the policy does not see approvals, so it may decide a restart of web-1
    right after a person's approved rollback of it ran; that restart is skipped as not run
    (its verification would judge the rollback). Other entities, protective actions and pages
    go on, and once the rollback's window is over web-1's next restart runs."""
    s = await _settings(broker.bootstrap, topic_prefix, WINDOW)
    t = s.kafka.topics
    ex = Recording()
    running = _Running(s, ex)
    ask = _decision(
        "rollback-web-1", "web-1", RepairAction.ROLLBACK, DecisionStatus.PENDING_APPROVAL
    )
    during = [
        _decision("restart-web-1", "web-1", RepairAction.RESTART),
        _decision("restart-web-2", "web-2", RepairAction.RESTART),
        _decision("breaker-web-1", "web-1", RepairAction.CIRCUIT_BREAK),
    ]
    try:
        stage = await running.start()
        await _publish(producer, s, ask)
        await until(lambda: ask.id in stage.pending, 30, "the request")
        await _approve(producer, s, ask.id)
        await until(lambda: len(ex.runs) == 1, 30, "the approved rollback")
        for d in during:
            await _publish(producer, s, d)
        await until(lambda: len(ex.runs) >= 3, 30, "the repairs that may run")
        await asyncio.sleep(max(0.0, ex.at("rollback-web-1") + WINDOW - time.time()) + 0.5)
        await _publish(producer, s, _decision("restart-web-1-later", "web-1", RepairAction.RESTART))
        await until(lambda: len(ex.runs) >= 4, 30, "the restart after the window")
    finally:
        await running.stop()
    names = [n for n, _, _ in ex.runs]
    assert "restart-web-1" not in names  # skipped: the approved rollback was verified
    assert names[0] == "rollback-web-1" and names[-1] == "restart-web-1-later"
    assert sorted(names[1:-1]) == ["breaker-web-1", "restart-web-2"]
    events = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.outcomes, idle=1.0)]
    skipped = [
        e["data"] for e in events
        if e["type"] == oc.OUTCOME_TYPE and e["data"]["decision_id"] == "restart-web-1"
    ]  # fmt: skip
    assert [d["outcome"] for d in skipped] == ["skipped"]
    assert skipped[0]["detail"].startswith("not run: approved rollback of web-1")


async def test_a_repair_that_did_not_run_holds_nothing_and_the_examples_run() -> None:
    """Fed the outcome topic's records, as a restarted stage reads them back."""
    import doctest

    from selfheal.pipeline.app import entity_hold

    assert doctest.testmod(entity_hold).failed == 0
    holds = entity_hold.EntityHolds(window=WINDOW)
    now = time.time()
    approved = _decision("a1", "web-1", RepairAction.ROLLBACK)
    approved = replace(approved, params={"approved_decision_id": "p1"})

    def read(d: Decision, outcome: str, detail: str = "") -> None:
        ev = oc.started_event(d, "x", now) if outcome == oc.STARTED else None
        ev = ev or oc.outcome_event(d, outcome, "command", detail, 0.1, "x", now)
        holds.note_event(orjson.dumps(ev))

    restart = _decision("r1", "web-1", RepairAction.RESTART)
    read(restart, oc.STARTED)
    assert holds.hold(approved, now + 1) is not None
    read(restart, oc.FAILED, "exit 1")  # it did not run: nothing under verification
    assert holds.hold(approved, now + 1) is None
    read(restart, oc.STARTED)
    read(restart, oc.OK)
    assert holds.hold(approved, now + 1) is not None
    assert holds.hold(approved, now + WINDOW) is None
    # pages and protective actions neither hold nor wait
    read(_decision("b1", "web-2", RepairAction.CIRCUIT_BREAK), oc.STARTED)
    read(_decision("e1", "web-2", RepairAction.ESCALATE), oc.STARTED)
    assert holds.hold(replace(approved, entity="web-2"), now + 1) is None
    read(_decision("r2", "web-2", RepairAction.RESTART), oc.STARTED)
    degrade = replace(approved, entity="web-2", action=RepairAction.DEGRADE)
    assert holds.hold(degrade, now + 1) is None  # web-2 restarting: protective, no wait


async def test_a_verification_the_policy_closed_early_releases_the_wait(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    """The policy judges a repair failed as soon as the condition is back (past its grace),
    long before the window ends: the verdict it publishes ends the approved repair's wait.
    Before, the approved rollback waited the whole window after the failed restart."""
    from selfheal.pipeline.app.outputs import encode_outputs
    from selfheal.pipeline.core.policy import ConditionReport
    from selfheal.pipeline.core.stage import Outputs
    from selfheal.pipeline.kernel.types import AnomalyKind

    from tests.test_config_governs import RESTART, _engine
    from tests.test_policy import T0, anomaly

    window = 30.0
    s = await _settings(broker.bootstrap, topic_prefix, window)
    engine = _engine(RESTART, verification_window_seconds=window, default_dedup_seconds=10)
    (restart,) = engine.decide(anomaly(T0))
    ex = Recording()
    running = _Running(s, ex)
    ask = _decision(
        "rollback-web-1", restart.entity, RepairAction.ROLLBACK, DecisionStatus.PENDING_APPROVAL
    )

    async def publish(out: Outputs) -> None:
        for topic, key, value in encode_outputs(out, s):
            await producer.send_and_wait(topic, value, key=key, partition=0)

    try:
        stage = await running.start()
        await publish(Outputs(decisions=[restart]))
        await until(lambda: len(ex.runs) == 1, 30, "the restart")
        await _publish(producer, s, ask)
        await until(lambda: ask.id in stage.pending, 30, "the request")
        await _approve(producer, s, ask.id)
        await until(lambda: bool(stage._inflight), 30, "the approved rollback to wait")
        # the condition is back: the restart failed, judged now
        engine.observe(
            ConditionReport(restart.entity, AnomalyKind.HEALTH_CHECK_FAILED, T0 + 15, True)
        )
        verifications, _ = engine.drain()
        assert [v.success for v in verifications] == [False]
        await publish(Outputs(verifications=verifications))
        await until(lambda: len(ex.runs) >= 2, window / 2, "the approved rollback")
    finally:
        await running.stop()
    assert [n for n, _, _ in ex.runs] == [restart.id, "rollback-web-1"]
    assert ex.at("rollback-web-1") < ex.at(restart.id) + window / 2


async def test_the_policy_s_verdict_ends_a_hold_even_read_before_its_start() -> None:
    """Fed the outcome topic's records, as in the test above."""
    holds = EntityHolds(window=WINDOW)
    now = time.time()
    approved = replace(
        _decision("a1", "web-3", RepairAction.ROLLBACK), params={"approved_decision_id": "p1"}
    )

    def verdict(did: str, entity: str) -> bytes:
        v = Verification(did, now, RepairAction.RESTART, entity, False, 15.0, "recurred")
        return orjson.dumps(oc.verified_event(v, "x"))

    def started(did: str, entity: str) -> bytes:
        d = _decision(did, entity, RepairAction.RESTART)
        return orjson.dumps(oc.started_event(d, "x", now))

    holds.note_event(started("r3", "web-3"))
    assert holds.hold(approved, now + 1) is not None
    holds.note_event(verdict("r3", "web-3"))
    assert holds.hold(approved, now + 1) is None
    # judged before its ``started`` was read (a backlog): it holds nothing either
    holds.note_event(verdict("r4", "web-4"))
    holds.note_event(started("r4", "web-4"))
    assert holds.hold(replace(approved, entity="web-4"), now + 1) is None
    # a verdict is no execution: the ledger has no outcome for it
    ledger = oc.Ledger()
    ledger.note_event(verdict("r5", "web-5"))
    assert ledger.get("r5") is None
