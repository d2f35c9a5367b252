"""Kafka source and sink on aiokafka: batches in, batches out, at-least-once.

The source hands out batches from ``getmany`` and commits only the offsets it is told to,
after the runner has seen the derived outputs acknowledged by the broker. The sink produces
with ``acks=all`` and no idempotent producer (the embedded broker has none), so duplicates are
possible after a crash and event ids are deterministic to make them harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from selfheal.connectors.aligner import Aligner
from selfheal.connectors.assignor import CoPartitionAssignor, check_copartitioned
from selfheal.connectors.errors import BrokerUnavailable, DeliveryFailed, is_retriable
from selfheal.pipeline.kernel.types import Envelope

OutRecord = tuple[str, bytes | None, bytes]  # topic, key, value
PartitionsCallback = Callable[[set[TopicPartition]], Awaitable[None]]


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int,
    client: dict[str, Any] | None = None,
    *,
    compacted: Iterable[str] = (),
) -> None:
    """Create missing topics (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client or {}))
    try:
        await admin.start()
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach {bootstrap}: {exc}") from exc
    try:
        existing = set(await admin.list_topics())
        compact = set(compacted)
        new = [
            NewTopic(
                t,
                partitions,
                1,
                topic_configs={"cleanup.policy": "compact"} if t in compact else None,
            )
            for t in dict.fromkeys(topics)
            if t not in existing
        ]
        if new:
            # a concurrent process may have created it first
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.source.put_back()
        if self.source.on_revoke is not None and revoked:
            await self.source.on_revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.source.put_back()
        if self.source.on_assign is not None and assigned:
            await self.source.on_assign(set(assigned))


