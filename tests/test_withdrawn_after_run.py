"""A withdrawn approval request's rung runs once, whether the approval or the policy was first.

A process restarted without ``requires_approval`` withdraws the open request at state load
(``policy_state._build``) and runs the rung itself at the next finding: it cannot know whether
an operator approved the request, before the restart or in the moments before the runner
publishes the withdrawal. The executor stage knows (``entity_hold``): before, the approved run
and the policy's run both ran (past the stage's verification window the approved run held
nothing), or an approved run waiting for its entity's hold started after the policy's. Now the
policy's run of a rung that ran approved is ``skipped`` ("not run: rerun ..."), once, and an
approved run still waiting when the withdrawal is read never starts.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from selfheal.pipeline.app.entity_hold import RERUN, EntityHolds
from selfheal.pipeline.app.outputs import encode_outputs
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.stage import Outputs
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Mode, RepairAction

from tests.conftest import consume_all
from tests.spine_helpers import until
from tests.test_approved_entity_hold import (
    WINDOW,
    Recording,
    _approve,
    _decision,
    _publish,
    _Running,
    _settings,
)
from tests.test_config_governs import _approval, _engine, _restarted
from tests.test_policy import T0, anomaly


async def _send(producer: AIOKafkaProducer, s: Settings, out: Outputs) -> None:
    for topic, key, value in encode_outputs(out, s):
        await producer.send_and_wait(topic, value, key=key, partition=0)


async def _details(bootstrap: str, topic: str) -> dict[str, str]:
    events = [orjson.loads(v) for v in await consume_all(bootstrap, topic, idle=1.0)]
    return {e["data"]["decision_id"]: e["data"]["detail"] for e in events}


@pytest.mark.asyncio
@pytest.mark.parametrize("approved", ["before the restart", "before the withdrawal is published"])
async def test_a_rung_approved_and_run_is_not_run_again_by_the_policy(
    broker, producer: AIOKafkaProducer, topic_prefix: str, approved: str
) -> None:
    s = await _settings(broker.bootstrap, topic_prefix, WINDOW)
    old = _engine(_approval(True))
    (ask,) = old.decide(anomaly(T0))
    ex = Recording()
    running = _Running(s, ex)
    try:
        stage = await running.start()
        await _send(producer, s, Outputs(decisions=[ask]))
        await until(lambda: ask.id in stage.pending, 30, "the request")
        if approved == "before the restart":
            await _approve(producer, s, ask.id)
            await until(lambda: len(ex.runs) == 1, 30, "the approved run")
        new = _restarted(old, _approval(False))  # withdraws the request at state load
        if approved != "before the restart":
            await _approve(producer, s, ask.id)
            await until(lambda: len(ex.runs) == 1, 30, "the approved run")
        # the next finding comes after the stage's window: the approved run holds nothing
        await asyncio.sleep(WINDOW + 1)
        out = new.decide(anomaly(T0 + 20))
        (rerun,) = [d for d in out if d.status is DecisionStatus.EXECUTE]
        await _send(producer, s, Outputs(decisions=out))
        await until(lambda: stage.ledger.get(rerun.id) is not None, 30, "the rerun's outcome")
    finally:
        await running.stop()
    assert [name for name, _, _ in ex.runs] == [ask.id]  # once, as approved
    details = await _details(broker.bootstrap, s.kafka.topics.outcomes)
    assert details[rerun.id].startswith(RERUN)


@pytest.mark.asyncio
async def test_an_approved_run_waiting_when_the_withdrawal_is_read_never_starts(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    s = await _settings(broker.bootstrap, topic_prefix, WINDOW)
    old = _engine(_approval(True))
    (ask,) = old.decide(anomaly(T0))
    ex = Recording()
    running = _Running(s, ex)
    try:
        stage = await running.start()
        # another rule's repair of the entity: an approved run waits out its window
        other = _decision("other-checkout-1", "checkout-1", RepairAction.ROLLBACK)
        await _publish(producer, s, other)
        await until(lambda: len(ex.runs) == 1, 30, "the other repair")
        await _send(producer, s, Outputs(decisions=[ask]))
        await until(lambda: ask.id in stage.pending, 30, "the request")
        new = _restarted(old, _approval(False))
        # read between the restart and the withdrawal's publication: it waits
        await _approve(producer, s, ask.id)
        await until(lambda: stage._inflight, 30, "the approved run to wait")
        out = new.decide(anomaly(T0 + 20))
        (own,) = [d for d in out if d.status is DecisionStatus.EXECUTE]
        await _send(producer, s, Outputs(decisions=out))
        await until(lambda: len(ex.runs) >= 2, 30, "the policy's run")
        await until(lambda: not stage._inflight, 3 * WINDOW, "the approved run's outcome")
    finally:
        await running.stop()
    assert [name for name, _, _ in ex.runs] == [other.id, own.id]


def test_only_the_first_rerun_is_refused() -> None:
    holds = EntityHolds(window=300.0)
    run = Decision(
        "run", T0, RepairAction.RESTART, "web-1", Mode.ENFORCE, False, (), rule="hc",
        params={"approved_decision_id": "ask"},
    )  # fmt: skip
    holds.started(run, now=1000.0)
    again = Decision("d2", T0, RepairAction.RESTART, "web-1", Mode.ENFORCE, False, (), rule="hc")
    assert holds.busy(again, now=2000.0) == ""  # not withdrawn: past the window, it runs
    withdrawn = {
        "decision_id": "ask", "entity": "web-1", "action": "restart", "rule": "hc",
        "outcome": "skipped", "detail": "not run: approval request withdrawn: x",
    }  # fmt: skip
    holds.note_event(orjson.dumps({"type": "io.selfheal.repair.outcome", "data": withdrawn}))
    assert holds.busy(again, now=2000.0).startswith(RERUN)
    other = Decision("d3", T0, RepairAction.SCALE_UP, "web-1", Mode.ENFORCE, False, (), rule="hc")
    assert holds.busy(other, now=2000.0) == ""  # the next rung is no rerun
    skipped = {**withdrawn, "decision_id": "d2", "detail": holds.busy(again, now=2000.0)}
    holds.note_event(orjson.dumps({"type": "io.selfheal.repair.outcome", "data": skipped}))
    assert holds.busy(again, now=2000.0) == ""  # refused once: a later one is a repair
