"""A reader that follows a whole topic (every partition, no consumer group) from recent history.

The control, approvals and repair-outcome topics are small logs every process must see in full:
a restarted process rebuilds its view (paused or not, who approved what, which decisions already
ran) by reading the last ``lookback_seconds`` of them, then keeps following. ``sync`` waits
until everything published before the call has been handed to ``on_record``, so a caller can
consult the view knowing it is not behind the log (the executor stage does, before it acts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from selfheal.connectors.errors import BrokerUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TailRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


class TopicTail:
    """Follows ``topic`` from ``now - lookback_seconds``; ``on_record`` runs on the loop."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_record: Callable[[TailRecord], None],
        *,
        client: dict[str, Any] | None = None,
        lookback_seconds: float = 86_400.0,
        fetch_max_wait_ms: int = 50,
        on_error: Callable[[str, BaseException], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.on_record = on_record
        self.lookback_seconds = lookback_seconds
        self.on_error = on_error
        self.clock = clock
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
            **(client or {}),
        )
        self._tps: list[TopicPartition] = []
        self._next: dict[TopicPartition, int] = {}
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Seek to the lookback and read up to the current end before returning."""
        try:
            await asyncio.wait_for(self._start(), timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.stop()
            raise BrokerUnavailable(f"cannot follow {self.topic}: {exc!r}") from exc

    async def _start(self) -> None:
        c = self._consumer
        await c.start()
        parts = c.partitions_for_topic(self.topic)
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(self.topic) or {0}
        self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        c.assign(self._tps)
        since = int((self.clock() - self.lookback_seconds) * 1000)
        try:
            found = await c.offsets_for_times(dict.fromkeys(self._tps, since))
            for tp in self._tps:
                at = found.get(tp)
                # "no such record": None from Kafka, offset 0 with timestamp -1 from Tansu
                if at is None or at.timestamp < 0:
                    await c.seek_to_end(tp)
                else:
                    c.seek(tp, at.offset)
        except KafkaError as exc:  # a broker without timestamp lookups: read it all
            log.info("%s: no offsets_for_times (%r); reading from the start", self.topic, exc)
            await c.seek_to_beginning(*self._tps)
        for tp in self._tps:
            self._next[tp] = await c.position(tp)
        self._task = asyncio.get_running_loop().create_task(self._read())
        await self.sync()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._consumer.stop()

    async def sync(self, timeout: float = 30.0) -> None:
        """Return once every record published before this call went through ``on_record``."""
        try:
            ends = await self._consumer.end_offsets(self._tps)
        except KafkaError as exc:
            raise BrokerUnavailable(f"{self.topic}: cannot list offsets: {exc!r}") from exc

        def done() -> bool:
            return all(self._next.get(tp, 0) >= end for tp, end in ends.items())

        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(done), timeout)

    async def _read(self) -> None:
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                self._report("read", exc)
                await asyncio.sleep(0.5)
                continue
            for tp, msgs in batch.items():
                for m in msgs:
                    rec = TailRecord(
                        tp.topic, tp.partition, m.offset, m.timestamp, m.key, m.value or b""
                    )
                    try:
                        self.on_record(rec)
                    except Exception as exc:  # one bad record must not stop the follower
                        self._report("record", exc)
                if msgs:
                    self._next[tp] = msgs[-1].offset + 1
            async with self._progress:
                self._progress.notify_all()

    def _report(self, where: str, exc: BaseException) -> None:
        log.warning("%s: %s failed: %r", self.topic, where, exc)
        if self.on_error is not None:
            self.on_error(f"tail.{where}", exc)
