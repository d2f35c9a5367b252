"""One incident book for the whole deployment: an ordered log of anomaly notes every process reads.

The entities of one incident may live on partitions of different processes (a database on one,
its callers on another). So no process keeps a book of its own: every anomaly becomes an
``AnomalyNote`` record (its id is the anomaly id) on a one-partition log, and every process
applies all records in log order to an ``IncidentArbiter``. The arbiter is pure (the book, the
repair-plan view of each note, the incidents already paged), so the books of all processes
are identical and incident ids, revisions and event ids agree.

Records:

* ``note``: an anomaly (entity, kind, event time, the entity's service, node and callees from its
  partition's topology, the deploy it followed). Its outcome is the incident events it causes
  and the repair plan of its entity (its incident, the probable cause it is a symptom of, the
  deploy it is attributed to, whether the incident paged already).
* ``tick``: a partition's event time passed an open incident's quiet period; its outcome is the
  resolutions. Sent only when the book says one is due (``due``), with the id
  ``tick:<partition>:<event time>``, which a redelivered partition reaches again.
* ``escalated``: an incident paged (its decision id, and the note it answered), so the notes
  after that one in the log do not page again.
* ``page_closed``: that page was resolved or released while the incident stays open, so an
  entity whose ladder runs out later pages again instead of waiting on a closed page.

A stage logs the notes of a batch together (``IncidentLog.prefetch``: one wait, not one per
anomaly) and then asks for each: an outcome depends only on the log before its note, so the plans
are those of notes logged one by one.

The process that asked for a record (``IncidentLog.note`` / ``tick``) emits the events of its
outcome; the others apply it silently, so each transition has exactly one writer. Outcomes are
kept by record id: a record asked for again (input redelivered after a crash, on the same or
another process) gets the outcome it got the first time, with the same event ids, and the log
is not written twice.

``IncidentLog.local`` is the log of a replay (the call order, through the same encoding); the
runner hands the arbiter to ``selfheal.connectors.incident_log.KafkaIncidentLog`` instead.

>>> from selfheal.pipeline.kernel.types import AnomalyKind as K, Severity as S
>>> log = IncidentLog.local()
>>> def note(i, ts, entity, kind, callees=()):
...     return AnomalyNote(f"a{i}", ts, entity, kind, S.CRITICAL, "m", entity, None, callees)
>>> [e.state for e in log.note(note(1, 0.0, "db-1", K.HEALTH_CHECK_FAILED)).events]
['opened']
>>> out = log.note(note(2, 60.0, "web-1", K.BREAKER_OPEN, ("db-1",)))
>>> out.cause.entity, log.note(note(2, 60.0, "web-1", K.BREAKER_OPEN)) == out
('db-1', True)
>>> log.due(961.0), [e.state for e in log.tick("tick:0:961.0", 961.0).events]
(True, ['resolved'])
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import orjson
from selfheal.pipeline.core.causes import Cause
from selfheal.pipeline.core.changes import Attribution, attribute
from selfheal.pipeline.core.codec import Codec, CodecError
from selfheal.pipeline.core.incidents import (
    AnomalyNote,
    ChangeRef,
    EntityView,
    Incident,
    IncidentBook,
    IncidentConfig,
    IncidentEvent,
)
from selfheal.pipeline.kernel.types import AnomalyKind, Severity

#: wire format version of incident log records
RECORD_VERSION = 1
#: snapshot format version of an arbiter
STATE_VERSION = 1


class IncidentRecordError(ValueError):
    """A log record that is not readable (skipped by readers)."""


class IncidentLogBehind(RuntimeError):
    """The outcome of a record this process wrote is no longer known (the log is far ahead)."""

    retriable = True


@dataclass(frozen=True, slots=True)
class IncidentOutcome:
    """What applying one record did: its events, and for a note its entity's repair plan."""

    events: tuple[IncidentEvent, ...] = ()
    incident_id: str | None = None
    #: the probable cause when the note's entity is only a symptom of it
    cause: Cause | None = None
    attribution: Attribution | None = None
    causes: tuple[Cause, ...] = ()
    #: the note's place among the notes of the log (a page answers the notes after its own)
    seq: int = 0


