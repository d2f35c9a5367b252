"""The fleet gate of a deployment: a one-partition Kafka topic every process reads and writes.

Every partition engine of every process asks this gate before a repair (see
``selfheal.pipeline.core.fleet``). A request is produced to partition 0 of the ledger topic and
answered once
this process has read the log up to it: all processes apply the same records in the same order
to a ``FleetArbiter``, so they agree on every verdict, and the budget and the storm window are
fleet-wide however the input partitions are spread.

The policy engine is synchronous, so the Kafka clients run on a private event loop in a
background thread and ``request`` blocks its caller until the verdict is known (a round trip
on the broker; requests are rare: only repairs that passed dedup and, outside a known storm,
the checks before the budget). When the ledger cannot be reached in time ``request`` raises
``BrokerUnavailable`` (retriable): the runner restarts its session from the last snapshot and
the redelivered requests, idempotent on their ids, get the verdicts already logged.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from selfheal.connectors.errors import BrokerUnavailable
from selfheal.connectors.kafka_log import KafkaLog
from selfheal.pipeline.kernel.protocols import FleetLog
from selfheal.pipeline.kernel.types import (
    FleetOutcome,
    FleetProgress,
    FleetRequest,
    RepairAction,
    StormEnd,
)


class KafkaFleet(KafkaLog):
    """``FleetGate`` over the ledger topic ``topic`` (partition 0), records of ``group`` only.

    On start the reader seeks to the records of the last ``lookback_seconds`` (wall clock, by
    record timestamp) and catches up to the end before the gate is used. Budgets and storms are
    judged in event time, so a process about to decide at older event times (a backlog after a
    long outage) reads the ledger again from earlier with ``read_back``: a new arbiter from
    ``fresh`` applies the log from there (verdicts are a function of the log before them).
    """

    title = "fleet ledger"
    where = "fleet"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        arbiter: FleetLog,
        *,
        client: dict[str, Any] | None = None,
        timeout_seconds: float = 10.0,
        lookback_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
        observe: Callable[[float], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
        fresh: Callable[[], FleetLog] | None = None,
    ) -> None:
        super().__init__(
            bootstrap,
            topic,
            group,
            client=client,
            timeout_seconds=timeout_seconds,
            lookback_seconds=lookback_seconds,
            clock=clock,
            observe=observe,
            on_error=on_error,
        )
        self.arbiter = arbiter
        #: builds an empty arbiter like ``arbiter`` (``read_back``)
        self.fresh = fresh
        #: this process's partitions: how far processed (``local_progress``)
        self._local: dict[int, float] = {}
        self._local_of = 0

    # -- FleetGate ---------------------------------------------------------------------------

    def request(self, req: FleetRequest) -> FleetOutcome:
        """Log ``req`` and block until this process has read the log up to it."""
        return self._wait(self._request(req), "answer")

    def note(self, req: FleetRequest) -> None:
        self._fire(encode_request(req, self.group))

    def end_storm(self, end: StormEnd) -> None:
        self._fire(encode_end(end, self.group))

    def active_storm(self, action: RepairAction, ts: float) -> str | None:
        with self._lock:
            return self.arbiter.active_storm(action, ts)

    def storm_last_need(self, storm_id: str) -> float | None:
        with self._lock:
            return self.arbiter.storm_last_need(storm_id)

    def storm_entities(self, storm_id: str) -> tuple[int, tuple[str, ...]]:
        with self._lock:
            return self.arbiter.storm_entities(storm_id)

    def storm_released(self, storm_id: str) -> str | None:
        with self._lock:
            return self.arbiter.storm_released(storm_id)

    def fleet_time(self, ts: float) -> float:
        with self._lock:
            return self.arbiter.fleet_time(ts, self._local, self._local_of)

    def storm_over(self, storm_id: str, ts: float) -> bool | None:
        """``FleetArbiter.storm_over``, with this process's own partitions known at once."""
        with self._lock:
            judge = getattr(self.arbiter, "storm_over", None)
            return None if judge is None else judge(storm_id, ts, self._local, self._local_of)

    def progress(self, report: FleetProgress) -> None:
        """Log how far a partition is processed (without waiting)."""
        self._fire(encode_progress(report, self.group))

    def local_progress(self, reached: dict[int, float], of: int) -> None:
        """How far this process's own partitions are processed, now (``fleet_time`` uses it
        ahead of the log, where ``progress`` records reach the other processes)."""
        with self._lock:
            self._local, self._local_of = dict(reached), of

    def active_storms(self) -> list[Any]:
        """The arbiter's running storms (``FleetArbiter.active_storms``), read under the lock."""
        with self._lock:
            view = getattr(self.arbiter, "active_storms", None)
            return [] if view is None else list(view())

    def orphaned_storms(self, ts: float) -> list[Any]:
        """Storms over that nobody resolved (``FleetArbiter.orphaned_storms``), once each."""
        with self._lock:
            view = getattr(self.arbiter, "orphaned_storms", None)
            return [] if view is None else list(view(ts))

    async def release(self, end: StormEnd) -> None:
        """Log an operator's release of a storm and wait until this process has read it back
        (every process applies it at the same place in the log; this one knows it now)."""
        fut = self._submit(self._logged(encode_end(end, self.group)))
        try:
            await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout_seconds)
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"fleet ledger {self.topic} did not log the release in {self.timeout_seconds:g}s"
            ) from exc
        except KafkaError as exc:
            raise BrokerUnavailable(f"fleet ledger {self.topic}: {exc!r}") from exc

    def budget_used(self, ts: float) -> int:
        with self._lock:
            return self.arbiter.budget_used(ts)

    async def read_back(self, since: float) -> None:
        if self.fresh is None and since < self._since:
            # refused before the reader stops: the gate keeps working on what it read
            raise NotImplementedError("a fleet ledger without ``fresh`` cannot read back")
        await super().read_back(since)

    # -- on the ledger loop ------------------------------------------------------------------

    def _reset(self) -> None:
        assert self.fresh is not None  # checked by ``read_back``
        self.arbiter = self.fresh()

    def _apply(self, raw: bytes | None) -> None:
        try:
            item = decode_record(raw or b"", self.group)
        except RecordError as exc:
            self._swallowed("fleet.record", exc)
            return
        if isinstance(item, FleetRequest):
            self.arbiter.apply(item)
        elif isinstance(item, StormEnd):
            self.arbiter.end(item)
        elif isinstance(item, FleetProgress):
            self.arbiter.progress(item)

    async def _request(self, req: FleetRequest) -> FleetOutcome:
        offset = await self._send(encode_request(req, self.group))
        await self._caught_up(offset)
        with self._lock:
            outcome = self.arbiter.outcome(req.id)
        if outcome is None:  # only if it was evicted already: the log is far ahead
            raise BrokerUnavailable(f"fleet ledger verdict for {req.id} no longer known")
        return outcome


