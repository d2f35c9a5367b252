"""Changes (deploys) in the picture: each entity's recent versions, and whether an anomaly
followed one.

Changes arrive as CDEvents (``dev.cdevents.service.deployed|upgraded|rolledback``) on the
changes topic or as lines of a replay input. An anomaly that starts within ``window_seconds``
after a change on its entity is *attributed* to the change when the entity's peers (other
replicas of its service) that did not get the change show no anomaly of the same kind: a rise
on the changed replica only is strong evidence, a rise everywhere is not the deploy.

>>> from selfheal.pipeline.kernel.types import Change, ChangeKind
>>> log = ChangeLog()
>>> for i, v in enumerate(["v1", "v2"]):
...     _ = log.record(Change(f"c{i}", 100.0 * i, "api-3", ChangeKind.DEPLOYED, f"pkg:oci/api@{v}"))
>>> ref = log.recent("api-3", 160.0, window_seconds=600.0)
>>> ref.id, ref.version, ref.previous
('c1', 'v2', 'v1')
>>> log.recent("api-3", 1000.0, window_seconds=600.0) is None
True

A flood of deploy events for made-up entities must not push the real entities' histories (and
so their rollback targets) out. With ``known`` (the stage passes: seen on metrics or logs), the
deploys of entities never seen there are kept apart, in an LRU a tenth the size
(``STRANGER_SHARE``) that cannot evict a known entity, and they are admitted at the guard's
new-entity rate (``newcomers``, ``validation.new_entities_per_second`` after
``new_entities_burst``): past it the stage dead-letters them (``change_intake``). An entity
seen on metrics or logs later moves to the main LRU with its next deploy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

from selfheal.pipeline.core.incidents import ChangeRef, IncidentBook
from selfheal.pipeline.core.newcomers import Newcomers
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import AnomalyKind, Change, ChangeKind

#: kinds a bad version typically causes; a forecast or a security finding is not a deploy's
CHANGE_SENSITIVE = frozenset(
    {
        AnomalyKind.ERROR_RATE_DRIFT,
        AnomalyKind.ERROR_BURST,
        AnomalyKind.LATENCY_ANOMALY,
        AnomalyKind.HEALTH_CHECK_FAILED,
        AnomalyKind.LOG_PATTERN,
        AnomalyKind.LOOP_SLOW,
        AnomalyKind.LOOP_STUCK,
    }
)


#: the share of ``max_entities`` kept for entities never seen on metrics or logs
STRANGER_SHARE = 10


class ChangeLog:
    """The last ``per_entity`` changes of the ``max_entities`` entities changed most recently
    (and of entities not ``known``, apart: see the module docstring)."""

    def __init__(
        self,
        max_entities: int = 20_000,
        per_entity: int = 8,
        known: Callable[[str], bool] | None = None,
        new_per_second: float = 200.0,
        new_burst: float = 20_000.0,
    ) -> None:
        self.max_entities = max_entities
        self.per_entity = per_entity
        #: None: every entity is known (a log without a guard to ask)
        self.known = known
        self._by_entity: LRU[str, deque[Change]] = LRU("changes", max_entities)
        cap = max(1, max_entities // STRANGER_SHARE)
        self._strangers: LRU[str, deque[Change]] = LRU("changes_strangers", cap)
        #: not in snapshots (their format stays): a restored partition starts a full burst
        self.newcomers = Newcomers(new_per_second, new_burst)

    def _known(self, entity: str) -> bool:
        return self.known is None or self.known(entity)

    def admits(self, entity: str, ts: float) -> bool:
        """Whether a deploy of ``entity`` at event time ``ts`` may be kept: a known entity or
        one with history always, a new stranger within the new-entity rate."""
        if self._known(entity) or entity in self._by_entity or entity in self._strangers:
            return True
        return self.newcomers.admit(ts)

    def _history_for(self, entity: str) -> deque[Change]:
        history = self._by_entity.get(entity)
        if history is not None:
            return history
        known = self._known(entity)
        history = self._strangers.pop(entity) if known else self._strangers.get(entity)
        if history is None:
            history = deque(maxlen=self.per_entity)
        elif not known:
            return history
        (self._by_entity if known else self._strangers).put(entity, history)
        return history

    def record(self, change: Change) -> bool:
        """Keep ``change``; False when it is a redelivery (same id) and nothing changed."""
        history = self._history_for(change.entity)
        if any(c.id == change.id for c in history):
            return False
        history.append(change)
        # arrivals may be out of event-time order: keep the history sorted
        if len(history) > 1 and history[-2].ts > change.ts:
            ordered = sorted(history, key=lambda c: (c.ts, c.id))
            history.clear()
            history.extend(ordered)
        return True

    def history(self, entity: str) -> list[Change]:
        found = self._by_entity.peek(entity) or self._strangers.peek(entity)
        return list(found) if found else []

    def recent(self, entity: str, ts: float, window_seconds: float) -> ChangeRef | None:
        """The change that brought the version ``entity`` runs at ``ts``, if at most
        ``window_seconds`` before; ``previous`` is the version a rollback should go to."""
        before = [c for c in self.history(entity) if c.ts <= ts]
        if not before:
            return None
        at = len(before) - 1
        while at > 0 and before[at - 1].version == before[at].version:
            at -= 1  # a redeploy of the running version is no change: its first deploy is
        change = before[at]
        if change.kind is ChangeKind.ROLLEDBACK or ts - change.ts > window_seconds:
            # a rollback restored a version that ran before: rolling it back would reinstate
            # the version just rolled back from (a rollback loop)
            return None
        return ChangeRef(change.id, change.version, _target(before, at, window_seconds), change.ts)

    def entities(self) -> Iterable[str]:
        return chain(self._strangers.keys(), self._by_entity.keys())

    def to_state(self) -> list[list[Any]]:
        """Plain data: one row per change, oldest entity first (strangers before the known:
        ``load_state`` sorts them again by ``known``)."""
        return [
            [c.id, c.ts, c.entity, c.kind.value, c.artifact, c.source]
            for history in chain(self._strangers.values(), self._by_entity.values())
            for c in history
        ]

    def load_state(self, rows: Any) -> None:
        for cid, ts, entity, kind, artifact, source in rows:
            self.record(
                Change(
                    str(cid), float(ts), str(entity), ChangeKind(kind), str(artifact), str(source)
                )
            )


def _target(before: list[Change], at: int, window_seconds: float) -> str | None:
    """The version to roll ``before[at]`` back to: the newest earlier one that differs, was
    never rolled back from (known bad) and ran for ``window_seconds`` before it was replaced
    (one replaced sooner is unproven: often the bad deploy a fix forward followed); without
    such a version, the newest that differs and is not known bad."""
    rolled = zip(before[1:], before[:-1], strict=True)
    bad = {b.version for a, b in rolled if a.kind is ChangeKind.ROLLEDBACK}
    bad.add(before[at].version)
    fallback = None
    end = before[at].ts  # when the newer version replaced the run being looked at
    for i in range(at - 1, -1, -1):
        c = before[i]
        if i > 0 and before[i - 1].version == c.version:
            continue  # a redeploy: the run began with the first deploy of its version
        if c.version not in bad:
            if end - c.ts >= window_seconds:
                return c.version
            fallback = fallback or c.version
        end = c.ts
    return fallback


@dataclass(frozen=True, slots=True)
class Attribution:
    """An anomaly attributed to a change, with the evidence in words."""

    change: ChangeRef
    evidence: tuple[str, ...]


def attribute(
    kind: AnomalyKind,
    entity: str,
    service: str,
    change: ChangeRef | None,
    book: IncidentBook,
    changes: ChangeLog | None = None,
) -> Attribution | None:
    """Attribute ``entity``'s anomaly of ``kind`` to ``change`` unless its unchanged peers show
    the same kind (from the incident the anomaly joined)."""
    if change is None or kind not in CHANGE_SENSITIVE:
        return None
    inc = book.incident_of(entity)
    peers_hit: list[str] = []
    if inc is not None:
        for other, view in inc.entities.items():
            if other == entity or view.service != service or kind.value not in view.kinds:
                continue
            same_change = view.change is not None and view.change.version == change.version
            if not same_change:
                peers_hit.append(other)
    if peers_hit:
        return None  # the same rise on replicas without the change: not the deploy
    evidence = [
        f"{kind.value} began {_ago(change.ts, inc.entities[entity].first if inc else None)} "
        f"after {change.version} was deployed (change {change.id})",
        f"no unchanged replica of {service} shows {kind.value}",
    ]
    if change.previous:
        evidence.append(f"previous version {change.previous}")
    return Attribution(change, tuple(evidence))


def _ago(change_ts: float, anomaly_ts: float | None) -> str:
    if anomaly_ts is None:
        return "shortly"
    return f"{max(anomaly_ts - change_ts, 0.0):.0f} s"
