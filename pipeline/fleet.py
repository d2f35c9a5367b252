"""Fleet-wide repair safety: one repair budget and one storm detector for the whole deployment.

Per-entity policy state (ladder, cooldown, dedup, verification) lives with the entity's input
partition. The budget and the storm window are about the whole fleet, so they cannot: every
partition engine asks one ``FleetGate`` instead. A gate is an ordered log of ``FleetRequest``s
(one per repair an entity needs) fed through a ``FleetArbiter``; the verdict of each request is
a pure function of the log before it, so every process reading the same log agrees on it.

* ``LocalFleet``: the log is this process's call order (replay, tests, one process).
* ``connectors.fleet_ledger.KafkaFleet``: the log is a one-partition Kafka topic shared by all
  processes of a consumer group; a request is produced, then answered once read back.

Requests are idempotent on their id (the decision id), so at-least-once redelivery after a
restart gets the verdict the first delivery got.

>>> from pipeline.types import RepairAction
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

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import orjson

from pipeline.policy_config import PolicyConfig
from pipeline.repair import Budget, StormDetector
from pipeline.types import RepairAction

#: wire format version of ledger records
RECORD_VERSION = 1


class Verdict(enum.Enum):
    GRANTED = "granted"  # execute: a budget slot is taken
    BUDGET = "budget"  # the fleet budget is exhausted
    STORM = "storm"  # an active storm covers this need
    STORM_STARTED = "storm_started"  # this need started a storm: its proposer escalates once
    NOTED = "noted"  # counted for storm detection; no budget asked (cooldown, approval)


@dataclass(frozen=True, slots=True)
class FleetRequest:
    """One entity needing one repair action at event time ``ts``."""

    id: str
    ts: float
    entity: str
    action: RepairAction
    #: asks for a budget slot (False when the entity is cooling down or awaits approval)
    claim: bool
    #: the id the storm escalation gets if this request starts a storm ("" for a note: its
    #: proposer already saw a storm, so it cannot start one)
    storm_id: str


@dataclass(frozen=True, slots=True)
class FleetOutcome:
    verdict: Verdict
    storm_id: str = ""
    #: distinct entities needing the action in the storm window (when a storm started)
    count: int = 0
    entities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StormEnd:
    """The proposer of a storm resolved it: later needs count towards a new storm."""

    storm_id: str
    action: RepairAction
    ts: float


@dataclass(slots=True)
class _Storm:
    id: str
    last_need: float


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
        if storm is not None:
            storm.last_need = now
            outcome = FleetOutcome(Verdict.STORM, storm.id)
        elif count > self.storm_threshold and req.storm_id:
            # (a note, storm_id "", never starts a storm: its proposer would not escalate)
            self._active[req.action] = _Storm(req.storm_id, now)
            outcome = FleetOutcome(
                Verdict.STORM_STARTED,
                req.storm_id,
                count,
                tuple(self._needs.entities(req.action)),
            )
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

    def outcome(self, request_id: str) -> FleetOutcome | None:
        return self._outcomes.get(request_id)

    def _advance(self, ts: float) -> float:
        self.clock = max(self.clock, ts)
        now = self.clock
        for action, storm in list(self._active.items()):
            if now - storm.last_need >= self.storm_window_seconds:
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
        if storm is None or max(ts, self.clock) - storm.last_need >= self.storm_window_seconds:
            return None
        return storm.id

    def storm_last_need(self, storm_id: str) -> float | None:
        """When the storm ``storm_id`` last saw a need (running or over); None if unknown."""
        for storm in self._active.values():
            if storm.id == storm_id:
                return storm.last_need
        return self._ended.get(storm_id)

    def budget_used(self, ts: float) -> int:
        return self._budget.used(max(ts, self.clock)) if self.clock > -math.inf else 0


class FleetGate(Protocol):
    """What a policy engine asks about the fleet; implementations share one ordered log."""

    def request(self, req: FleetRequest) -> FleetOutcome:
        """Append ``req`` to the log and return its verdict (may block; raises when the log
        cannot be reached, with a ``retriable`` flag)."""
        ...

    def note(self, req: FleetRequest) -> None:
        """Append ``req`` without waiting for its verdict (needs covered by a known storm)."""
        ...

    def end_storm(self, end: StormEnd) -> None: ...

    def active_storm(self, action: RepairAction, ts: float) -> str | None: ...

    def storm_last_need(self, storm_id: str) -> float | None: ...

    def budget_used(self, ts: float) -> int: ...


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

    def budget_used(self, ts: float) -> int:
        return self.arbiter.budget_used(ts)


# -- ledger records ------------------------------------------------------------------------


class RecordError(ValueError):
    """A ledger record that is not ours or not readable (skipped by readers)."""


def encode_request(req: FleetRequest, group: str) -> bytes:
    return orjson.dumps(
        {
            "v": RECORD_VERSION,
            "group": group,
            "type": "request",
            "id": req.id,
            "ts": req.ts,
            "entity": req.entity,
            "action": req.action.value,
            "claim": req.claim,
            "storm_id": req.storm_id,
        }
    )


def encode_end(end: StormEnd, group: str) -> bytes:
    return orjson.dumps(
        {
            "v": RECORD_VERSION,
            "group": group,
            "type": "storm_end",
            "storm_id": end.storm_id,
            "action": end.action.value,
            "ts": end.ts,
        }
    )


def decode_record(raw: bytes, group: str) -> FleetRequest | StormEnd | None:
    """The record's request or storm end; None when it belongs to another group."""
    try:
        rec = orjson.loads(raw)
        if not isinstance(rec, dict) or rec.get("v") != RECORD_VERSION:
            raise RecordError(f"unknown ledger record version {rec.get('v')!r}")
        if rec.get("group") != group:
            return None
        action = RepairAction(rec["action"])
        ts = float(rec["ts"])
        if rec["type"] == "request":
            return FleetRequest(
                id=str(rec["id"]),
                ts=ts,
                entity=str(rec["entity"]),
                action=action,
                claim=bool(rec["claim"]),
                storm_id=str(rec["storm_id"]),
            )
        if rec["type"] == "storm_end":
            return StormEnd(storm_id=str(rec["storm_id"]), action=action, ts=ts)
        raise RecordError(f"unknown ledger record type {rec['type']!r}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"unreadable ledger record: {exc}") from exc
