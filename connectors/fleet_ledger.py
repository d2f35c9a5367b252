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
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from selfheal.connectors.errors import BrokerUnavailable
from selfheal.pipeline.kernel.protocols import FleetLog
from selfheal.pipeline.kernel.types import (
    FleetOutcome,
    FleetProgress,
    FleetRequest,
    RepairAction,
    StormEnd,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class KafkaFleet:
    """``FleetGate`` over the ledger topic ``topic`` (partition 0), records of ``group`` only.

    On start the reader seeks to the records of the last ``lookback_seconds`` (wall clock, by
    record timestamp) and catches up to the end before the gate is used.
    """

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
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.arbiter = arbiter
        self.client = client or {}
        self.timeout_seconds = timeout_seconds
        self.lookback_seconds = lookback_seconds
        self.clock = clock
        #: called with each request's wait in seconds (a Prometheus histogram's ``observe``)
        self.observe = observe
        #: told of every exception handled by carrying on (a counter; it is also logged)
        self.on_error = on_error
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._progress: asyncio.Condition | None = None
        #: offset of the next ledger record to read
        self._next = 0
        #: this process's partitions: how far processed (``local_progress``)
        self._local: dict[int, float] = {}
        self._local_of = 0

    # -- lifecycle (awaited on the caller's loop) -------------------------------------------

    async def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"selfheal-fleet-{self.group}", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(self._submit(self._start())), timeout=3 * self.timeout_seconds
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.stop()
            raise BrokerUnavailable(f"fleet ledger {self.topic}: {exc!r}") from exc

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._submit(self._stop())), timeout=10)
        except Exception as exc:
            self._swallowed("fleet.stop", exc)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def _swallowed(self, where: str, exc: BaseException) -> None:
        log.warning("fleet ledger %s: %s: %s", where, type(exc).__name__, exc)
        if self.on_error is not None:
            self.on_error(where, exc)

    # -- FleetGate ---------------------------------------------------------------------------

    def request(self, req: FleetRequest) -> FleetOutcome:
        """Log ``req`` and block until this process has read the log up to it."""
        started = time.monotonic()
        fut = self._submit(self._request(req))
        try:
            outcome = fut.result(self.timeout_seconds)
            if self.observe is not None:
                self.observe(time.monotonic() - started)
            return outcome
        except concurrent.futures.TimeoutError as exc:
            fut.cancel()
            raise BrokerUnavailable(
                f"fleet ledger {self.topic} did not answer in {self.timeout_seconds:g}s"
            ) from exc
        except KafkaError as exc:
            raise BrokerUnavailable(f"fleet ledger {self.topic}: {exc!r}") from exc

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

    # -- on the ledger loop ------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._loop is None:
            coro.close()
            raise BrokerUnavailable("fleet ledger is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _fire(self, value: bytes) -> None:
        """Log a record without waiting (a lost one only shortens a storm's tail)."""
        fut = self._submit(self._send(value))

        def done(f: concurrent.futures.Future[int]) -> None:
            if f.cancelled():
                self._swallowed("fleet.write", asyncio.CancelledError())
            elif f.exception() is not None:
                self._swallowed("fleet.write", f.exception() or Exception())

        fut.add_done_callback(done)

    async def _start(self) -> None:
        self._progress = asyncio.Condition()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=0,
            **self.client,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            # verdicts wait on this fetch. Kafka answers a fetch as soon as a record is there;
            # the embedded Tansu holds it for the whole max wait (median verdict ~6 ms at 20 ms,
            # ~1.4 ms at 1 ms but 4 % of a core spent polling an idle ledger at 5 ms)
            fetch_max_wait_ms=20,
            **self.client,
        )
        await self._consumer.start()
        tp = TopicPartition(self.topic, 0)
        self._consumer.assign([tp])
        since = int((self.clock() - self.lookback_seconds) * 1000)
        try:
            found = await self._consumer.offsets_for_times({tp: since})
            at = found.get(tp)
            if at is None:
                await self._consumer.seek_to_end(tp)
            else:
                self._consumer.seek(tp, at.offset)
        except KafkaError as exc:  # a broker without timestamp lookups: read it all
            log.info("fleet ledger: no offsets_for_times (%r); reading from the start", exc)
            await self._consumer.seek_to_beginning(tp)
        self._next = await self._consumer.position(tp)
        end = (await self._consumer.end_offsets([tp]))[tp]
        self._reader = asyncio.get_running_loop().create_task(self._read(tp))
        await self._caught_up(end - 1)

    async def _stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass  # what cancel() asked for
            except Exception as exc:
                self._swallowed("fleet.reader", exc)
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:
                    self._swallowed("fleet.stop", exc)

    async def _read(self, tp: TopicPartition) -> None:
        assert self._consumer is not None and self._progress is not None
        while True:
            try:
                batch = await self._consumer.getmany(tp, timeout_ms=200)
            except KafkaError as exc:
                self._swallowed("fleet.read", exc)
                await asyncio.sleep(0.5)
                continue
            records = batch.get(tp, [])
            if not records:
                continue
            with self._lock:
                for rec in records:
                    self._apply(rec.value)
            self._next = records[-1].offset + 1
            async with self._progress:
                self._progress.notify_all()

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

    async def _caught_up(self, offset: int) -> None:
        assert self._progress is not None
        async with self._progress:
            await self._progress.wait_for(lambda: self._next > offset)

    async def _send(self, value: bytes) -> int:
        assert self._producer is not None
        md = await self._producer.send_and_wait(
            self.topic, value, key=self.group.encode(), partition=0
        )
        return int(md.offset)

    async def _logged(self, value: bytes) -> None:
        await self._caught_up(await self._send(value))

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
    return _record(group, "progress", partition=report.partition, of=report.of, ts=ts)


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
            return FleetProgress(int(rec["partition"]), int(rec["of"]), ts)
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
