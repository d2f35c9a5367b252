"""Fleet-wide repair safety: one repair budget and one storm detector for the whole deployment.

Per-entity policy state (ladder, cooldown, dedup, verification) lives with the entity's input
partition. The budget and the storm window are about the whole fleet, so they cannot: every
partition engine asks one ``FleetGate`` instead. A gate is an ordered log of ``FleetRequest``s
(one per repair an entity needs) fed through a ``FleetArbiter``; the verdict of each request is
a pure function of the log before it, so every process reading the same log agrees on it.

* ``LocalFleet``: the log is this process's call order (replay, tests, one process).
* ``selfheal.connectors.fleet_ledger.KafkaFleet``: the log is a one-partition Kafka topic
  shared by all processes of a consumer group; a request is produced, then answered once read
  back.

Requests are idempotent on their id (the decision id), so at-least-once redelivery after a
restart gets the verdict the first delivery got.

>>> from selfheal.pipeline.kernel.types import FleetRequest, RepairAction
>>> fleet = LocalFleet(FleetArbiter(max_repairs=1, window_seconds=60.0, storm_threshold=2,
...     storm_window_seconds=60.0))
>>> def need(i: int, ts: float) -> FleetRequest:
...     return FleetRequest(id=f"d{i}", ts=ts, entity=f"e{i}", action=RepairAction.RESTART,
...         claim=True, storm_id=f"s{i}")
>>> [fleet.request(need(i, 10.0 + i)).verdict.value for i in range(4)]
['granted', 'budget', 'storm_started', 'storm']
>>> fleet.request(need(0, 10.0)).verdict.value  # a redelivered request keeps its verdict
'granted'
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from selfheal.pipeline.core.codec import CodecError
from selfheal.pipeline.core.fleet_views import ActiveStorm, OrphanStorm
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.core.repair import (
    MAX_STORM_ENTITIES,
    Budget,
    EventBudget,
    StormDetector,
)
from selfheal.pipeline.kernel.types import (
    FleetOutcome,
    FleetProgress,
    FleetRequest,
    RepairAction,
    StormEnd,
    Verdict,
)

#: a flagged entity whose need was not renewed for this many storm windows (of the log's time)
#: stops holding its storm up. Its engine re-notes it every third of a window while flagged and
#: clears it after two silent ones (``storm_hold.unflag_stale``): only a clearing that was lost
#: gets this old (its partition restored elsewhere and not run since, a rule renamed). Judged on
#: the log alone, so every process ends the storm at the same record, and on the event time
#: every partition reached (``fleet_time``): the partitions of a process that died are not
#: reached past its last report (``SILENT_SECONDS``), so its flagged entities hold on.
STALE_WINDOWS = 2
#: a partition whose progress reports (logged every second while a storm runs) stopped for this
#: long, in the wall time of the log's newest report, is reached only as far as the log's time
#: when it last reported: its process may have died, and a storm must not end because the
#: processes that would renew its held entities' needs went silent. Holding on is the safe side
#: (a live process reports again within a second; clocks are assumed synchronised this well).
SILENT_SECONDS = 30.0
_NONE: Mapping[int, object] = MappingProxyType({})


@dataclass(slots=True)
class _Storm:
    id: str
    last_need: float
    #: how long a flagged entity's need holds the storm up unrenewed (STALE_WINDOWS windows)
    stale: float
    #: the entities that needed the action while it lasted (the first MAX_STORM_ENTITIES)
    entities: dict[str, None] = field(default_factory=dict)
    count: int = 0
    #: held entities whose condition is still flagged -> the log's time their need was last
    #: renewed, oldest first: the storm lasts while any was renewed within the stale bound
    flagged: dict[str, float] = field(default_factory=dict)
    #: the escalation's labels, from the need that started it ("": this log did not see it)
    kind: str = ""
    rule: str = ""
    #: the log's time of the last need of no known partition (an older version's record) or
    #: of a flagged entity gone stale: judged, as before, against every partition's progress
    unplaced: float = -math.inf
    #: input partition -> (its own event time of its last need, the log's time then): each
    #: partition's needs are judged against its own progress, however far its clock is off
    parts: dict[int, tuple[float, float]] = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        """From a snapshot (``state.codec``): one of an older version has neither
        ``unplaced`` nor ``parts``, its needs all count on the log's time (``last_need``)."""
        slots = state[1] if isinstance(state, tuple) and len(state) == 2 else state
        if not isinstance(slots, dict) or not slots.keys() <= set(_Storm.__slots__):
            raise CodecError("bad state for fleet._Storm")
        self.unplaced = slots.get("last_need", -math.inf)
        self.parts = {}
        for k, v in slots.items():
            setattr(self, k, v)

    def need(self, partition: int | None, ts: float, now: float) -> None:
        """A need at event time ``ts`` of ``partition``, applied at the log's time ``now``."""
        self.last_need = max(self.last_need, now)
        if partition is None:
            self.unplaced = max(self.unplaced, now)
            return
        own, at = self.parts.get(partition, (-math.inf, -math.inf))
        self.parts[partition] = (max(own, ts), max(at, now))

    def join(self, entity: str) -> None:
        if entity not in self.entities:
            self.count += 1
            if len(self.entities) < MAX_STORM_ENTITIES:
                self.entities[entity] = None

    def flag(self, entity: str, now: float, cap: int) -> None:
        self.flagged.pop(entity, None)  # renewed: moves to the end (times stay in order)
        self.flagged[entity] = now
        while len(self.flagged) > cap:
            self._unflag_oldest()

    def drop_stale(self, before: float) -> None:
        """Flagged entities last renewed at or before ``before`` no longer hold it up."""
        while self.flagged and next(iter(self.flagged.values())) <= before:
            self._unflag_oldest()

    def _unflag_oldest(self) -> None:
        entity = next(iter(self.flagged))
        renewed = self.flagged.pop(entity)
        # it counts as needing the action until it went stale: the storm's quiet window (and
        # ``needed_to``) is the same whether it is judged before or after the drop
        self.last_need = max(self.last_need, renewed + self.stale)
        self.unplaced = max(self.unplaced, renewed + self.stale)

    def needed_to(self) -> float:
        """The last event time the action counts as needed: flagged entities need it until
        their need goes stale."""
        return self._flagged_to(self.last_need)

    def unplaced_to(self) -> float:
        """``needed_to`` of the needs judged on the log's time (``unplaced``, flagged ones)."""
        return self._flagged_to(self.unplaced)

    def _flagged_to(self, last: float) -> float:
        if not self.flagged:
            return last
        return max(last, next(reversed(self.flagged.values())) + self.stale)