class IncidentArbiter:
    """The incident book as a pure function of the log (see the module docstring)."""

    def __init__(
        self, config: IncidentConfig | None = None, group: str = "", remember: int = 50_000
    ) -> None:
        self.book = IncidentBook(config)
        self.group = group
        self.remember = remember
        #: record id -> outcome, so a record asked for again is answered alike (bounded)
        self._outcomes: OrderedDict[str, IncidentOutcome] = OrderedDict()
        #: open incident id -> (its page's decision id, the seq of the note the page answered)
        self._escalated: dict[str, tuple[str, int]] = {}
        #: incident id -> (its closed page's decision id, the page's seq, the notes before the
        #: close): notes logged before the close still see that page, so replays answer alike
        self._closed: dict[str, tuple[str, int, int]] = {}
        #: distinct notes applied (the next note's seq is one more)
        self.notes = 0
        #: records applied, and the largest writer clock among them (a restart reads from there)
        self.applied = 0
        self.wall = 0.0

    # -- the log ----------------------------------------------------------------------------

    def apply_note(self, note: AnomalyNote) -> IncidentOutcome:
        known = self._outcomes.get(note.id)
        if known is not None:
            return known
        self.applied += 1
        self.notes += 1
        book = self.book
        events = book.apply(note)
        self._forget_resolved(events)
        inc = book.incident_of(note.entity)
        found = attribute(note.kind, note.entity, note.service, note.change, book)
        cause = None if found is not None else book.symptom_of(note.entity, note.ts)
        if inc is None:
            out = IncidentOutcome(tuple(events), None, cause, found, (), self.notes)
        else:
            causes = tuple(inc.causes[:3])
            out = IncidentOutcome(tuple(events), inc.id, cause, found, causes, self.notes)
        return self._keep(note.id, out)

    def apply_tick(self, tick_id: str, ts: float) -> IncidentOutcome:
        known = self._outcomes.get(tick_id)
        if known is not None:
            return known
        self.applied += 1
        events = self.book.tick(ts)
        self._forget_resolved(events)
        return self._keep(tick_id, IncidentOutcome(tuple(events)))

    def apply_escalated(self, incident_id: str, decision_id: str, note_id: str) -> None:
        self.applied += 1
        if self.book.is_open(incident_id) and incident_id not in self._escalated:
            known = self._outcomes.get(note_id)  # the first page wins
            self._escalated[incident_id] = (decision_id, known.seq if known else self.notes)

    def apply_page_closed(self, incident_id: str, decision_id: str) -> None:
        """The incident's page was resolved or released: an entity of the incident whose ladder
        runs out later pages again (rather than waiting on a page nobody is looking at)."""
        self.applied += 1
        page = self._escalated.get(incident_id)
        if page is not None and page[0] == decision_id:
            del self._escalated[incident_id]
            self._closed[incident_id] = (decision_id, page[1], self.notes)

    def apply_raw(self, raw: bytes) -> None:
        """Apply one log record as written by ``encode_*`` (other groups' records are skipped)."""
        rec = _decode(raw)
        if rec.get("group") != self.group:
            return
        self.wall = max(self.wall, float(rec.get("wall", 0.0)))
        try:
            kind = rec["type"]
            if kind == "note":
                self.apply_note(_note(rec))
            elif kind == "tick":
                self.apply_tick(str(rec["id"]), float(rec["ts"]))
            elif kind == "escalated":
                self.apply_escalated(
                    str(rec["incident_id"]), str(rec["decision_id"]), str(rec["note_id"])
                )
            elif kind == "page_closed":
                self.apply_page_closed(str(rec["incident_id"]), str(rec["decision_id"]))
            else:
                raise IncidentRecordError(f"unknown incident record type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, IncidentRecordError):
                raise
            raise IncidentRecordError(f"malformed incident record: {exc!r}") from exc

    # -- views ------------------------------------------------------------------------------

    def outcome(self, record_id: str) -> IncidentOutcome | None:
        return self._outcomes.get(record_id)

    def escalated(self, incident_id: str, before: int | None = None) -> str | None:
        """The decision id of the incident's page; with ``before``, only a page that answered
        a note earlier in the log than the note of seq ``before`` (so a note asked for again
        does not find its own page)."""
        page = self._escalated.get(incident_id)
        if page is not None and (before is None or page[1] < before):
            return page[0]
        closed = self._closed.get(incident_id)
        if closed is not None and before is not None and closed[1] < before <= closed[2]:
            return closed[0]  # a note logged before the page was closed
        return None

    def due(self, ts: float) -> bool:
        return self.book.due(ts)

    # -- internals --------------------------------------------------------------------------

    def _keep(self, record_id: str, out: IncidentOutcome) -> IncidentOutcome:
        self._outcomes[record_id] = out
        while len(self._outcomes) > self.remember:
            self._outcomes.popitem(last=False)
        return out

    def _forget_resolved(self, events: list[IncidentEvent]) -> None:
        for e in events:
            if e.state == "resolved":
                self._escalated.pop(e.data["incident_id"], None)
                self._closed.pop(e.data["incident_id"], None)

    # -- snapshots (data only, no configuration) ---------------------------------------------

    def state(self) -> dict[str, Any]:
        """The arbiter's state, detached: later records do not change it (the open incidents are
        copied; outcomes never change once made), so it can be encoded without the lock."""
        return {
            "version": STATE_VERSION,
            "group": self.group,
            "applied": self.applied,
            "notes": self.notes,
            "wall": self.wall,
            "book": copy.deepcopy(self.book.to_state()),
            "outcomes": list(self._outcomes.items()),
            "escalated": [[k, d, seq] for k, (d, seq) in self._escalated.items()],
            "closed": [[k, d, seq, at] for k, (d, seq, at) in self._closed.items()],
        }

    def snapshot(self, key: bytes | None = None) -> bytes:
        return encode_state(self.state(), key)

    def restore(self, blob: bytes, key: bytes | None = None) -> None:
        """Load a ``snapshot``; ``IncidentRecordError`` when it cannot be used."""
        try:
            doc = _codec(key).loads(blob)
            if doc.get("version") != STATE_VERSION or doc.get("group") != self.group:
                raise IncidentRecordError("incident book snapshot of another version or group")
            self.book.load_state(doc["book"])
            outcomes = [(str(k), v) for k, v in doc["outcomes"]][-self.remember :]
            if not all(isinstance(v, IncidentOutcome) for _, v in outcomes):
                raise IncidentRecordError("incident outcomes are malformed")
            self._outcomes = OrderedDict(outcomes)
            self._escalated = {str(k): (str(d), int(seq)) for k, d, seq in doc["escalated"]}
            closed = doc.get("closed", [])  # absent from snapshots of earlier versions
            self._closed = {str(k): (str(d), int(s), int(a)) for k, d, s, a in closed}
            self.applied = int(doc["applied"])
            self.notes = int(doc["notes"])
            self.wall = float(doc["wall"])
        except (CodecError, AttributeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, IncidentRecordError):
                raise
            raise IncidentRecordError(f"incident book snapshot: {exc!r}") from exc


def encode_state(state: dict[str, Any], key: bytes | None = None) -> bytes:
    """``IncidentArbiter.state`` as a data-only snapshot (``restore`` reads it)."""
    return _codec(key).dumps(state)


@cache
def _base_codec() -> Codec:
    return Codec(
        (Incident, EntityView, ChangeRef, Cause, IncidentEvent, IncidentOutcome, Attribution)
    )


def _codec(key: bytes | None) -> Codec:
    base = _base_codec()
    return base if key is None else Codec(base.classes.values(), key=key)


# -- the log: local (call order) or shared (a transport such as the Kafka connector) ----------


class Transport(Protocol):
    """Where records go: ``append`` returns once this process has applied the log up to it."""

    @property
    def lock(self) -> AbstractContextManager[Any]: ...

    def append(self, raw: bytes) -> None: ...

    def append_many(self, raws: list[bytes]) -> None:
        """Log ``raws`` in this order; return once this process has read the log up to them."""


class _CallOrder:
    """The local transport: a record is applied when it is appended."""

    def __init__(self, arbiter: IncidentArbiter) -> None:
        self.arbiter = arbiter

    @property
    def lock(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def append(self, raw: bytes) -> None:
        self.arbiter.apply_raw(raw)

    def append_many(self, raws: list[bytes]) -> None:
        for raw in raws:
            self.arbiter.apply_raw(raw)


class IncidentLog:
    """The book as a process uses it: ask for records, read the outcomes (see the docstring)."""

    def __init__(
        self,
        arbiter: IncidentArbiter,
        transport: Transport | None = None,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.arbiter = arbiter
        self.transport: Transport = transport or _CallOrder(arbiter)
        #: the writer's clock in each record: where a restarted reader resumes (not state)
        self.clock = clock

    @classmethod
    def local(cls, config: IncidentConfig | None = None) -> IncidentLog:
        return cls(IncidentArbiter(config))

    @property
    def lock(self) -> AbstractContextManager[Any]:
        return self.transport.lock

    def note(self, note: AnomalyNote) -> IncidentOutcome:
        return self._ask(note.id, lambda: _encode_note(note, self.arbiter.group, self.clock()))

    def prefetch(self, notes: list[AnomalyNote]) -> None:
        """Log the notes not logged yet in one go (one wait for a batch of anomalies); ``note``
        then answers each from its outcome. Outcomes do not depend on what follows a note."""
        with self.lock:
            fresh = {n.id: n for n in notes if self.arbiter.outcome(n.id) is None}
        if fresh:
            group, wall = self.arbiter.group, self.clock()
            self.transport.append_many([_encode_note(n, group, wall) for n in fresh.values()])

    def tick(self, tick_id: str, ts: float) -> IncidentOutcome:
        rec = {"type": "tick", "id": tick_id, "ts": ts}
        return self._ask(tick_id, lambda: _encode(rec, self.arbiter.group, self.clock()))

    def escalate(self, incident_id: str, decision_id: str, note_id: str) -> None:
        rec = {
            "type": "escalated",
            "incident_id": incident_id,
            "decision_id": decision_id,
            "note_id": note_id,
        }
        self.transport.append(_encode(rec, self.arbiter.group, self.clock()))

    def close_page(self, incident_id: str, decision_id: str) -> None:
        rec = {"type": "page_closed", "incident_id": incident_id, "decision_id": decision_id}
        self.transport.append(_encode(rec, self.arbiter.group, self.clock()))

    def known(self, record_id: str) -> bool:
        with self.lock:
            return self.arbiter.outcome(record_id) is not None

    def due(self, ts: float) -> bool:
        with self.lock:
            return self.arbiter.due(ts)

    def escalated(self, incident_id: str, before: int | None = None) -> str | None:
        with self.lock:
            return self.arbiter.escalated(incident_id, before)

    def snapshot(self, key: bytes | None = None) -> bytes:
        with self.lock:  # only the copy holds up the log's reader, not the encoding
            state = self.arbiter.state()
        return encode_state(state, key)

    def _ask(self, record_id: str, encode: Callable[[], bytes]) -> IncidentOutcome:
        with self.lock:
            known = self.arbiter.outcome(record_id)
        if known is not None:
            return known  # asked again (a redelivery): the first answer, nothing written
        self.transport.append(encode())
        with self.lock:
            out = self.arbiter.outcome(record_id)
        if out is None:
            raise IncidentLogBehind(f"incident log: the outcome of {record_id} is no longer known")
        return out


# -- records ---------------------------------------------------------------------------------


def _encode(rec: dict[str, Any], group: str, wall: float) -> bytes:
    return orjson.dumps({"v": RECORD_VERSION, "group": group, "wall": wall, **rec})


def _encode_note(note: AnomalyNote, group: str, wall: float) -> bytes:
    ch = note.change
    change = ch and {"id": ch.id, "version": ch.version, "previous": ch.previous, "ts": ch.ts}
    rec = {
        "type": "note",
        "id": note.id,
        "ts": note.ts,
        "entity": note.entity,
        "kind": note.kind.value,
        "severity": note.severity.value,
        "metric": note.metric,
        "service": note.service,
        "node": note.node,
        "callees": list(note.callees),
        "change": change,
    }
    return _encode(rec, group, wall)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise IncidentRecordError(f"unreadable incident record: {exc}") from exc
    if not isinstance(rec, dict) or rec.get("v") != RECORD_VERSION:
        version = rec.get("v") if isinstance(rec, dict) else None
        raise IncidentRecordError(f"unknown incident record version {version!r}")
    return rec


def _note(rec: dict[str, Any]) -> AnomalyNote:
    ch = rec.get("change")
    change = (
        None
        if ch is None
        else ChangeRef(
            str(ch["id"]),
            str(ch["version"]),
            None if ch.get("previous") is None else str(ch["previous"]),
            float(ch["ts"]),
        )
    )
    return AnomalyNote(
        str(rec["id"]),
        float(rec["ts"]),
        str(rec["entity"]),
        AnomalyKind(rec["kind"]),
        Severity(rec["severity"]),
        str(rec["metric"]),
        str(rec["service"]),
        None if rec.get("node") is None else str(rec["node"]),
        tuple(str(c) for c in rec["callees"]),
        change,
    )


__all__ = [
    "IncidentArbiter",
    "IncidentLog",
    "IncidentLogBehind",
    "IncidentOutcome",
    "IncidentRecordError",
    "Transport",
]