class KafkaSource:
    """A consumer-group member yielding batches of ``Envelope``s."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        *,
        client: dict[str, Any] | None = None,
        max_batch: int = 5000,
        fetch_timeout_ms: int = 200,
        auto_offset_reset: str = "earliest",
        fetch_max_wait_ms: int = 50,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        optional_topics: Iterable[str] = (),
        align_wait_s: float = 2.0,
    ) -> None:
        self.topics = list(topics)
        #: co-partitioned topics handed out side by side in time (see connectors/aligner.py)
        self.aligner = Aligner(max_wait_s=align_wait_s)
        self._held: set[TopicPartition] = set()  # paused while the aligner holds their records
        self._paused = False  # paused for backpressure
        self._pending_parts: frozenset[int] = frozenset()  # at the last batch (see ``behind``)
        self._lagging: frozenset[int] = frozenset()  # at the last ``lag`` reading
        #: read when they exist at start (the changes topic of a deployment that sends none)
        self.optional_topics = frozenset(optional_topics)
        self.max_batch = max_batch
        self.fetch_timeout_ms = fetch_timeout_ms
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            # a fetch spanning idle partitions (say, an empty logs topic) must not park for the
            # default 500 ms while other partitions have data
            fetch_max_wait_ms=fetch_max_wait_ms,
            # partition p of every input topic on one member: per-partition state stays whole
            partition_assignment_strategy=(CoPartitionAssignor,),
            **(client or {}),
        )

    async def start(self) -> None:
        try:
            await self.consumer.start()
            await self.consumer.topics()  # metadata of every topic, for the check below
        except KafkaError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        self.topics = [
            t for t in self.topics if t not in self.optional_topics or self.partition_count(t)
        ]
        # refuses to join when co-partitioning is impossible (PartitionCountMismatch)
        check_copartitioned({t: self.partition_count(t) for t in self.topics})
        self.consumer.subscribe(self.topics, listener=_Listener(self))

    def partition_count(self, topic: str) -> int | None:
        parts = self.consumer.partitions_for_topic(topic)
        return len(parts) if parts else None

    async def stop(self) -> None:
        await self.consumer.stop()

    async def next_batch(self) -> list[Envelope]:
        """Records already fetched, else what arrives within ``fetch_timeout_ms``."""
        return await self.drain() or await self._batch(self.fetch_timeout_ms)

    async def drain(self) -> list[Envelope]:
        """Only the records already fetched (never waits for the broker)."""
        return await self._batch(0)

    async def _batch(self, timeout_ms: int) -> list[Envelope]:
        records = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_batch)
        for tp, msgs in records.items():
            self.aligner.add(tp.topic, tp.partition, msgs)
        pending = await self._pending()
        batch = self.aligner.release(pending)
        held = self.aligner.held()
        self._hold({TopicPartition(*k) for k in held})
        self._pending_parts = frozenset(p for _, p in (*pending, *held))
        return batch

    @property
    def behind(self) -> frozenset[int]:
        """Partition numbers with records not handed out yet: their data is late, not absent.

        Past what was fetched (the fetch responses' high watermarks, per batch), held by the
        aligner, or past the consumer's position at the last ``lag`` reading (a broker round
        trip: fresh where no fetch response came, as the consumer fetches no more for a
        partition while its buffer is full).
        """
        return self._pending_parts | self._lagging

    async def _pending(self) -> set[tuple[str, int]]:
        """Topic partitions of which the broker holds records past what was fetched."""
        out: set[tuple[str, int]] = set()
        for tp in self.consumer.assignment():
            key = (tp.topic, tp.partition)
            high = self.consumer.highwater(tp)  # known once a fetch response named it
            if high is None:  # not fetched yet: it may hold the oldest records
                out.add(key)
                continue
            nxt = self.aligner.fetched_next.get(key)
            if nxt is None:
                try:  # no round trip once the partition has a position
                    nxt = await self.consumer.position(tp)
                except (KafkaError, AssertionError):
                    continue
            if high > nxt:
                out.add(key)
        return out

    def _hold(self, held: set[TopicPartition]) -> None:
        # a partition whose records wait for another input stops fetching meanwhile, or the
        # consumer would keep serving it and starve the input it waits for (as Kafka Streams
        # pauses a full partition buffer)
        if held != self._held:
            assigned = self.consumer.assignment()
            self.consumer.pause(*(held - self._held) & assigned)
            if not self._paused:
                self.consumer.resume(*(self._held - held) & assigned)
            self._held = held

    def put_back(self, seek: bool = True) -> dict[tuple[str, int], int]:
        """Drop the aligner's buffer (a rebalance is on); returns where each dropped topic
        partition resumes, and seeks there unless told not to."""
        firsts = self.aligner.first_offsets()
        assigned = self.consumer.assignment()
        for (topic, part), offset in firsts.items():
            tp = TopicPartition(topic, part)
            if seek and tp in assigned:
                self.consumer.seek(tp, offset)
        self.aligner.forget(list(self.aligner.fetched_next))
        self._hold(set())
        return firsts

    def assignment(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    def pause(self) -> None:
        self._paused = True
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        self.consumer.resume(*(self.consumer.assignment() - self._held))

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit ``next offset to read`` per (topic, partition) still assigned to us."""
        assigned = self.consumer.assignment()
        todo = {
            TopicPartition(t, p): o
            for (t, p), o in offsets.items()
            if TopicPartition(t, p) in assigned
        }
        if todo:
            await self.consumer.commit(todo)

    async def lag(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        assigned = list(self.consumer.assignment())
        if not assigned:
            return out
        try:
            ends = await self.consumer.end_offsets(assigned)
        except KafkaError as exc:
            # the one regular round trip to the broker: its failure is how an outage shows
            raise BrokerUnavailable(f"cannot list offsets: {exc}") from exc
        for tp in assigned:
            try:
                pos = await self.consumer.position(tp)
            except (KafkaError, AssertionError):
                continue
            out[(tp.topic, tp.partition)] = max(0, ends.get(tp, pos) - pos)
        self._lagging = frozenset(part for (_, part), n in out.items() if n > 0)
        return out


class KafkaSink:
    """Batched producer: ``write_batch`` returns once the broker acknowledged every record."""

    def __init__(
        self, bootstrap: str, *, client: dict[str, Any] | None = None, linger_ms: int = 5
    ) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=linger_ms,
            max_batch_size=1024 * 1024,
            max_request_size=16 * 1024 * 1024,
            **(client or {}),
        )

    async def start(self) -> None:
        try:
            await self.producer.start()
        except KafkaError as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def stop(self) -> None:
        await self.producer.stop()

    async def write_batch(self, records: Sequence[OutRecord]) -> None:
        if not records:
            return
        try:
            futures = [
                await self.producer.send(topic, value, key=key) for topic, key, value in records
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise DeliveryFailed(
                f"{type(exc).__name__}: {exc}", retriable=is_retriable(exc)
            ) from exc