class FleetArbiter:
    """Budget and storm verdicts, a pure function of the requests applied so far (in order).

    Time is the largest event time applied (records from many partitions arrive out of order),
    so windows slide monotonically and every reader of the same log computes the same verdicts.
    A repair is granted only with room in the budget on that time and, as partitions' event
    clocks may disagree, in every budget window around the request's own event time.
    """

    def __init__(
        self,
        max_repairs: int,
        window_seconds: float,
        storm_threshold: int,
        storm_window_seconds: float,
        cap: int = 10_000,
        remember: int = 50_000,
        *,
        wait_for_progress: bool = False,
    ) -> None:
        self.max_repairs = max_repairs
        self.window_seconds = window_seconds
        self.storm_threshold = storm_threshold
        self.storm_window_seconds = storm_window_seconds
        self._stale = STALE_WINDOWS * storm_window_seconds
        self.cap = cap
        self.remember = remember
        self.clock = -math.inf
        #: a repair counts in every window it may fall in when partitions' clocks disagree:
        #: on the log's time it was granted at (partitions live at once, one's producers ahead,
        #: share it) and around its own event time (a partition behind one whose time races
        #: ahead must not find its earlier repairs slid out of the window)
        self._budget = Budget(max_repairs, window_seconds)
        self._event_budget = EventBudget(max_repairs, window_seconds, cap)
        self._needs = StormDetector(storm_threshold, storm_window_seconds, cap)
        self._active: dict[RepairAction, _Storm] = {}
        #: storm id -> its last need, for storms over (bounded)
        self._ended: OrderedDict[str, float] = OrderedDict()
        #: action -> last need since an operator released its storm: no new storm on it
        #: starts until its needs stopped for two storm windows (the incident is over)
        self._released: dict[RepairAction, float] = {}
        #: storm id -> who released it (bounded): every engine drops its holds of the storm
        self._released_by: OrderedDict[str, str] = OrderedDict()
        #: storms over whose resolution nobody logged yet (``orphaned_storms``), and storms
        #: resolved: an end record, or taken by this process to resolve (bounded)
        self._unresolved: OrderedDict[str, tuple[RepairAction, _Storm]] = OrderedDict()
        self._resolved: OrderedDict[str, None] = OrderedDict()
        #: request id -> verdict, so redelivered requests are answered alike (bounded)
        self._outcomes: OrderedDict[str, FleetOutcome] = OrderedDict()
        #: input partition -> event time it is processed to (reported while storms run), and
        #: how many partitions there are (0: nobody reported, no limit)
        self._progress: dict[int, float] = {}
        self._partitions = 0
        #: input partition -> (wall time of its last report, the log's time then), and the
        #: newest wall time reported: a partition whose reports stopped (``_reached``)
        self._reported: dict[int, tuple[float, float]] = {}
        self._wall = -math.inf
        #: input partitions report their progress (a deployment's ledger): until they did,
        #: no storm ends (``fleet_time``); a replay or a single engine has no such reports
        self.wait_for_progress = wait_for_progress
        self.applied = 0

    @classmethod
    def from_policy(cls, policy: PolicyConfig, *, wait_for_progress: bool = False) -> FleetArbiter:
        """Budget, storm threshold and window, and state bounds of ``policy``."""
        return cls(
            wait_for_progress=wait_for_progress,
            max_repairs=policy.budget.max_repairs,
            window_seconds=policy.budget.window_seconds,
            storm_threshold=policy.storm_threshold,
            storm_window_seconds=policy.storm_window_seconds,
            cap=policy.max_tracked_entities,
            remember=policy.max_seen_anomalies,
        )

    # -- the log ---------------------------------------------------------------------------

    def apply(self, req: FleetRequest) -> FleetOutcome:
        """The verdict on ``req`` (the first one, when its id was applied before).

        A storm starts once more than ``storm_threshold`` distinct entities' needs of the action
        count: each within the storm window of the log's time and within a window of its own
        partition's newest need in that partition's event time (``StormDetector.counted``).
        Live partitions whose clocks are hours apart storm together; a partition reading a
        backlog at once does not make a storm of needs hours apart in its own time."""
        known = self._outcomes.get(req.id)
        if known is not None:
            return known
        self.applied += 1
        now = self._advance(req.ts)
        # callers protected from one incident's cause are one need, not a storm of them
        who = f"incident:{req.incident}" if req.incident else req.entity
        # on the log's time: an upper bound of the needs that count toward a storm start
        count = self._needs.record(req.action, who, now, (req.partition, req.ts))
        storm = self._active.get(req.action)
        if storm is None and req.held and not req.claim and req.storm_id:
            storm = self._joined_late(req, now)
        released = self._released.get(req.action)
        if released is not None:
            # quiet for two windows: detectors re-report a lasting condition once per window
            # (their repeat), so one quiet window does not mean the incident is over
            if now - released >= 2 * self.storm_window_seconds:
                del self._released[req.action]
                released = None
            else:
                self._released[req.action] = now
        if storm is not None:
            storm.need(req.partition, req.ts, now)  # (a stale entity's counts to later)
            storm.join(req.entity)
            if req.held is True:
                storm.flag(req.entity, now, self.cap)
            elif req.held is False:
                storm.flagged.pop(req.entity, None)
            outcome = FleetOutcome(Verdict.STORM, storm.id, storm.count, tuple(storm.entities))
        elif (
            count > self.storm_threshold
            and req.storm_id
            and not req.held
            and released is None
            and len(self._needs.counted(req.action)) > self.storm_threshold
        ):
            # (a note, storm_id "" or a held entity's storm, never starts a storm: its proposer
            # would not escalate)
            outcome = self._start(req, now)
        elif not req.claim:
            outcome = FleetOutcome(Verdict.NOTED)
        elif self._budget.available(now) and self._event_budget.available(req.ts):
            self._budget.consume(now)
            self._event_budget.consume(req.ts)
            outcome = FleetOutcome(Verdict.GRANTED)
        else:
            outcome = FleetOutcome(Verdict.BUDGET)
        self._outcomes[req.id] = outcome
        while len(self._outcomes) > self.remember:
            self._outcomes.popitem(last=False)
        return outcome

    def _start(self, req: FleetRequest, now: float) -> FleetOutcome:
        """A storm of the needs that count on ``req.action`` (``StormDetector.counted``)."""
        entities = self._needs.entities(req.action)
        started = _Storm(req.storm_id, now, self._stale, kind=req.kind, rule=req.rule)
        # the needs it counted are its first: each partition's judged in its own time
        placed = self._needs.placed(req.action)
        for where, at in placed:
            part, ts = where or (None, at)
            started.need(part, ts, at)
        self._active[req.action] = started
        for entity in entities:
            started.join(entity)
        started.count = len(placed)
        return FleetOutcome(Verdict.STORM_STARTED, req.storm_id, len(placed), tuple(entities))

    def _joined_late(self, req: FleetRequest, now: float) -> _Storm | None:
        """The storm a held entity's note names, when this log did not see it start: a process
        reads the ledger from its lookback on, and a storm lasts while held entities are
        unhealthy, so it may have started earlier. (A reader that saw it start knows it
        running or over: a note never revives a storm that ended or was released.)"""
        if req.storm_id in self._ended or req.storm_id in self._released_by:
            return None
        storm = self._active[req.action] = _Storm(req.storm_id, now, self._stale)
        return storm

    def end(self, end: StormEnd) -> None:
        """Close the storm ``end`` names (no-op when it already ended or another one runs)."""
        self.applied += 1
        self._note_resolved(end.storm_id)
        self._advance(end.ts)
        storm = self._active.get(end.action)
        if storm is not None and storm.id == end.storm_id:
            self._close(end.action, storm)
            if end.released:
                # an operator released the hold: the action runs at budget rate until the
                # needs stop for a storm window, instead of storming again at once
                self._released[end.action] = self.clock
                self._released_by[storm.id] = end.by or "an operator"
                while len(self._released_by) > self.cap:
                    self._released_by.popitem(last=False)

    def outcome(self, request_id: str) -> FleetOutcome | None:
        return self._outcomes.get(request_id)

    def progress(self, report: FleetProgress) -> None:
        """Input partition ``report.partition`` is processed to ``report.ts`` (last one wins:
        a partition's new owner may restart it from an older snapshot)."""
        self.applied += 1
        self._partitions = max(self._partitions, report.of)
        self._progress[report.partition] = report.ts
        if report.at is None:  # an older version's record: taken at its word
            self._reported.pop(report.partition, None)
        else:
            self._reported[report.partition] = (report.at, self.clock)
            self._wall = max(self._wall, report.at)
        self._advance(-math.inf)

    def fleet_time(self, ts: float, local: Mapping[int, float] | None = None, of: int = 0) -> float:
        """``ts``, but no later than the event time every input partition has reached once
        partitions report their progress (a partition that never reported: not reached).

        ``local``: what a process knows of its own partitions now, ahead of its reports on the
        log (``of``: the partition count it knows)."""
        return self._time_of(ts, local or {}, max(self._partitions, of))

    def _time_of(
        self, ts: float, local: Mapping[int, float], count: int, skip: Mapping[int, object] = _NONE
    ) -> float:
        """``fleet_time`` over the partitions not in ``skip``."""
        if not count:
            return -math.inf if self.wait_for_progress else ts
        reached = [
            local[p] if p in local else self._reached(p) for p in range(count) if p not in skip
        ]
        return min(ts, *reached)

    def _reached(self, partition: int) -> float:
        """How far ``partition`` is processed as the log says: as of the log's time when it
        last reported, once its reports stopped (``SILENT_SECONDS``)."""
        ts = self._progress.get(partition, -math.inf)
        seen = self._reported.get(partition)
        if seen is not None and self._wall - seen[0] > SILENT_SECONDS:
            return min(ts, seen[1])
        return ts

    def _advance(self, ts: float) -> float:
        self.clock = max(self.clock, ts)
        now = self.clock
        # a storm ends only once every partition is past its window: a lagging one may still
        # hold entities that need the action (it would otherwise start a second storm)
        over = self.fleet_time(now)
        for action, storm in list(self._active.items()):
            # a flagged entity whose clearing was lost must not hold the action for ever
            storm.drop_stale(over - self._stale)
            if not storm.flagged and self._over(storm, 1, now):
                self._close(action, storm)
        return now

    def _over(
        self,
        storm: _Storm,
        windows: int,
        now: float,
        local: Mapping[int, float] | None = None,
        of: int = 0,
    ) -> bool:
        """Whether ``storm`` had no need for ``windows`` storm windows at the log's time
        ``now``: each partition it had needs from in its own event time (``_quiet``), and
        every other partition past its last need on the log's time, as a lagging one may
        still read needs (it would otherwise start a second storm)."""
        span = windows * self.storm_window_seconds
        local = local or {}
        count = max(self._partitions, of)
        if self._time_of(now, local, count) - storm.unplaced_to() < span:
            return False
        # (partitions it had no needs from, if any)
        if (
            len(storm.parts) < max(count, 1)
            and self._time_of(now, local, count, storm.parts) - storm.last_need < span
        ):
            return False
        return all(
            self._quiet(p, own, at, now, local, count) >= span
            for p, (own, at) in storm.parts.items()
        )

    def _quiet(
        self, part: int, own: float, at: float, now: float, local: Mapping[int, float], count: int
    ) -> float:
        """How long ``part`` had no need since its last one (at its own event time ``own``,
        the log's time ``at``): as far as its progress passed ``own``; one live (nothing left
        to read) moves on at the log's pace, as of the log's time it last reported once its
        reports stopped (``SILENT_SECONDS``)."""
        if not count:
            return -math.inf if self.wait_for_progress else now - at
        reached = local[part] if part in local else self._progress.get(part, -math.inf)
        if reached < math.inf:
            return reached - own
        seen = None if part in local else self._reported.get(part)
        if seen is not None and self._wall - seen[0] > SILENT_SECONDS:
            return seen[1] - at
        return now - at

    def _close(self, action: RepairAction, storm: _Storm) -> None:
        del self._active[action]
        self._ended[storm.id] = storm.needed_to()
        while len(self._ended) > self.cap:
            self._ended.popitem(last=False)
        if storm.rule and storm.id not in self._resolved:
            self._unresolved[storm.id] = (action, storm)
            while len(self._unresolved) > self.cap:
                self._unresolved.popitem(last=False)

    def _note_resolved(self, storm_id: str) -> None:
        self._unresolved.pop(storm_id, None)
        self._resolved[storm_id] = None
        while len(self._resolved) > self.cap:
            self._resolved.popitem(last=False)

    def orphaned_storms(self, ts: float) -> list[OrphanStorm]:
        """Storms over for one storm window more at ``ts`` (or the log's time) that nobody
        resolved: their escalating engine, which resolves a storm as soon as it is over, has
        not run since (its partition moved to a process that gets no data for it: a restored
        partition is ticked only once a record arrives). Each is returned once per process:
        the caller resolves it and logs its end.
        (Which process takes it is not part of any verdict: those stay a function of the log.)"""
        now = max(ts, self.clock)
        due = [(a, s) for a, s in self._active.items() if not s.flagged]
        due += list(self._unresolved.values())
        out = []
        for action, s in due:
            last = s.needed_to()
            if s.rule and s.id not in self._resolved and self._over(s, 2, now):
                self._note_resolved(s.id)
                out.append(OrphanStorm(s.id, action, s.kind, s.rule, s.count, (*s.entities,), last))
        return out

    # -- views -----------------------------------------------------------------------------

    def active_storm(self, action: RepairAction, ts: float) -> str | None:
        """The id of the storm on ``action`` still running at ``ts``, if any."""
        storm = self._active.get(action)
        if storm is None or self._over(storm, 1, max(ts, self.clock)):
            return None
        return storm.id

    def storm_over(
        self, storm_id: str, ts: float, local: Mapping[int, float] | None = None, of: int = 0
    ) -> bool | None:
        """Whether the storm ``storm_id`` is over at ``ts`` (or the log's time) as the log
        says, each partition judged in its own event time (None: the log does not know it).
        ``local``, ``of``: as for ``fleet_time``."""
        for storm in self._active.values():
            if storm.id == storm_id:
                # (a flagged entity holds it until its need goes stale: ``unplaced_to``)
                return self._over(storm, 1, max(ts, self.clock), local, of)
        return True if storm_id in self._ended else None

    def storm_last_need(self, storm_id: str) -> float | None:
        """When the storm ``storm_id`` last saw a need (running or over; an entity still
        flagged needs it until its need goes stale, ``STALE_WINDOWS``); None if unknown."""
        for storm in self._active.values():
            if storm.id == storm_id:
                # a held entity still flagged needs it until its need goes stale
                return storm.needed_to()
        return self._ended.get(storm_id)

    def storm_entities(self, storm_id: str) -> tuple[int, tuple[str, ...]]:
        """How many entities the running storm ``storm_id`` holds, and the first of them."""
        for storm in self._active.values():
            if storm.id == storm_id:
                return storm.count, tuple(storm.entities)
        return 0, ()

    def storm_released(self, storm_id: str) -> str | None:
        """Who released the storm ``storm_id`` by an end record (``None``: not released)."""
        return self._released_by.get(storm_id)

    def active_storms(self) -> list[ActiveStorm]:
        """The storms running as of the log read so far (the operator console lists them)."""
        return [
            ActiveStorm(s.id, action, s.count, tuple(s.entities), s.last_need, len(s.flagged))
            for action, s in self._active.items()
            if self.active_storm(action, self.clock) == s.id
        ]

    def budget_used(self, ts: float) -> int:
        """Repairs in the window ending at ``ts`` (or the log's time), on whichever reading of
        the time holds more."""
        if self.clock == -math.inf:
            return 0
        return max(self._budget.used(max(ts, self.clock)), self._event_budget.used(ts))


