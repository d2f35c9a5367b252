"""A one-partition Kafka topic that every process of a deployment reads and writes in order.

The shared mechanism of the fleet ledger (``selfheal.connectors.fleet_ledger``) and the
incident log (``selfheal.connectors.incident_log``): the callers are synchronous engines, so
the Kafka clients run on a private event loop in a background thread; one reader applies every
record of partition 0 in log order (``_apply``, under ``_lock``), and a write can wait until
this process has read the log up to it, when its outcome is known. Records are keyed by the
consumer group, so deployments sharing a topic keep apart.

On start the reader seeks to the records of the last ``lookback_seconds`` (wall clock, by
record timestamp) and catches up to the end before the log is used. ``read_back`` reads it
again from an earlier time, into fresh state, when a caller needs older records after all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from selfheal.connectors.errors import BrokerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class KafkaLog:
    """Partition 0 of ``topic``, records of ``group``; subclasses say what a record does."""

    #: names the log in messages, and (``where``) in counted errors
    title = "log"
    where = "log"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
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
        self.client = client or {}
        self.timeout_seconds = timeout_seconds
        self.lookback_seconds = lookback_seconds
        self.clock = clock
        #: called with each awaited write's wait in seconds (a Prometheus histogram's observe)
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
        #: offset of the next record to read
        self._next = 0
        #: wall time (seconds) the reader started reading from
        self._since = float("inf")

    def _apply(self, raw: bytes | None) -> None:
        """Apply one record (called under ``_lock``, in log order)."""
        raise NotImplementedError

    def _reset(self) -> None:
        """Forget every record applied (called under ``_lock``, before ``read_back`` reads the
        log again from an earlier offset)."""
        raise NotImplementedError(f"{self.title} cannot read back")

    # -- lifecycle (awaited on the caller's loop) -------------------------------------------

    async def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"selfheal-{self.where}-{self.group}", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(self._submit(self._start())), timeout=3 * self.timeout_seconds
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.stop()
            raise BrokerUnavailable(f"{self.title} {self.topic}: {exc!r}") from exc

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._submit(self._stop())), timeout=10)
        except Exception as exc:
            self._swallowed(f"{self.where}.stop", exc)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    async def read_back(self, since: float) -> None:
        """Read the log again from wall time ``since`` (seconds) when the reader started
        later: the state is rebuilt from there, in log order (``_reset``). Never reads less
        than it did. Raises ``BrokerUnavailable`` when the broker does not answer in time."""
        if since >= self._since:
            return
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(self._submit(self._reread(since))),
                timeout=3 * self.timeout_seconds,
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"{self.title} {self.topic} read-back: {exc!r}") from exc

    def _swallowed(self, where: str, exc: BaseException) -> None:
        log.warning("%s %s: %s: %s", self.title, where, type(exc).__name__, exc)
        if self.on_error is not None:
            self.on_error(where, exc)

    # -- from the caller's thread ------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._loop is None:
            coro.close()
            raise BrokerUnavailable(f"{self.title} is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _wait(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        """Run ``coro`` on the log's loop and block for its result (``BrokerUnavailable``,
        retriable, when the log does not answer in time or the broker fails)."""
        started = time.monotonic()
        fut = self._submit(coro)
        try:
            result = fut.result(self.timeout_seconds)
        except concurrent.futures.TimeoutError as exc:
            fut.cancel()
            raise BrokerUnavailable(
                f"{self.title} {self.topic} did not {what} in {self.timeout_seconds:g}s"
            ) from exc
        except KafkaError as exc:
            raise BrokerUnavailable(f"{self.title} {self.topic}: {exc!r}") from exc
        if self.observe is not None:
            self.observe(time.monotonic() - started)
        return result

    def _fire(self, value: bytes) -> None:
        """Log a record without waiting (errors are counted, not raised)."""
        fut = self._submit(self._send(value))

        def done(f: concurrent.futures.Future[int]) -> None:
            if f.cancelled():
                self._swallowed(f"{self.where}.write", asyncio.CancelledError())
            elif f.exception() is not None:
                self._swallowed(f"{self.where}.write", f.exception() or Exception())

        fut.add_done_callback(done)

    # -- on the log's loop -------------------------------------------------------------------

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
            # writers wait on this fetch. Kafka answers a fetch as soon as a record is there;
            # the embedded Tansu holds it for the whole max wait (median verdict ~6 ms at 20 ms,
            # ~1.4 ms at 1 ms but 4 % of a core spent polling an idle ledger at 5 ms)
            fetch_max_wait_ms=20,
            **self.client,
        )
        await self._consumer.start()
        tp = TopicPartition(self.topic, 0)
        self._consumer.assign([tp])
        await self._read_from(tp, self.clock() - self.lookback_seconds)

    async def _read_from(self, tp: TopicPartition, since: float) -> None:
        """Seek to the records written since wall time ``since``, start the reader and catch
        up to the end."""
        assert self._consumer is not None
        self._since = since
        try:
            found = await self._consumer.offsets_for_times({tp: int(since * 1000)})
            at = found.get(tp)
            if at is None:
                await self._consumer.seek_to_end(tp)
            else:
                self._consumer.seek(tp, at.offset)
        except KafkaError as exc:  # a broker without timestamp lookups: read it all
            log.info("%s: no offsets_for_times (%r); reading from the start", self.title, exc)
            await self._consumer.seek_to_beginning(tp)
        self._next = await self._consumer.position(tp)
        end = (await self._consumer.end_offsets([tp]))[tp]
        self._reader = asyncio.get_running_loop().create_task(self._read(tp))
        await self._caught_up(end - 1)

    async def _reread(self, since: float) -> None:
        if since >= self._since:  # another read-back went as far meanwhile
            return
        await self._stop_reader()
        with self._lock:
            self._reset()
        await self._read_from(TopicPartition(self.topic, 0), since)

    async def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass  # what cancel() asked for
            except Exception as exc:
                self._swallowed(f"{self.where}.reader", exc)
            self._reader = None

    async def _stop(self) -> None:
        await self._stop_reader()
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:
                    self._swallowed(f"{self.where}.stop", exc)

    async def _read(self, tp: TopicPartition) -> None:
        assert self._consumer is not None and self._progress is not None
        while True:
            try:
                batch = await self._consumer.getmany(tp, timeout_ms=200)
            except KafkaError as exc:
                self._swallowed(f"{self.where}.read", exc)
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
