"""An approval request withdrawn by a configuration change runs nothing when approved.

A process restarted without ``requires_approval`` (or without the rule) withdraws the open
request at state load (``policy_state._build``): nothing ran, so the rung runs on its own at
the next finding. Before, an operator's approval of that request was still executed by the
executor stage, which never heard of the withdrawal: the same rung ran twice. Now the runner
publishes the withdrawal (a ``skipped`` "not run" outcome keyed by the request's id) and the
approval is audited as ``withdrawn``, nothing run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.outputs import encode_outputs
from selfheal.pipeline.core.stage import Outputs
from selfheal.pipeline.kernel.types import Decision

from tests.conftest import consume_all
from tests.spine_helpers import until
from tests.test_approved_entity_hold import WINDOW, Recording, _approve, _Running, _settings
from tests.test_config_governs import RESTART, _approval, _brief, _engine, _restarted
from tests.test_policy import T0, anomaly


def _withdrawals(decisions: list[Decision]) -> list[tuple[str, str, str | None, Any]]:
    return [(*_brief([d])[0], d.params.get("withdrawn_decision_id")) for d in decisions]


def test_a_withdrawn_request_is_handed_out_for_the_audit_and_the_executors() -> None:
    old = _engine(_approval(True))
    (ask,) = old.decide(anomaly(T0))
    new = _restarted(old, _approval(False))
    _, decisions = new.tick(T0 + 1)
    assert _withdrawals(decisions) == [("restart", "suppressed", "withdrawn", ask.id)]
    assert "without approval" in decisions[0].explanation
    assert new.tick(T0 + 2)[1] == []  # once
    # a removed rule withdraws its open request too
    gone = _restarted(old, [{**RESTART[0], "name": "other"}])
    assert _withdrawals(gone.tick(T0 + 1)[1]) == [("restart", "suppressed", "withdrawn", ask.id)]
    # unchanged configuration: the request stays open, nothing withdrawn
    assert _restarted(old, _approval(True)).tick(T0 + 1)[1] == []


@pytest.mark.asyncio
async def test_an_approval_of_a_withdrawn_request_runs_nothing(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    s = await _settings(broker.bootstrap, topic_prefix, WINDOW)
    t = s.kafka.topics
    old = _engine(_approval(True))
    (ask,) = old.decide(anomaly(T0))
    new = _restarted(old, _approval(False))
    ex = Recording()
    running = _Running(s, ex)
    try:
        stage = await running.start()
        # what the runners publish: the request, and after the restart what its tick hands out
        for out in (Outputs(decisions=[ask]), Outputs(decisions=new.tick(T0 + 1)[1])):
            for topic, key, value in encode_outputs(out, s):
                await producer.send_and_wait(topic, value, key=key, partition=0)
        await until(lambda: ask.id in stage.pending, 30, "the request")
        await _approve(producer, s, ask.id)
        await until(lambda: stage.ledger.get(ask.id) == oc.SETTLED, 30, "the vote to settle")
        await asyncio.sleep(2.0)  # an approved run would have started by now
    finally:
        await running.stop()
    assert ex.runs == []
    audit = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.audit, idle=1.0)]
    votes = [(r["status"], r["by"], r["explanation"]) for r in audit if r["record"] == "approval"]
    assert [(status, by) for status, by, _ in votes] == [("withdrawn", "alice")]
    assert votes[0][2].startswith("not run: approval request withdrawn: the running config")