class LocalFleet:
    """A gate whose log is the call order of this process (replays, tests, a single process)."""

    def __init__(self, arbiter: FleetArbiter) -> None:
        self.arbiter = arbiter

    def request(self, req: FleetRequest) -> FleetOutcome:
        return self.arbiter.apply(req)

    def note(self, req: FleetRequest) -> None:
        self.arbiter.apply(req)

    def end_storm(self, end: StormEnd) -> None:
        self.arbiter.end(end)

    def active_storm(self, action: RepairAction, ts: float) -> str | None:
        return self.arbiter.active_storm(action, ts)

    def storm_last_need(self, storm_id: str) -> float | None:
        return self.arbiter.storm_last_need(storm_id)

    def storm_entities(self, storm_id: str) -> tuple[int, tuple[str, ...]]:
        return self.arbiter.storm_entities(storm_id)

    def storm_released(self, storm_id: str) -> str | None:
        return self.arbiter.storm_released(storm_id)

    def progress(self, report: FleetProgress) -> None:
        self.arbiter.progress(report)

    def fleet_time(self, ts: float) -> float:
        return self.arbiter.fleet_time(ts)

    def storm_over(self, storm_id: str, ts: float) -> bool | None:
        return self.arbiter.storm_over(storm_id, ts)

    def active_storms(self) -> list[ActiveStorm]:
        return self.arbiter.active_storms()

    def orphaned_storms(self, ts: float) -> list[OrphanStorm]:
        return self.arbiter.orphaned_storms(ts)

    def budget_used(self, ts: float) -> int:
        return self.arbiter.budget_used(ts)
