"""The shared incident book without a broker: an in-memory one-partition log read by several
"processes" (each an ``IncidentHub`` over its own ``IncidentArbiter``), each reading the log only
when it writes, as the Kafka connector does. Checked: identical books and outcomes, one writer
per event, redeliveries answered alike and not written twice, escalations shared, bounded
state, snapshots that carry no configuration."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import orjson
import pytest
from selfheal.pipeline.core.changes import ChangeLog
from selfheal.pipeline.core.incident_log import (
    IncidentArbiter,
    IncidentLog,
    IncidentRecordError,
)
from selfheal.pipeline.core.incidents import AnomalyNote, IncidentConfig
from selfheal.pipeline.core.repair_plan import IncidentHub
from selfheal.pipeline.core.topology import Topology
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    Decision,
    DecisionStatus,
    Finding,
    Mode,
    RepairAction,
    Severity,
)

K = AnomalyKind


class MemoryLog:
    """A one-partition log: records in append order, each reader at its own position."""

    def __init__(self) -> None:
        self.records: list[bytes] = []


class Reader:
    """One process's transport: appends, then reads the log up to its record."""

    def __init__(self, log: MemoryLog, arbiter: IncidentArbiter) -> None:
        self.log = log
        self.arbiter = arbiter
        self.position = 0
        self.appended = 0

    @property
    def lock(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def append(self, raw: bytes) -> None:
        self.appended += 1
        self.log.records.append(raw)
        self.catch_up()

    def append_many(self, raws: list[bytes]) -> None:
        self.log.records.extend(raws)
        self.catch_up()

    def catch_up(self) -> None:
        for raw in self.log.records[self.position :]:
            self.arbiter.apply_raw(raw)
        self.position = len(self.log.records)


def process(
    log: MemoryLog, config: IncidentConfig | None = None, remember: int = 50_000
) -> tuple[IncidentHub, Reader]:
    arbiter = IncidentArbiter(config, "g", remember)
    reader = Reader(log, arbiter)
    return IncidentHub(config, log=IncidentLog(arbiter, reader)), reader


def anomaly(i: int, ts: float, entity: str, kind: AnomalyKind) -> Anomaly:
    f = Finding(ts, entity, "m", "det", kind, Severity.CRITICAL, 1.0, 0.5, 1.0)
    return Anomaly(f"a{i}", f)


def topology(calls: dict[str, list[str]]) -> Topology:
    return Topology(static=calls)


def outage() -> list[Anomaly]:
    """A database fails; its callers' breakers open (one note each, then repeats)."""
    out = [anomaly(0, 0.0, "db-1", K.HEALTH_CHECK_FAILED)]
    for i in range(6):
        out.append(anomaly(1 + i, 60.0 + i, f"web{i}-1", K.BREAKER_OPEN))
    out.append(anomaly(10, 300.0, "db-1", K.HEALTH_CHECK_FAILED))
    return out


def split(entity: str) -> int:
    """Which of two processes owns ``entity``: the database and half the callers on 0."""
    return 0 if entity == "db-1" or entity[3] in "024" else 1


CALLS = {f"web{i}-1": ["db-1"] for i in range(6)}


def run_two(log: MemoryLog) -> tuple[list[Any], list[Any], list[Reader]]:
    """The outage through two processes sharing ``log``; (events, plans, readers)."""
    hubs = [process(log) for _ in range(2)]
    changes, topo = ChangeLog(), topology(CALLS)
    events: list[Any] = []
    plans: list[Any] = []
    for a in outage():
        hub = hubs[split(a.finding.entity)][0]
        evs, plan = hub.plan(a, topo, changes)
        events += evs
        plans.append(plan)
    for part, (hub, _) in enumerate(hubs):
        events += hub.tick(2000.0, part)
    return events, plans, [r for _, r in hubs]


def test_two_processes_agree_on_one_incident_and_each_event_has_one_writer() -> None:
    log = MemoryLog()
    events, plans, readers = run_two(log)
    for r in readers:
        r.catch_up()
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "no event is published by both processes"
    assert {e.data["incident_id"] for e in events} == {plans[0].incident_id}
    assert [e.state for e in events].count("opened") == 1
    assert [e.state for e in events].count("resolved") == 1, "resolved once, by one tick"
    # callers on either process are symptoms of the database on process 0
    assert all(p.cause is not None and p.cause.entity == "db-1" for p in plans[1:7])
    books = [r.arbiter.book.to_state() for r in readers]
    assert books[0] == books[1]
    # the same events as a replay: one local log fed in the same order
    local = IncidentHub()
    changes, topo = ChangeLog(), topology(CALLS)
    replayed = [e for a in outage() for e in local.plan(a, topo, changes)[0]]
    replayed += local.tick(2000.0, 0)
    assert sorted(e.id for e in replayed) == sorted(ids)


def test_a_redelivered_note_gets_its_first_answer_and_is_not_written_again() -> None:
    log = MemoryLog()
    hub, reader = process(log)
    changes, topo = ChangeLog(), topology(CALLS)
    first = [hub.plan(a, topo, changes) for a in outage()]
    written = reader.appended
    # another process takes the partitions over and replays the same anomalies
    other, other_reader = process(log)
    other_reader.catch_up()
    again = [other.plan(a, topo, changes) for a in outage()]
    assert again == first
    assert other_reader.appended == 0 and reader.appended == written


def test_a_tick_is_written_only_when_due_and_a_redelivered_tick_repeats_its_events() -> None:
    log = MemoryLog()
    hub, reader = process(log)
    changes, topo = ChangeLog(), topology(CALLS)
    for a in outage():
        hub.plan(a, topo, changes)
    written = reader.appended
    assert hub.tick(1000.0, 0) == [] and reader.appended == written  # not due: nothing logged
    resolved = hub.tick(1300.0, 0)
    assert [e.state for e in resolved] == ["resolved"] and reader.appended == written + 1
    other, other_reader = process(log)
    other_reader.catch_up()
    assert other.tick(1300.0, 0) == resolved, "the same tick again: the same events"
    assert other.tick(1400.0, 1) == [] and other_reader.appended == 0


def test_an_incident_pages_once_whichever_process_decides() -> None:
    log = MemoryLog()
    (a, _), (b, b_reader) = process(log), process(log)
    changes, topo = ChangeLog(), topology(CALLS)
    _, plan = a.plan(anomaly(0, 0.0, "db-1", K.HEALTH_CHECK_FAILED), topo, changes)
    page = Decision("d-page", 0.0, RepairAction.ESCALATE, "db-1", Mode.ENFORCE, False, ("a0",))
    a.decided(plan, [page])
    _, other = b.plan(anomaly(1, 30.0, "web0-1", K.BREAKER_OPEN), topo, changes)
    assert other.incident_id == plan.incident_id and other.escalated == "d-page"
    assert page.status is DecisionStatus.EXECUTE
    b.decided(other, [page])  # already paged: nothing logged
    assert b_reader.appended == 1
    # the paging anomaly asked for again (a redelivery) does not find its own page
    _, again = a.plan(anomaly(0, 0.0, "db-1", K.HEALTH_CHECK_FAILED), topo, changes)
    assert again.escalated is None and again.incident_id == plan.incident_id


def test_a_batch_is_logged_at_once_and_plans_as_if_one_by_one() -> None:
    """Prefetched notes: one append for the batch; a page decided on the first anomaly still
    answers the second, as when each note is logged in turn (and as in a replay)."""
    log = MemoryLog()
    hub, reader = process(log)
    changes, topo = ChangeLog(), topology(CALLS)
    batch = outage()
    hub.prefetch(batch, topo, changes)
    assert len(log.records) == len(batch) and reader.appended == 0  # one append_many
    page = Decision("d-page", 0.0, RepairAction.ESCALATE, "db-1", Mode.ENFORCE, False, ("a0",))
    plans = []
    for i, a in enumerate(batch):
        _, plan = hub.plan(a, topo, changes)
        hub.decided(plan, [page] if i == 0 else [])
        plans.append(plan)
    assert plans[0].escalated is None and all(p.escalated == "d-page" for p in plans[1:])
    one_by_one, _ = process(MemoryLog())
    expected = []
    for i, a in enumerate(batch):
        _, plan = one_by_one.plan(a, topo, changes)
        one_by_one.decided(plan, [page] if i == 0 else [])
        expected.append(plan)
    assert plans == expected


def test_state_is_bounded() -> None:
    config = IncidentConfig(max_open=5, max_entities=3, max_listed_anomalies=4)
    hub, _ = process(MemoryLog(), config, remember=100)
    changes, topo = ChangeLog(), Topology()
    events = []
    for i in range(2000):
        # unrelated entities: one incident each (the oldest resolve to make room); then a
        # crowd of replicas of one service joins the last incident
        entity = f"svc{i}" if i < 1000 else f"api-{i}"
        events += hub.plan(anomaly(i, float(i), entity, K.MEMORY_HIGH), topo, changes)[0]
    arbiter = hub.log.arbiter
    book = arbiter.book
    assert len(book.open_incidents()) <= 5
    assert all(len(inc.entities) <= 3 for inc in book.open_incidents())
    assert all(len(inc.anomalies) <= 4 for inc in book.open_incidents())
    assert len(arbiter._outcomes) <= 100 and len(book._seen) <= 50 * 5
    assert len(book._by_entity) <= 5 * 3 and len(book._revision) <= 5
    # every incident that made room was resolved with an event, none silently dropped
    opened = {e.data["incident_id"] for e in events if e.state == "opened"}
    resolved = {e.data["incident_id"] for e in events if e.state == "resolved"}
    assert opened - resolved == {inc.id for inc in book.open_incidents()}


def test_a_snapshot_restores_the_book_and_carries_no_configuration() -> None:
    log = MemoryLog()
    hub, reader = process(log)
    changes, topo = ChangeLog(), topology(CALLS)
    anomalies = outage()
    for a in anomalies[:4]:
        hub.plan(a, topo, changes)
    blob = hub.log.snapshot(b"key")
    restored = IncidentArbiter(IncidentConfig(resolve_after_seconds=50.0), "g")
    restored.restore(blob, b"key")
    assert restored.book.to_state() == reader.arbiter.book.to_state()
    assert restored.book.config.resolve_after_seconds == 50.0  # this process's settings
    assert restored.outcome("a1") == reader.arbiter.outcome("a1")
    with pytest.raises(IncidentRecordError):
        IncidentArbiter(None, "g").restore(blob, b"other key")
    with pytest.raises(IncidentRecordError):
        IncidentArbiter(None, "another group").restore(blob, b"key")


def test_records_of_other_groups_are_skipped_and_garbage_is_refused() -> None:
    arbiter = IncidentArbiter(None, "g")
    note = AnomalyNote("x", 0.0, "db-1", K.HEALTH_CHECK_FAILED, Severity.CRITICAL, "m", "db", None)
    other = IncidentLog(IncidentArbiter(None, "h"))
    other.note(note)
    arbiter.apply_raw(orjson.dumps({"v": 1, "group": "h", "type": "note"}))
    assert arbiter.applied == 0
    for raw in (b"{", b'{"v": 9}', orjson.dumps({"v": 1, "group": "g", "type": "note"})):
        with pytest.raises(IncidentRecordError):
            arbiter.apply_raw(raw)
    with pytest.raises(IncidentRecordError):
        arbiter.apply_raw(orjson.dumps({"v": 1, "group": "g", "type": "shrug"}))
