"""Repair bookkeeping for the policy engine: pure, event-time, bounded, picklable.

* ``Cooldowns``: no repeat of the same action on the same entity before a deadline.
* ``Budget``: fleet-wide cap on repairs per sliding window.
* ``StormDetector``: more than N distinct entities needing one action within a window.
* ``CaseBook`` / ``Case``: per (rule, entity) ladder position, attempts, the open verification
  and the escalation state.

Nothing here reads a clock: every method takes the event time it applies to.

>>> b = Budget(max_repairs=2, window_seconds=60.0)
>>> b.consume(0.0), b.consume(10.0), b.available(20.0), b.available(60.0)
(None, None, False, True)
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from selfheal.pipeline.kernel.types import RepairAction

#: anomaly ids remembered per case (the reason of an escalation)
MAX_CASE_HISTORY = 16
#: entities listed in a storm escalation's params
MAX_STORM_ENTITIES = 50


class Cooldowns:
    """Deadline per (entity, action); expired entries are dropped by ``expire``."""

    def __init__(self, cap: int = 10_000) -> None:
        self.cap = cap
        self._until: OrderedDict[tuple[str, RepairAction], float] = OrderedDict()

    def until(self, entity: str, action: RepairAction, ts: float) -> float | None:
        """The deadline if (entity, action) is cooling down at ``ts``, else ``None``."""
        deadline = self._until.get((entity, action))
        return deadline if deadline is not None and ts < deadline else None

    def start(self, entity: str, action: RepairAction, ts: float, seconds: float) -> None:
        key = (entity, action)
        self._until[key] = ts + seconds
        self._until.move_to_end(key)
        while len(self._until) > self.cap:
            self._until.popitem(last=False)

    def expire(self, watermark: float) -> None:
        for key in [k for k, deadline in self._until.items() if deadline <= watermark]:
            del self._until[key]

    def __len__(self) -> int:
        return len(self._until)


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


@dataclass(slots=True)
class Storm:
    """An active storm for one action (one escalation, one resolution)."""

    action: RepairAction
    started: float
    last_need: float
    decision_id: str
    params: dict[str, Any]
    reason: tuple[str, ...]


class StormDetector:
    """Counts distinct entities needing each action in a sliding window."""

    def __init__(self, threshold: int, window_seconds: float, cap: int = 10_000) -> None:
        self.threshold = threshold
        self.window_seconds = window_seconds
        self.cap = cap
        # action -> entity -> last time it needed the action (insertion order = time order)
        self._needs: dict[RepairAction, OrderedDict[str, float]] = {}
        self.active: dict[RepairAction, Storm] = {}

    def record(self, action: RepairAction, entity: str, ts: float) -> int:
        """Record a need at ``ts`` (monotone per engine) and return the distinct count in window."""
        needs = self._needs.setdefault(action, OrderedDict())
        needs[entity] = ts
        needs.move_to_end(entity)
        while len(needs) > self.cap:
            needs.popitem(last=False)
        self._expire(needs, ts)
        storm = self.active.get(action)
        if storm is not None:
            storm.last_need = max(storm.last_need, ts)
        return len(needs)

    def entities(self, action: RepairAction) -> list[str]:
        return sorted(self._needs.get(action, {}))[:MAX_STORM_ENTITIES]

    def _expire(self, needs: OrderedDict[str, float], ts: float) -> None:
        while needs:
            entity, seen = next(iter(needs.items()))
            if seen > ts - self.window_seconds:
                break
            del needs[entity]

    def ended(self, watermark: float) -> list[Storm]:
        """Remove and return storms quiet for a whole window (no new need) at ``watermark``."""
        for needs in self._needs.values():
            self._expire(needs, watermark)
        done = [s for s in self.active.values() if watermark - s.last_need >= self.window_seconds]
        for storm in done:
            del self.active[storm.action]
        return sorted(done, key=lambda s: (s.last_need, s.action.value))


@dataclass(slots=True)
class PendingVerification:
    """A repair whose effect is being watched until ``deadline``."""

    decision_id: str
    action: RepairAction
    started: float
    deadline: float


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
    escalated: bool = False
    escalation_id: str = ""
    escalation_params: dict[str, Any] = field(default_factory=dict)
    escalated_at: float = 0.0
    #: last anomaly of the rule's kinds for this entity (matched or not)
    last_seen: float = 0.0
    history: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_CASE_HISTORY))

    def reset(self) -> None:
        """The entity recovered: start the ladder again next time."""
        self.rung = 0
        self.attempts = 0
        self.pending = None
        self.escalated = False
        self.escalation_id = ""
        self.escalation_params = {}
        self.history.clear()

    @property
    def idle(self) -> bool:
        return self.pending is None and not self.escalated and self.rung == 0 and self.attempts == 0


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

    def drop_idle(self, watermark: float, older_than: float) -> None:
        """Forget idle cases not seen for ``older_than`` seconds (bounded state by event time)."""
        stale = [
            key
            for key, c in self._cases.items()
            if c.idle and watermark - max(c.last_seen, c.last_acted or 0.0) >= older_than
        ]
        for key in stale:
            del self._cases[key]

    def __len__(self) -> int:
        return len(self._cases)


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