#: wire format version of ledger records
RECORD_VERSION = 1


# -- ledger records ------------------------------------------------------------------------


class RecordError(ValueError):
    """A ledger record that is not ours or not readable (skipped by readers)."""


def _record(group: str, kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"v": RECORD_VERSION, "group": group, "type": kind, **fields})


def encode_request(req: FleetRequest, group: str) -> bytes:
    return _record(
        group,
        "request",
        id=req.id,
        ts=req.ts,
        entity=req.entity,
        action=req.action.value,
        claim=req.claim,
        storm_id=req.storm_id,
        held=req.held,
        incident=req.incident,
        # a need that may start a storm: its escalation's labels (``_record`` has a ``kind``)
        **{k: v for k, v in (("anomaly_kind", req.kind), ("rule", req.rule)) if v},
        # (an optional key: an older reader ignores it, a record without it is "unknown")
        **({} if req.partition is None else {"partition": req.partition}),
    )


def encode_end(end: StormEnd, group: str) -> bytes:
    return _record(
        group,
        "storm_end",
        storm_id=end.storm_id,
        action=end.action.value,
        ts=end.ts,
        released=end.released,
        by=end.by,
    )


def encode_progress(report: FleetProgress, group: str) -> bytes:
    # JSON has no infinity: "inf" (nothing left to read), "-inf" (nothing read yet)
    ts = str(report.ts) if math.isinf(report.ts) else report.ts
    at = {} if report.at is None else {"at": report.at}
    return _record(group, "progress", partition=report.partition, of=report.of, ts=ts, **at)


def decode_record(raw: bytes, group: str) -> FleetRequest | StormEnd | FleetProgress | None:
    """The record's request, storm end or progress; None when it belongs to another group."""
    try:
        rec = orjson.loads(raw)
        if not isinstance(rec, dict) or rec.get("v") != RECORD_VERSION:
            raise RecordError(f"unknown ledger record version {rec.get('v')!r}")
        if rec.get("group") != group:
            return None
        if rec["type"] == "progress":
            ts = float(rec["ts"])  # a number, or "inf" / "-inf"
            if math.isnan(ts):
                raise RecordError("progress without a time")
            at = None if rec.get("at") is None else float(rec["at"])
            return FleetProgress(int(rec["partition"]), int(rec["of"]), ts, at)
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
                held=None if rec.get("held") is None else bool(rec["held"]),
                incident=str(rec.get("incident", "")),
                kind=str(rec.get("anomaly_kind", "")),
                rule=str(rec.get("rule", "")),
                partition=None if rec.get("partition") is None else int(rec["partition"]),
            )
        if rec["type"] == "storm_end":
            return StormEnd(
                storm_id=str(rec["storm_id"]),
                action=action,
                ts=ts,
                released=bool(rec.get("released", False)),
                by=str(rec.get("by", "")),
            )
        raise RecordError(f"unknown ledger record type {rec['type']!r}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"unreadable ledger record: {exc}") from exc
