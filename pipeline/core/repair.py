"""Repair bookkeeping for the policy engine: pure, event-time, bounded, plain data.

* ``Cooldowns``: no repeat of the same action on the same entity before a deadline.
* ``Budget``: fleet-wide cap on repairs per sliding window.
* ``EventBudget``: the same cap in any window of the times consumed, in whatever order they
  come (partitions on different event clocks).
* ``StormDetector``: more than N distinct entities needing one action within a window (of the
  log's time, and of the own time of each need's partition).
* ``CaseBook`` / ``Case``: per (rule, entity) ladder position, attempts, the open verification
  and the escalation state.

Nothing here reads a clock: every method takes the event time it applies to. Every stateful
class converts to and from plain data (``to_plain`` / ``from_plain``: dicts, lists, numbers,
strings, booleans and ``None``), so a snapshot codec carries it without pickling objects.

>>> b = Budget(max_repairs=2, window_seconds=60.0)
>>> b.consume(0.0), b.consume(10.0), b.available(20.0), b.available(60.0)
(None, None, False, True)
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfheal.pipeline.kernel.types import RepairAction

#: anomaly ids remembered per case (the reason of an escalation)
MAX_CASE_HISTORY = 16
#: entities listed in a storm escalation's params
MAX_STORM_ENTITIES = 50

Plain = dict[str, Any]


class Cooldowns:
    """Deadline per (entity, action); expired entries are dropped by ``expire``.

    Each entry also keeps when it started and the rule that started it: facts, not settings,
    from which ``rederive`` recomputes the deadline under the running configuration.
    """

    def __init__(self, cap: int = 10_000) -> None:
        self.cap = cap
        #: (entity, action) -> (deadline, start, rule)
        self._until: OrderedDict[tuple[str, RepairAction], tuple[float, float, str]] = OrderedDict()

    def until(self, entity: str, action: RepairAction, ts: float) -> float | None:
        """The deadline if (entity, action) is cooling down at ``ts``, else ``None``."""
        got = self._until.get((entity, action))
        return got[0] if got is not None and ts < got[0] else None

    def start(
        self, entity: str, action: RepairAction, ts: float, seconds: float, rule: str = ""
    ) -> None:
        key = (entity, action)
        self._until[key] = (ts + seconds, ts, rule)
        self._until.move_to_end(key)
        while len(self._until) > self.cap:
            self._until.popitem(last=False)

    def drop(self, entity: str, action: RepairAction, started: float, rule: str) -> None:
        """Forget the cooldown ``rule`` started at ``started`` (it acted on nothing); one
        started since stays."""
        got = self._until.get((entity, action))
        if got is not None and got[1:] == (started, rule):
            del self._until[(entity, action)]

    def rederive(self, seconds: Callable[[str, RepairAction], float]) -> None:
        """Recompute each deadline as its start plus ``seconds(rule, action)``, the cooldown
        the running configuration gives (entries without a known rule keep theirs)."""
        for key, (_, started, rule) in list(self._until.items()):
            if rule:
                self._until[key] = (started + seconds(rule, key[1]), started, rule)

    def expire(self, watermark: float) -> None:
        for key in [k for k, got in self._until.items() if got[0] <= watermark]:
            del self._until[key]

    def __len__(self) -> int:
        return len(self._until)

    def to_plain(self) -> list[list[Any]]:
        return [
            [entity, action.value, until, started, rule]
            for (entity, action), (until, started, rule) in self._until.items()
        ]

    @classmethod
    def from_plain(cls, data: list[list[Any]], cap: int) -> Cooldowns:
        c = cls(cap)
        for entity, action, until, *origin in data[-cap:]:
            # [entity, action, until] before the start and the rule were kept: not re-derived
            started, rule = (float(origin[0]), str(origin[1])) if origin else (float(until), "")
            c._until[(str(entity), RepairAction(action))] = (float(until), started, rule)
        return c


class Budget:
    """At most ``max_repairs`` consumptions in any window of ``window_seconds``."""

    def __init__(self, max_repairs: int, window_seconds: float) -> None:
        self.max_repairs = max_repairs
        self.window_seconds = window_seconds
        self._used: deque[float] = deque(maxlen=max(max_repairs, 1))

    def _expire(self, ts: float) -> None:
        while self._used and self._used[0] <= ts - self.window_seconds:
            self._used.popleft()

    def used(self, ts: float) -> int:
        self._expire(ts)
        return len(self._used)

    def available(self, ts: float) -> bool:
        return self.used(ts) < self.max_repairs

    def consume(self, ts: float) -> None:
        self._expire(ts)
        self._used.append(ts)


class EventBudget:
    """At most ``max_repairs`` consumptions in any window ``(a, a + window_seconds]`` of the
    times consumed, whatever their order: a time earlier than others consumed (a partition
    behind the fleet) is judged against the consumptions around it, before and after.

    Keeps the ``cap`` latest times; a time whose windows reach below one it forgot is never
    available (holding is the safe side: it is that far behind ``cap`` repairs).

    >>> b = EventBudget(max_repairs=2, window_seconds=60.0)
    >>> b.consume(100.0), b.consume(130.0), b.available(80.0), b.available(30.0)
    (None, None, False, True)
    """

    def __init__(self, max_repairs: int, window_seconds: float, cap: int = 10_000) -> None:
        self.max_repairs = max_repairs
        self.window_seconds = window_seconds
        self.cap = max(cap, max_repairs, 1)
        self._used: list[float] = []  # sorted
        self._forgot = -math.inf

    def used(self, ts: float) -> int:
        """Consumptions in the window ending at ``ts``."""
        return bisect_right(self._used, ts) - bisect_right(self._used, ts - self.window_seconds)

    def available(self, ts: float) -> bool:
        window = self.window_seconds
        if self.max_repairs <= 0 or ts - window < self._forgot:
            return False
        # of the windows holding ts, the fullest ends at ts or at a later consumption
        # (at most max_repairs of those lie within a window after ts)
        later = self._used[bisect_right(self._used, ts) : bisect_left(self._used, ts + window)]
        return all(self.used(end) < self.max_repairs for end in (ts, *later))

    def consume(self, ts: float) -> None:
        insort(self._used, ts)
        if len(self._used) > self.cap:
            self._forgot = max(self._forgot, self._used.pop(0))


@dataclass(slots=True)
class Storm:
    """A storm this engine escalated (it sends the updates and the one resolution)."""

    action: RepairAction
    started: float
    last_need: float
    decision_id: str
    params: dict[str, Any]
    reason: tuple[str, ...]

    def to_plain(self) -> Plain:
        return {
            "action": self.action.value,
            "started": self.started,
            "last_need": self.last_need,
            "decision_id": self.decision_id,
            "params": dict(self.params),
            "reason": list(self.reason),
        }

    @classmethod
    def from_plain(cls, d: Plain) -> Storm:
        return cls(
            action=RepairAction(d["action"]),
            started=float(d["started"]),
            last_need=float(d["last_need"]),
            decision_id=str(d["decision_id"]),
            params=dict(d["params"]),
            reason=tuple(str(x) for x in d["reason"]),
        )


@dataclass(slots=True)
class Hold:
    """An entity whose repair a storm holds: its need is re-noted while the condition lasts."""

    action: RepairAction
    storm_id: str
    #: event time of the last need sent to the fleet for this entity (keeps the storm alive)
    last_note: float
    #: listed in an escalation or update of the storm already
    announced: bool = True
    #: the anomaly kind and id that put it on hold (for the update that lists it)
    kind: str = ""
    reason: str = ""

    def to_plain(self) -> Plain:
        return {
            "action": self.action.value,
            "storm_id": self.storm_id,
            "last_note": self.last_note,
            "announced": self.announced,
            "kind": self.kind,
            "reason": self.reason,
        }

    @classmethod
    def from_plain(cls, d: Plain) -> Hold:
        return cls(
            RepairAction(d["action"]),
            str(d["storm_id"]),
            float(d["last_note"]),
            bool(d.get("announced", True)),
            str(d.get("kind", "")),
            str(d.get("reason", "")),
        )


#: where a need was: its input partition (None: not known) and its event time there
Place = tuple[int | None, float]


class StormDetector:
    """Counts distinct entities needing each action in a sliding window.

    The window slides on the times ``record`` is given (the fleet log's). A need placed in a
    partition counts toward a storm (``counted``) only while it is also within a window of
    that partition's newest need in the partition's own event time, as the fleet budget counts
    in both times: a partition reading a backlog at once squeezes hours of its own time into
    one window of the log's, and needs hours apart in it are no storm. Live partitions whose
    clocks disagree still count together (each one's needs are near its own newest).
    """

    def __init__(self, threshold: int, window_seconds: float, cap: int = 10_000) -> None:
        self.threshold = threshold
        self.window_seconds = window_seconds
        self.cap = cap
        # action -> entity -> last time it needed the action (insertion order = time order)
        self._needs: dict[RepairAction, OrderedDict[str, float]] = {}
        #: action -> entity -> where its need in the window was (``counted``)
        self._where: dict[RepairAction, dict[str, Place]] = {}

    def record(
        self, action: RepairAction, entity: str, ts: float, where: Place | None = None
    ) -> int:
        """Record a need at ``ts`` (monotone per engine) and return the distinct count in window
        on ``ts`` alone: an upper bound of the needs that count toward a storm (``counted``).
        ``where``: the need's partition and event time there (None: counted on ``ts`` alone)."""
        needs = self._needs.setdefault(action, OrderedDict())
        needs[entity] = ts
        needs.move_to_end(entity)
        if where is not None:
            self._wheres().setdefault(action, {})[entity] = where
        while len(needs) > self.cap:
            self._drop(action, needs.popitem(last=False)[0])
        self._expire(action, needs, ts)
        return len(needs)

    def counted(self, action: RepairAction) -> list[str]:
        """The entities whose need in the window counts toward a storm, oldest first: placed
        nowhere or in no partition (an older version's record), or within a window of their
        partition's newest need in its own time. O(needs in window): ask only once ``record``
        counted more than the threshold."""
        where = self._wheres().get(action, {})
        newest: dict[int, float] = {}
        for part, own in where.values():
            if part is not None:
                newest[part] = max(newest.get(part, -math.inf), own)
        out = []
        for entity in self._needs.get(action, {}):
            part, own = where.get(entity, (None, 0.0))
            if part is None or own > newest[part] - self.window_seconds:
                out.append(entity)
        return out

    def entities(self, action: RepairAction) -> list[str]:
        """The first of the entities whose need counts (``counted``), by name."""
        return sorted(self.counted(action))[:MAX_STORM_ENTITIES]

    def placed(self, action: RepairAction) -> list[tuple[Place | None, float]]:
        """Where each need that counts was (None: not told), and its time (``record``'s)."""
        where = self._wheres().get(action, {})
        needs = self._needs.get(action, OrderedDict())
        return [(where.get(e), needs[e]) for e in self.counted(action)]

    def _expire(self, action: RepairAction, needs: OrderedDict[str, float], ts: float) -> None:
        while needs:
            entity, seen = next(iter(needs.items()))
            if seen > ts - self.window_seconds:
                break
            del needs[entity]
            self._drop(action, entity)

    def _drop(self, action: RepairAction, entity: str) -> None:
        self._wheres().get(action, {}).pop(entity, None)

    def _wheres(self) -> dict[RepairAction, dict[str, Place]]:
        # a snapshot of an older version has no such map
        where: dict[RepairAction, dict[str, Place]] = self.__dict__.setdefault("_where", {})
        return where


@dataclass(slots=True)
class PendingVerification:
    """An attempt whose effect is being watched until ``deadline``.

    ``approval``: the attempt is a decision awaiting approval; it climbs the ladder like a
    repair when the condition outlasts the window (judged at its end: the human may still act),
    but reports no verification (nothing ran). ``recurred``: the condition was seen again
    inside the window.
    """

    decision_id: str
    action: RepairAction
    started: float
    deadline: float
    approval: bool = False
    recurred: bool = False

    def to_plain(self) -> Plain:
        return {
            "decision_id": self.decision_id,
            "action": self.action.value,
            "started": self.started,
            "deadline": self.deadline,
            "approval": self.approval,
            "recurred": self.recurred,
        }

    @classmethod
    def from_plain(cls, d: Plain) -> PendingVerification:
        return cls(
            str(d["decision_id"]),
            RepairAction(d["action"]),
            float(d["started"]),
            float(d["deadline"]),
            bool(d.get("approval", False)),
            bool(d.get("recurred", False)),
        )


@dataclass(slots=True)
class Case:
    """Ladder state of one (rule, entity)."""

    rule: str
    entity: str
    rung: int = 0
    attempts: int = 0
    #: time of the last acted (not suppressed) decision, for the dedup window
    last_acted: float | None = None
    pending: PendingVerification | None = None
    #: the action of the rung ``attempts`` were made on (a changed ladder may hold another
    #: action at ``rung`` after a restart: ``ladder.realign``)
    rung_action: str = ""
    escalated: bool = False
    escalation_id: str = ""
    escalation_params: dict[str, Any] = field(default_factory=dict)
    escalated_at: float = 0.0
    #: escalated without a page because the rule's ``escalate`` was off (a running config
    #: that escalates pages it: ``ladder.decide_rule``)
    silent: bool = False
    #: last event time the condition was seen (an anomaly of the rule's kinds, or a detector
    #: still flagging it)
    last_seen: float = 0.0
    #: whether the detectors flag the condition now (None: no detector reports it)
    present: bool | None = None
    history: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_CASE_HISTORY))

    def reset(self) -> None:
        """The entity recovered: start the ladder again next time."""
        self.rung = 0
        self.attempts = 0
        self.rung_action = ""
        self.pending = None
        self.escalated = False
        self.silent = False
        self.escalation_id = ""
        self.escalation_params = {}
        self.history.clear()

    @property
    def idle(self) -> bool:
        return self.pending is None and not self.escalated and self.rung == 0 and self.attempts == 0

    def to_plain(self) -> Plain:
        return {
            "rule": self.rule,
            "entity": self.entity,
            "rung": self.rung,
            "attempts": self.attempts,
            "rung_action": self.rung_action,
            "last_acted": self.last_acted,
            "pending": self.pending.to_plain() if self.pending is not None else None,
            "escalated": self.escalated,
            "escalation_id": self.escalation_id,
            "escalation_params": dict(self.escalation_params),
            "escalated_at": self.escalated_at,
            "silent": self.silent,
            "last_seen": self.last_seen,
            "present": self.present,
            "history": list(self.history),
        }

    @classmethod
    def from_plain(cls, d: Plain) -> Case:
        pending = d.get("pending")
        acted = d.get("last_acted")
        present = d.get("present")
        escalated, escalation_id = bool(d["escalated"]), str(d["escalation_id"])
        # older snapshots: any escalation without a page may be a silent one (the ladder
        # still pages only when no incident page stands for the entity)
        silent = d.get("silent", escalated and not escalation_id)
        return cls(
            rule=str(d["rule"]),
            entity=str(d["entity"]),
            rung=int(d["rung"]),
            attempts=int(d["attempts"]),
            rung_action=str(d.get("rung_action", "")),
            last_acted=None if acted is None else float(acted),
            pending=PendingVerification.from_plain(pending) if pending else None,
            escalated=escalated,
            escalation_id=escalation_id,
            escalation_params=dict(d["escalation_params"]),
            escalated_at=float(d["escalated_at"]),
            silent=bool(silent),
            last_seen=float(d["last_seen"]),
            present=None if present is None else bool(present),
            history=deque((str(x) for x in d["history"]), maxlen=MAX_CASE_HISTORY),
        )


