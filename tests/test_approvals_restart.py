"""A vote on a pending decision is audited and counted once, across restarts and rebalances.

``ExecutorStage`` over the real broker: pending decisions, rejected, approved too late
(``expired``) and approved in time (it runs), each vote settled by the stage that owns the
decision's partition. Then

- the stage stops and a new one starts on the same topics, reading the repair, outcome and
  approval logs back (``history_seconds``);
- or a second member joins the group and takes over a partition, reading its history back;

either finds each vote settled (the ``settled`` marker on the outcome topic): the audit topic
and file keep exactly one ``approval`` record per decision, and ``approvals_total`` of the new
process stays at zero.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from selfheal.connectors.audit_file import AuditFileSink
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.control import ControlPlane, encode_approval
from selfheal.pipeline.app.executor_stage import ExecutorStage
from selfheal.pipeline.core.audit import read_records
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.kernel.protocols import ExecutionResult
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Mode, RepairAction

from tests.conftest import consume_all
from tests.spine_helpers import settings_for, until

pytestmark = pytest.mark.asyncio

#: an approval this long after its decision is honoured; the late one comes far after it
EXPIRY = 30.0


class Recorder:
    """A restart executor that records what it ran."""

    name = "recorder"

    def __init__(self) -> None:
        self.runs: list[str] = []

    def handles(self, decision: Decision) -> bool:
        return decision.action is RepairAction.RESTART

    async def execute(self, decision: Decision) -> ExecutionResult:
        self.runs.append(str(decision.params.get("approved_decision_id", decision.id)))
        return ExecutionResult(decision.id, self.name, True, "restarted")


def _pending(prefix: str, entity: str) -> Decision:
    return Decision(
        id=f"{prefix}-{entity}",
        ts=time.time(),
        action=RepairAction.RESTART,
        entity=entity,
        mode=Mode.ENFORCE,
        predictive=False,
        reason=("a1",),
        rule="memory-approval",
        status=DecisionStatus.PENDING_APPROVAL,
    )


class Process:
    """One executor stage with its control plane and audit file, as ``selfheal run`` has."""

    def __init__(self, s: Settings, audit: Path) -> None:
        self.executor = Recorder()
        self.audit = AuditFileSink(audit)
        self.control = ControlPlane(s, s.kafka.bootstrap, {})
        self.metrics = Metrics()
        self.stage = ExecutorStage(
            s, [self.executor], self.metrics, self.control, audit=self.audit, started=time.time()
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, partitions: int = 1) -> None:
        await self.control.start()
        self._task = asyncio.create_task(
            self.stage.run(self.stage.settings.kafka.bootstrap, self._stop)
        )
        await until(lambda: len(self.stage._live_from) == partitions, 30, "the assignment")

    async def settled(self, ids: set[str]) -> None:
        """Every vote on ``ids`` was taken up here and its settling is over."""
        await until(
            lambda: all(i in self.stage._acted for i in ids), 30, "the votes to be taken up"
        )
        await until(lambda: not self.stage._tasks, 30, "the votes to be settled")
        await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 60)
        await self.control.stop()
        self.audit.close()

    def approvals(self) -> list[float]:
        """``approvals_total`` of (rejected, expired, approved)."""
        reg = self.metrics.registry
        return [
            reg.get_sample_value("approvals_total", {"verdict": v}) or 0.0
            for v in ("rejected", "expired", "approved")
        ]


def _settings(prefix: str, bootstrap: str, partitions: int) -> Settings:
    return settings_for(
        prefix, bootstrap, partitions=partitions, executors={"approval_expiry_seconds": EXPIRY}
    )


async def _vote_all(
    producer: AIOKafkaProducer, first: Process, votes: list[tuple[Decision, str, int]]
) -> Counter[tuple[str, str]]:
    """Publish each pending decision on its partition, then its vote (``expired``: an approval
    long after the decision); wait until ``first`` settled them all. The verdicts expected."""
    s = first.stage.settings
    t = s.kafka.topics
    for d, verdict, part in votes:
        ago = 4 * EXPIRY if verdict == "expired" else 0.0
        at_ms = int((time.time() - ago) * 1000)
        value = oc.repair_like(d)
        await producer.send_and_wait(
            t.repairs, value, key=d.entity.encode(), partition=part, timestamp_ms=at_ms
        )
    ids = {d.id for d, _, _ in votes}
    await until(lambda: ids <= set(first.stage.pending), 30, "the pending decisions")
    for d, verdict, _ in votes:
        op = "reject" if verdict == "rejected" else "approve"
        raw = encode_approval(op, s.kafka.group_id, d.id, by=f"by-{verdict}", ts=time.time())
        await producer.send_and_wait(t.approvals, raw)
    await first.settled(ids)
    return Counter((d.id, verdict) for d, verdict, _ in votes)


async def _assert_audited_once(
    bootstrap: str, s: Settings, audit: Path, expected: Counter[tuple[str, str]]
) -> None:
    def votes(records: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
        return Counter((r["id"], r["status"]) for r in records if r["record"] == "approval")

    assert votes([r.data for r in read_records(audit)]) == expected
    on_topic = [orjson.loads(v) for v in await consume_all(bootstrap, s.kafka.topics.audit, idle=1)]
    assert votes(on_topic) == expected
    # the settled markers are no repair outcome: no execution record, nothing counted
    assert not [r for r in on_topic if r["record"] == "execution" and r["status"] == "settled"]


async def _topics(bootstrap: str, s: Settings, partitions: int) -> None:
    t = s.kafka.topics
    await ensure_topics(bootstrap, [t.repairs, t.outcomes, t.audit], partitions)
    await ensure_topics(bootstrap, [t.control, t.approvals], 1)


async def test_votes_are_audited_and_counted_once_across_a_restart(
    broker, producer: AIOKafkaProducer, topic_prefix: str, tmp_path: Path
) -> None:
    s = _settings(topic_prefix, broker.bootstrap, 1)
    await _topics(broker.bootstrap, s, 1)
    audit = tmp_path / "audit.jsonl"
    rejected, late, approved = (_pending(topic_prefix, e) for e in ("web-r", "web-l", "web-a"))
    first = Process(s, audit)
    await first.start()
    try:
        votes = [(rejected, "rejected", 0), (late, "expired", 0), (approved, "approved", 0)]
        expected = await _vote_all(producer, first, votes)
        await until(lambda: first.executor.runs == [approved.id], 30, "the approved run")
        assert first.approvals() == [1, 1, 1]
    finally:
        await first.stop()

    # a new process on the same topics, well within history_seconds: it reads every pending
    # decision and every vote back, and finds each vote settled
    second = Process(s, audit)
    await second.start()
    try:
        await second.settled(set(first.stage._acted.keys()))
    finally:
        await second.stop()
    assert second.approvals() == [0, 0, 0]
    assert second.executor.runs == []
    await _assert_audited_once(broker.bootstrap, s, audit, expected)


async def test_votes_are_not_settled_again_by_a_partitions_next_owner(
    broker, producer: AIOKafkaProducer, topic_prefix: str, tmp_path: Path
) -> None:
    s = _settings(topic_prefix, broker.bootstrap, 2)
    await _topics(broker.bootstrap, s, 2)
    audit = tmp_path / "audit.jsonl"
    # a rejected and an expired vote on each partition: whichever moves, it has both
    votes = [
        (_pending(topic_prefix, f"web-{verdict[0]}{part}"), verdict, part)
        for part in (0, 1)
        for verdict in ("rejected", "expired")
    ]
    first, second = Process(s, audit), Process(s, audit)
    await first.start(partitions=2)
    try:
        expected = await _vote_all(producer, first, votes)
        assert first.approvals() == [2, 2, 0]
        await second.start()
        await until(lambda: len(first.stage._live_from) == 1, 60, "the rebalance")
        [moved] = [tp.partition for tp in second.stage._live_from]
        await second.settled({d.id for d, _, part in votes if part == moved})
    finally:
        await second.stop()
        await first.stop()
    assert first.approvals() == [2, 2, 0]
    assert second.approvals() == [0, 0, 0]
    await _assert_audited_once(broker.bootstrap, s, audit, expected)
