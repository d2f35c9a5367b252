"""Incidents: anomalies of related entities that start close together, with ranked causes.

Pure and on event time. ``IncidentBook.apply(note)`` takes one ``AnomalyNote`` (what a
partition knows of an anomaly: its entity, kind, time, the entity's service, node and callees,
and the deploy it followed, if any) and returns the incident events it causes; ``tick(ts)``
resolves incidents quiet for ``resolve_after_seconds``. The book is a function of the notes in
order, so every reader of the same ordered log of notes agrees on the incidents: that is how the
processes of a deployment share one book (``selfheal.pipeline.core.incident_log``).

An anomaly joins an open incident when its entity is related to one already in it (one calls
the other, directly or through others; both call the same callee; same service; same node) and
the incident saw an anomaly within ``join_window_seconds``; a note related to two incidents
merges them into the older one. Causes are ranked from the evidence (``rank_causes``).

>>> from selfheal.pipeline.kernel.types import AnomalyKind as K, Severity as S
>>> book = IncidentBook()
>>> def note(i, ts, entity, kind, callees=()):
...     return AnomalyNote(f"a{i}", ts, entity, kind, S.CRITICAL, "m", entity, None, callees)
>>> [e.state for e in book.apply(note(1, 0.0, "db-1", K.HEALTH_CHECK_FAILED))]
['opened']
>>> [e.state for e in book.apply(note(2, 60.0, "web-1", K.BREAKER_OPEN, ("db-1",)))]
['updated']
>>> book.symptom_of("web-1").entity, book.symptom_of("db-1")
('db-1', None)
>>> [e.state for e in book.tick(60.0 + 901.0)]
['resolved']
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from selfheal.pipeline.core.causes import Cause, rank_causes
from selfheal.pipeline.core.topology import MAX_CALLEES
from selfheal.pipeline.kernel.types import AnomalyKind, Severity

_NS = uuid.UUID("0b8f3a52-6d1e-4c59-9a57-1f3e7c2d9b10")


@dataclass(frozen=True, slots=True)
class ChangeRef:
    """The deploy an anomaly followed (see ``selfheal.pipeline.core.changes``)."""

    id: str
    version: str
    previous: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class AnomalyNote:
    """One anomaly as the incident book sees it (small: it may travel through a ledger)."""

    id: str
    ts: float
    entity: str
    kind: AnomalyKind
    severity: Severity
    metric: str
    service: str
    node: str | None
    callees: tuple[str, ...] = ()
    change: ChangeRef | None = None


@dataclass(slots=True)
class Incident:
    id: str
    started: float
    last: float
    #: entity -> its notes' kinds, first time, callees, service, node, change
    entities: dict[str, EntityView] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    anomaly_count: int = 0
    causes: list[Cause] = field(default_factory=list)
    resolved: float | None = None


@dataclass(slots=True)
class EntityView:
    first: float
    kinds: dict[str, None]
    callees: tuple[str, ...]
    service: str
    node: str | None
    change: ChangeRef | None = None


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """``io.selfheal.incident.<state>`` with ``data`` = ``Incident`` as published."""

    state: str  # opened | updated | resolved
    ts: float
    data: dict[str, Any]

    @property
    def id(self) -> str:
        # one event per incident and content: redeliveries of the same note repeat it exactly
        key = f"{self.data['incident_id']}|{self.state}|{self.data['revision']}"
        return str(uuid.uuid5(_NS, key))


@dataclass(frozen=True, slots=True)
class IncidentConfig:
    #: a related anomaly joins an incident that saw an anomaly at most this long before
    join_window_seconds: float = 600.0
    #: an incident with no anomaly for this long is resolved
    resolve_after_seconds: float = 900.0
    #: open incidents kept (the oldest is resolved when a new one would exceed it)
    max_open: int = 1_000
    #: entities tracked per incident (more are counted, not listed)
    max_entities: int = 200
    #: callees kept per entity of an incident (the newest: a long incident's entity may call
    #: ever new replicas, each note naming the few its topology knows now)
    max_callees: int = MAX_CALLEES
    #: anomaly ids listed per incident event
    max_listed_anomalies: int = 100
    #: a symptom's repair is left to its cause only when the cause scores at least this
    min_cause_score: float = 0.5


class IncidentBook:
    """Open incidents, built from anomaly notes in log order (see the module docstring)."""

    def __init__(self, config: IncidentConfig | None = None) -> None:
        self.config = config or IncidentConfig()
        self._open: OrderedDict[str, Incident] = OrderedDict()
        self._by_entity: dict[str, str] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._revision: dict[str, int] = {}
        #: entity of an open incident -> its latest anomaly (apart from the views, so that a
        #: build without it still reads these snapshots)
        self._last: dict[str, float] = {}

    # -- the log ----------------------------------------------------------------------------

    def apply(self, note: AnomalyNote) -> list[IncidentEvent]:
        if note.id in self._seen:
            return []  # at-least-once: a redelivered note changes nothing
        self._remember(note.id)
        events = self.tick(note.ts)
        related = self._related(note)
        if not related:
            # the oldest open incidents make room (resolved, with their events)
            while len(self._open) >= self.config.max_open:
                events.append(self._resolve(next(iter(self._open.values())), note.ts))
            inc = self._open_incident(note)
            events.append(self._event(inc, "opened", note.ts))
            return events
        inc, merged = related[0], related[1:]
        before = (set(inc.entities), inc.causes[0].entity if inc.causes else None)
        for other in merged:
            self._merge(inc, other)
            events.append(self._event(other, "resolved", note.ts, merged_into=inc.id))
        self._add(inc, note)
        after = (set(inc.entities), inc.causes[0].entity if inc.causes else None)
        if merged or after != before:
            events.append(self._event(inc, "updated", note.ts))
        return events

    def tick(self, ts: float) -> list[IncidentEvent]:
        """Resolve the incidents quiet for ``resolve_after_seconds`` at event time ``ts``."""
        quiet = [
            inc for inc in self._open.values() if ts - inc.last > self.config.resolve_after_seconds
        ]
        return [self._resolve(inc, inc.last + self.config.resolve_after_seconds) for inc in quiet]

    # -- queries for the repair plan --------------------------------------------------------

    def incident_of(self, entity: str) -> Incident | None:
        inc_id = self._by_entity.get(entity)
        return self._open.get(inc_id) if inc_id else None

    def symptom_of(self, entity: str, ts: float | None = None) -> Cause | None:
        """The probable cause when ``entity``'s only problem is another entity it depends on
        (at event time ``ts``: a cause quiet for ``resolve_after_seconds`` has recovered, and
        what still fails is its callers' own to repair)."""
        inc = self.incident_of(entity)
        if inc is None or not inc.causes:
            return None
        top = inc.causes[0]
        if top.entity == entity or top.score < self.config.min_cause_score:
            return None
        last = self._last.get(top.entity)  # None: a shared callee that reported nothing
        if last is not None and ts is not None and ts - last > self.config.resolve_after_seconds:
            return None
        return top if _depends(inc, entity, top.entity) else None

    def open_incidents(self) -> list[Incident]:
        return list(self._open.values())

    def is_open(self, incident_id: str) -> bool:
        return incident_id in self._open

    def due(self, ts: float) -> bool:
        """Whether ``tick(ts)`` would resolve an incident."""
        after = self.config.resolve_after_seconds
        return any(ts - inc.last > after for inc in self._open.values())

    # -- state (plain data and allow-listed records; no configuration) ----------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "open": list(self._open.values()),
            "seen": list(self._seen),
            "revision": dict(self._revision),
            "last": dict(self._last),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Pour ``to_state``'s output in; the bounds are this book's configuration's."""
        incidents = list(state["open"])
        if not all(isinstance(inc, Incident) for inc in incidents):
            raise ValueError("open incidents are malformed")
        self._open = OrderedDict((inc.id, inc) for inc in incidents)
        # absent (written before it was kept): every entity active as of its incident's last
        last = {str(k): float(v) for k, v in dict(state.get("last") or {}).items()}
        self._last = {e: last.get(e, inc.last) for inc in incidents for e in inc.entities}
        self._by_entity = {e: inc.id for inc in incidents for e in inc.entities}
        self._seen = OrderedDict((str(i), None) for i in state["seen"])
        self._remember_trim()
        self._revision = {str(k): int(v) for k, v in dict(state["revision"]).items()}

    # -- internals --------------------------------------------------------------------------

    def _remember(self, note_id: str) -> None:
        self._seen[note_id] = None
        self._remember_trim()

    def _remember_trim(self) -> None:
        while len(self._seen) > 50 * self.config.max_open:
            self._seen.popitem(last=False)

    def _related(self, note: AnomalyNote) -> list[Incident]:
        window = self.config.join_window_seconds
        found = []
        for inc in self._open.values():
            if note.ts - inc.last > window:
                continue
            if note.entity in inc.entities or any(
                _relates(note, e, view) for e, view in inc.entities.items()
            ):
                found.append(inc)
        return sorted(found, key=lambda i: (i.started, i.id))

    def _open_incident(self, note: AnomalyNote) -> Incident:
        inc = Incident(id=str(uuid.uuid5(_NS, note.id)), started=note.ts, last=note.ts)
        self._open[inc.id] = inc
        self._add(inc, note)
        return inc

    def _add(self, inc: Incident, note: AnomalyNote) -> None:
        inc.last = max(inc.last, note.ts)
        inc.anomaly_count += 1
        if len(inc.anomalies) < self.config.max_listed_anomalies:
            inc.anomalies.append(note.id)
        view = inc.entities.get(note.entity)
        before = None
        if view is None:
            if len(inc.entities) >= self.config.max_entities:
                return
            view = EntityView(note.ts, {}, note.callees, note.service, note.node, note.change)
            inc.entities[note.entity] = view
            self._by_entity[note.entity] = inc.id
        else:
            before = (len(view.kinds), view.callees, view.change, view.first)
            view.first = min(view.first, note.ts)  # a note can arrive after a later one
        self._last[note.entity] = max(self._last.get(note.entity, note.ts), note.ts)
        view.kinds[note.kind.value] = None
        view.callees = _callees(view.callees, note.callees, self.config.max_callees)
        view.change = view.change or note.change
        started = inc.started
        inc.started = min(inc.started, note.ts)
        if inc.started != started or before != (
            len(view.kinds),
            view.callees,
            view.change,
            view.first,
        ):
            # a repeat of what the entity reported already leaves the ranking as it is (the
            # ranking is the costly part of a note: quadratic in the incident's entities)
            inc.causes = rank_causes(inc.entities, inc.started)

    def _merge(self, into: Incident, other: Incident) -> None:
        for entity, view in other.entities.items():
            if entity not in into.entities and len(into.entities) < self.config.max_entities:
                into.entities[entity] = view
            if self._by_entity.get(entity) == other.id or entity in into.entities:
                # no entity may point at the incident merged away (it is not open: a leak);
                # as ``load_state`` rebuilds it: into's entities to into, the rest to none
                if entity in into.entities:
                    self._by_entity[entity] = into.id
                else:
                    del self._by_entity[entity]
                    self._last.pop(entity, None)
        room = self.config.max_listed_anomalies - len(into.anomalies)
        into.anomalies.extend(other.anomalies[: max(room, 0)])
        into.anomaly_count += other.anomaly_count
        into.started = min(into.started, other.started)
        into.last = max(into.last, other.last)
        self._open.pop(other.id, None)
        other.resolved = into.last
        into.causes = rank_causes(into.entities, into.started)

    def _resolve(self, inc: Incident, ts: float) -> IncidentEvent:
        inc.resolved = ts
        self._open.pop(inc.id, None)
        for entity in inc.entities:
            if self._by_entity.get(entity) == inc.id:
                del self._by_entity[entity]
                self._last.pop(entity, None)
        return self._event(inc, "resolved", ts)

    def _event(self, inc: Incident, state: str, ts: float, **extra: Any) -> IncidentEvent:
        rev = self._revision[inc.id] = self._revision.get(inc.id, 0) + 1
        if state == "resolved":
            self._revision.pop(inc.id, None)
        data: dict[str, Any] = {
            "incident_id": inc.id,
            "state": state,
            "revision": rev,
            "entities": sorted(inc.entities),
            "anomalies": list(inc.anomalies),
            "anomaly_count": inc.anomaly_count,
            "causes": [c.to_dict() for c in inc.causes],
            "started": inc.started,
            "resolved": inc.resolved,
            **extra,
        }
        return IncidentEvent(state, ts, data)


def _callees(known: tuple[str, ...], new: tuple[str, ...], cap: int) -> tuple[str, ...]:
    """``known`` then ``new`` without repeats; beyond ``cap``, the oldest ``known`` not in
    ``new`` go first (an order every reader of the log computes alike)."""
    merged = tuple(dict.fromkeys((*known, *new)))
    if len(merged) <= cap:
        return merged
    fresh, drop = set(new), len(merged) - cap
    kept = []
    for callee in merged:
        if drop and callee not in fresh:
            drop -= 1
        else:
            kept.append(callee)
    return tuple(kept[-cap:])


def _relates(note: AnomalyNote, entity: str, view: EntityView) -> bool:
    if entity in note.callees or note.entity in view.callees:
        return True  # one calls the other
    if set(note.callees) & set(view.callees):
        return True  # both call the same callee
    if note.service == view.service:
        return True
    return note.node is not None and note.node == view.node


def _depends(inc: Incident, entity: str, cause: str) -> bool:
    """``entity`` reaches ``cause`` through the callees known in the incident."""
    seen, stack = {entity}, [entity]
    while stack:
        current = stack.pop()
        view = inc.entities.get(current)
        for callee in view.callees if view else ():
            if callee == cause:
                return True
            if callee not in seen:
                seen.add(callee)
                stack.append(callee)
    return False
