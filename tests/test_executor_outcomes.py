"""Every outcome of the executor stage is an audit record, a metric and a CloudEvent.

In-process (``SelfhealProcess``, the object behind ``selfheal run``) over the real broker: an
executor that raises yields ``error``, a command over its timeout yields ``timeout`` with its
child process killed; both appear on the outcome topic, in the audit and in
``repairs_executed_total{action,outcome}``. Plus the wire records' unit checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.connectors.kafka import ensure_topics
from selfheal.connectors.webhook import WebhookExecutor
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.approval_decisions import approved_decision
from selfheal.pipeline.app.control import (
    ControlState,
    RecordError,
    apply_pause,
    decode_approval,
    encode_approval,
    encode_control,
)
from selfheal.pipeline.app.wiring import SelfhealProcess
from selfheal.pipeline.core.audit import read_records
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Outputs
from selfheal.pipeline.kernel.protocols import ExecutionResult
from selfheal.pipeline.kernel.schemas import CloudEvent, RepairOutcomeData
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Mode, RepairAction

from tests.conftest import ROOT, consume_all
from tests.spine_helpers import produce_records, settings_for

CHILD = """\
import os, pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
time.sleep(60)
"""


def _decision(**kw: Any) -> Decision:
    base: dict[str, Any] = {
        "id": "d1",
        "ts": 1_795_842_000.0,
        "action": RepairAction.RESTART,
        "entity": "web-1",
        "mode": Mode.ENFORCE,
        "predictive": False,
        "reason": ("a1",),
        "rule": "memory-critical",
    }
    return Decision(**{**base, **kw})


class Raising:
    name = "raising"
    calls = 0

    def handles(self, decision: Decision) -> bool:
        return decision.action is RepairAction.RESTART

    async def execute(self, decision: Decision) -> ExecutionResult:
        Raising.calls += 1
        raise RuntimeError("executor bug")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by a dead parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.asyncio
async def test_error_and_timeout_outcomes(broker, producer, topic_prefix, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    pidfile = tmp_path / "child.pid"
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        detection={"models_enabled": False},
        executors={
            "commands": {"scale_up": [sys.executable, str(script), str(pidfile)]},
            "command_timeout_seconds": 2.0,
        },
        runtime={"audit_path": str(tmp_path / "audit.jsonl")},
    )
    base = time.time() - 1800
    mem = {"metric": "container_memory_working_set_bytes", "value": 0.99e9, "limit": 1e9}
    queue = {"metric": "queue_depth", "value": 95.0, "limit": 100.0}
    records = [{"ts": base + 15 * i, "entity": "m-1", **mem} for i in range(3)]
    records += [{"ts": base + 15 * i, "entity": "q-1", **queue} for i in range(3)]
    await ensure_topics(broker.bootstrap, [s.kafka.topics.metrics, s.kafka.topics.logs], 1)
    await produce_records(producer, s.kafka.topics.metrics, records)
    # a decision published before this executor group ever ran (an older deployment's):
    # history, never executed
    await ensure_topics(broker.bootstrap, [s.kafka.topics.repairs], 1)
    old = _decision(id="old", entity="old-1", ts=base)
    await producer.send_and_wait(s.kafka.topics.repairs, oc.repair_like(old), key=b"old-1")
    await asyncio.sleep(0.01)
    proc = SelfhealProcess(s, lambda: PolicyEngine(s.policy))
    # a webhook target that refuses connections: a failed outcome and an open breaker
    dead = WebhookExecutor(
        urls={"restart": "http://127.0.0.1:9/"}, max_attempts=1, failure_threshold=1
    )
    proc._executors += [Raising(), dead]
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(broker.bootstrap, stop=stop))
    reg = proc.metrics.registry

    def count(action: str, outcome: str) -> float:
        labels = {"action": action, "outcome": outcome}
        return reg.get_sample_value("repairs_executed_total", labels) or 0.0

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if count("restart", "error") and count("scale_up", "timeout"):
                break
            assert not task.done(), task
            await asyncio.sleep(0.2)
        # a replayed batch publishes the same decision again: it is not executed twice
        t = s.kafka.topics
        repairs = await consume_all(broker.bootstrap, t.repairs, idle=1)
        again = next(v for v in repairs if orjson.loads(v)["subject"] == "m-1")
        await producer.send_and_wait(t.repairs, again, key=b"m-1")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not count("restart", "skipped"):
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert count("restart", "error") == 1
    assert count("restart", "skipped") == 1 and Raising.calls == 1
    assert count("scale_up", "timeout") == 1
    assert not _alive(int(pidfile.read_text())), "the timed-out command's child was killed"
    events = [orjson.loads(v) for v in await consume_all(broker.bootstrap, s.kafka.topics.outcomes)]
    done = {
        (ev["data"]["entity"], ev["data"]["executor"]): ev
        for ev in events
        if ev["type"] == oc.OUTCOME_TYPE and ev["data"]["outcome"] != "skipped"
    }
    assert done[("m-1", "raising")]["data"]["outcome"] == "error"
    assert "executor bug" in done[("m-1", "raising")]["data"]["detail"]
    assert done[("m-1", "webhook")]["data"]["outcome"] == "failed"
    assert done[("q-1", "command")]["data"]["outcome"] == "timeout"
    assert count("restart", "failed") == 1
    target = {"source": "http://127.0.0.1:9/"}
    assert reg.get_sample_value("circuit_breaker_state", target) == 1  # open
    assert reg.get_sample_value("circuit_breaker_failures_total", target) == 1
    assert not [ev for ev in events if ev["data"]["entity"] == "old-1"]
    for ev in events:
        CloudEvent.model_validate(ev)
        RepairOutcomeData.model_validate(ev["data"])
    records = [r for r in read_records(tmp_path / "audit.jsonl") if r.record == "execution"]
    skipped = [r for r in records if r.data["status"] == "skipped"]
    assert [r.entity for r in skipped] == ["m-1"]
    assert "already executed (outcome error)" in skipped[0].data["detail"]
    audit = {(r.entity, r.data["executor"]): r for r in records if r.data["status"] != "skipped"}
    assert audit[("m-1", "raising")].data["status"] == "error"
    assert audit[("m-1", "webhook")].data["status"] == "failed"
    assert audit[("q-1", "command")].data["status"] == "timeout"


def test_ledger_keeps_the_first_outcome() -> None:
    ledger = oc.Ledger(cap=2)
    ledger.note("a", oc.STARTED)
    ledger.note("a", oc.OK)
    ledger.note("a", oc.SKIPPED)
    assert ledger.get("a") == oc.OK
    ledger.note("b", oc.STARTED)
    ledger.note("c", oc.FAILED)
    assert ledger.get("a") is None and len(ledger) == 2  # bounded
    with pytest.raises(ValueError):
        ledger.note_event(b"not json")


def test_settled_marker_is_read_back_and_is_no_outcome() -> None:
    pending = _decision(status=DecisionStatus.PENDING_APPROVAL)
    ev = oc.settled_event(pending, "rejected", "selfheal", vote_ts=5.0)
    assert ev["type"] == oc.SETTLED_TYPE and ev["data"]["detail"] == "rejected"
    assert ev["id"] == oc.settled_event(pending, "rejected", "other", vote_ts=5.0)["id"]
    CloudEvent.model_validate(ev)
    RepairOutcomeData.model_validate(ev["data"])
    ledger = oc.Ledger()
    ledger.note_event(orjson.dumps(ev))
    assert ledger.get("d1") == oc.SETTLED
    assert oc.SETTLED not in oc.OUTCOMES


def test_repair_event_round_trip_and_classify() -> None:
    d = _decision(params={"replicas": 1}, explanation="why")
    back = oc.decision_from_event(oc.repair_like(d))
    assert back == d
    with pytest.raises(ValueError):
        oc.decision_from_event(b'{"id": "x"}')
    ok = ExecutionResult("d1", "command", True, "exit 0", duration_seconds=2.0)
    assert oc.classify(ok) == (oc.OK, "exit 0", 2.0)
    assert oc.classify(ExecutionResult("d1", "command", False, "timeout after 2s"))[0] == oc.TIMEOUT
    assert oc.classify(ExecutionResult("d1", "command", False, "exit 1"))[0] == oc.FAILED
    assert oc.classify(TimeoutError())[0] == oc.TIMEOUT
    assert oc.classify(RuntimeError("x"))[:2] == (oc.ERROR, "RuntimeError: x")


def test_pause_rewrites_acting_decisions_only() -> None:
    state = ControlState()
    out = Outputs(
        decisions=[
            _decision(id="e"),
            _decision(id="p", status=DecisionStatus.PENDING_APPROVAL),
            _decision(id="s", status=DecisionStatus.SUPPRESSED),
        ]
    )
    apply_pause(out, state)
    assert out.decisions[0].status is DecisionStatus.EXECUTE
    state.apply({"op": "pause", "by": "ana", "reason": "inc-1", "ts": 1.0})
    apply_pause(out, state)
    e, p, s = out.decisions
    assert (e.mode, e.status, e.params["paused"]) == (Mode.DRY_RUN, DecisionStatus.DRY_RUN, True)
    assert p.status is DecisionStatus.DRY_RUN and "paused by ana (inc-1)" in p.explanation
    assert s.status is DecisionStatus.SUPPRESSED


def test_control_records_are_checked() -> None:
    raw = encode_approval("approve", "g", "d1", by="bob", ts=1.0)
    assert decode_approval(raw, "other-group") is None
    assert decode_approval(raw, "g")["decision_id"] == "d1"  # type: ignore[index]
    with pytest.raises(RecordError):
        decode_approval(b"[1]", "g")
    with pytest.raises(RecordError):
        decode_approval(encode_control("pause", "g", by="a", reason="", ts=1.0), "g")
    vote = type("V", (), {"by": "bob", "ts": 5.0})()
    run = approved_decision(_decision(status=DecisionStatus.PENDING_APPROVAL), vote)  # type: ignore[arg-type]
    assert run.status is DecisionStatus.EXECUTE and run.params["approved_decision_id"] == "d1"
    assert run.id == approved_decision(_decision(), vote).id != "d1"  # type: ignore[arg-type]


def test_schema_command_prints_the_outcome_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "selfheal.pipeline.app.cli", "schema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    schema = json.loads(out)["outbound"]["RepairOutcomeData"]
    assert "unknown" in schema["properties"]["outcome"]["enum"]


def test_operator_commands_need_their_arguments() -> None:
    def run(*args: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "selfheal.pipeline.app.cli", *args],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        ).returncode

    assert run("approve") == 2
    assert run("reject", "d1") == 2  # --by is required
    assert run("pause", "--bogus") == 2
