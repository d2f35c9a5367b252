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
from dataclasses import dataclass, field

from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.core.repair import MAX_STORM_ENTITIES, Budget, StormDetector
from selfheal.pipeline.kernel.types import (
    FleetOutcome,
    FleetRequest,
    RepairAction,
    StormEnd,
    Verdict,
)


@dataclass(slots=True)
class _Storm:
    id: str
    last_need: float
    #: the entities that needed the action while it lasted (the first MAX_STORM_ENTITIES)
    entities: dict[str, None] = field(default_factory=dict)
    count: int = 0
    #: held entities whose condition is still flagged: the storm lasts while there are any
    flagged: dict[str, None] = field(default_factory=dict)

    def join(self, entity: str) -> None:
        if entity not in self.entities:
            self.count += 1
            if len(self.entities) < MAX_STORM_ENTITIES:
                self.entities[entity] = None


class FleetArbiter:
    """Budget and storm verdicts, a pure function of the requests applied so far (in order).

    Time is the largest event time applied (records from many partitions arrive out of order),
    so windows slide monotonically and every reader of the same log computes the same verdicts.
    """

    def __init__(
        self,
        max_repairs: int,
        window_seconds: float,
        storm_threshold: int,
        storm_window_seconds: float,
        cap: int = 10_000,
        remember: int = 50_000,
    ) -> None:
        self.max_repairs = max_repairs
        self.window_seconds = window_seconds
        self.storm_threshold = storm_threshold
        self.storm_window_seconds = storm_window_seconds
        self.cap = cap
        self.remember = remember
        self.clock = -math.inf
        self._budget = Budget(max_repairs, window_seconds)
        self._needs = StormDetector(storm_threshold, storm_window_seconds, cap)
        self._active: dict[RepairAction, _Storm] = {}
        #: storm id -> its last need, for storms over (bounded)
        self._ended: OrderedDict[str, float] = OrderedDict()
        #: action -> last need since an operator released its storm: no new storm on it
        #: starts until its needs stopped for a storm window (the incident is over)
        self._released: dict[RepairAction, float] = {}
        #: request id -> verdict, so redelivered requests are answered alike (bounded)
        self._outcomes: OrderedDict[str, FleetOutcome] = OrderedDict()
        self.applied = 0

    @classmethod
    def from_policy(cls, policy: PolicyConfig) -> FleetArbiter:
        """Budget, storm threshold and window, and state bounds of ``policy``."""
        return cls(
            max_repairs=policy.budget.max_repairs,
            window_seconds=policy.budget.window_seconds,
            storm_threshold=policy.storm_threshold,
            storm_window_seconds=policy.storm_window_seconds,
            cap=policy.max_tracked_entities,
            remember=policy.max_seen_anomalies,
        )

    # -- the log ---------------------------------------------------------------------------

    def apply(self, req: FleetRequest) -> FleetOutcome:
        """The verdict on ``req`` (the first one, when its id was applied before)."""
        known = self._outcomes.get(req.id)
        if known is not None:
            return known
        self.applied += 1
        now = self._advance(req.ts)
        count = self._needs.record(req.action, req.entity, now)
        storm = self._active.get(req.action)
        released = self._released.get(req.action)
        if released is not None:
            if now - released >= self.storm_window_seconds:
                del self._released[req.action]
                released = None
            else:
                self._released[req.action] = now
        if storm is not None:
            storm.last_need = now
            storm.join(req.entity)
            if req.held is True:
                storm.flagged[req.entity] = None
            elif req.held is False:
                storm.flagged.pop(req.entity, None)
            outcome = FleetOutcome(Verdict.STORM, storm.id, storm.count, tuple(storm.entities))
        elif count > self.storm_threshold and req.storm_id and released is None:
            # (a note, storm_id "", never starts a storm: its proposer would not escalate)
            entities = self._needs.entities(req.action)
            started = self._active[req.action] = _Storm(req.storm_id, now)
            for entity in entities:
                started.join(entity)
            started.count = count
            outcome = FleetOutcome(Verdict.STORM_STARTED, req.storm_id, count, tuple(entities))
        elif not req.claim:
            outcome = FleetOutcome(Verdict.NOTED)
        elif self._budget.available(now):
            self._budget.consume(now)
            outcome = FleetOutcome(Verdict.GRANTED)
        else:
            outcome = FleetOutcome(Verdict.BUDGET)
        self._outcomes[req.id] = outcome
        while len(self._outcomes) > self.remember:
            self._outcomes.popitem(last=False)
        return outcome

    def end(self, end: StormEnd) -> None:
        """Close the storm ``end`` names (no-op when it already ended or another one runs)."""
        self.applied += 1
        self._advance(end.ts)
        storm = self._active.get(end.action)
        if storm is not None and storm.id == end.storm_id:
            self._close(end.action, storm)
            if end.released:
                # an operator released the hold: the action runs at budget rate until the
                # needs stop for a storm window, instead of storming again at once
                self._released[end.action] = self.clock

    def outcome(self, request_id: str) -> FleetOutcome | None:
        return self._outcomes.get(request_id)

    def _advance(self, ts: float) -> float:
        self.clock = max(self.clock, ts)
        now = self.clock
        for action, storm in list(self._active.items()):
            if not storm.flagged and now - storm.last_need >= self.storm_window_seconds:
                self._close(action, storm)
        return now

    def _close(self, action: RepairAction, storm: _Storm) -> None:
        del self._active[action]
        self._ended[storm.id] = storm.last_need
        while len(self._ended) > self.cap:
            self._ended.popitem(last=False)

    # -- views -----------------------------------------------------------------------------

    def active_storm(self, action: RepairAction, ts: float) -> str | None:
        """The id of the storm on ``action`` still running at ``ts``, if any."""
        storm = self._active.get(action)
        if storm is None:
            return None
        if not storm.flagged and max(ts, self.clock) - storm.last_need >= self.storm_window_seconds:
            return None
        return storm.id

    def storm_last_need(self, storm_id: str) -> float | None:
        """When the storm ``storm_id`` last saw a need (running or over); None if unknown."""
        for storm in self._active.values():
            if storm.id == storm_id:
                # a held entity still flagged needs it now: the storm is not over
                return math.inf if storm.flagged else storm.last_need
        return self._ended.get(storm_id)

    def storm_entities(self, storm_id: str) -> tuple[int, tuple[str, ...]]:
        """How many entities the running storm ``storm_id`` holds, and the first of them."""
        for storm in self._active.values():
            if storm.id == storm_id:
                return storm.count, tuple(storm.entities)
        return 0, ()

    def budget_used(self, ts: float) -> int:
        return self._budget.used(max(ts, self.clock)) if self.clock > -math.inf else 0


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

    def budget_used(self, ts: float) -> int:
        return self.arbiter.budget_used(ts)