class CaseBook:
    """LRU-bounded map (rule, entity) -> Case."""

    def __init__(self, cap: int = 10_000) -> None:
        self.cap = cap
        self._cases: OrderedDict[tuple[str, str], Case] = OrderedDict()

    def get(self, rule: str, entity: str) -> Case | None:
        return self._cases.get((rule, entity))

    def get_or_create(self, rule: str, entity: str) -> Case:
        key = (rule, entity)
        case = self._cases.get(key)
        if case is None:
            case = self._cases[key] = Case(rule=rule, entity=entity)
            while len(self._cases) > self.cap:
                self._cases.popitem(last=False)
        self._cases.move_to_end(key)
        return case

    def open_cases(self) -> list[Case]:
        """Cases with a verification or an escalation open, in a deterministic order."""
        cases = [c for c in self._cases.values() if c.pending is not None or c.escalated]
        return sorted(cases, key=lambda c: (c.rule, c.entity))

    def values(self) -> list[Case]:
        return list(self._cases.values())

    def remove(self, case: Case) -> None:
        self._cases.pop((case.rule, case.entity), None)

    def drop_idle(self, watermark: float, older_than: float) -> list[Case]:
        """Forget cases with nothing open whose condition was last seen more than
        ``older_than`` seconds ago (the anomaly cleared: the ladder starts over next time)."""
        stale = [
            key
            for key, c in self._cases.items()
            if c.pending is None
            and not c.escalated
            and not c.present
            and watermark - max(c.last_seen, c.last_acted or 0.0) > older_than
        ]
        return [self._cases.pop(key) for key in stale]

    def __len__(self) -> int:
        return len(self._cases)

    def to_plain(self) -> list[Plain]:
        return [c.to_plain() for c in self._cases.values()]

    @classmethod
    def from_plain(cls, data: list[Plain], cap: int) -> CaseBook:
        book = cls(cap)
        for d in data[-cap:]:
            case = Case.from_plain(d)
            book._cases[(case.rule, case.entity)] = case
        return book


class SeenIds:
    """Bounded LRU set of anomaly ids (exact redeliveries are idempotent)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """Add ``key``; False when it was already present."""
        if key in self._ids:
            self._ids.move_to_end(key)
            return False
        self._ids[key] = None
        while len(self._ids) > self.cap:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)

    def to_plain(self) -> list[str]:
        return list(self._ids)

    @classmethod
    def from_plain(cls, data: list[str], cap: int) -> SeenIds:
        s = cls(cap)
        s._ids = OrderedDict.fromkeys(str(x) for x in data[-cap:])
        return s
