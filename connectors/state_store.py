"""Partition snapshots on a Kafka topic (``selfheal.state``, keyed by partition, compacted).

Two methods, like a Drain3 persistence backend: ``save`` (acknowledged by the broker before
the caller commits input offsets) and ``load`` (the latest snapshot per partition).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


class KafkaStateStore:
    """Snapshots keyed by consumer group and partition: two deployments (groups) reading the
    same input keep separate state even when they share the state topic."""

    def __init__(
        self, bootstrap: str, topic: str, group: str, client: dict[str, Any] | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.client = client or {}

    def _key(self, partition: int) -> bytes:
        return f"{self.group}/partition-{partition}".encode()

    async def save(self, producer: AIOKafkaProducer, snapshots: dict[int, bytes]) -> None:
        futs = [
            await producer.send(self.topic, blob, key=self._key(p)) for p, blob in snapshots.items()
        ]
        await asyncio.gather(*futs)

    async def load(self, partitions: Iterable[int], timeout: float = 30.0) -> dict[int, bytes]:
        """Latest snapshot of each wanted partition (reads the topic up to its end)."""
        wanted = {self._key(p): p for p in partitions}
        if not wanted:
            return {}
        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=64 * 1024 * 1024,
            **self.client,
        )
        await c.start()
        try:
            parts = c.partitions_for_topic(self.topic)
            if not parts:
                await c._client.force_metadata_update()
                parts = c.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            if not tps:
                return {}
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            ends = await c.end_offsets(tps)
            found: dict[int, bytes] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                got = await c.getmany(timeout_ms=300, max_records=1000)
                if not got:
                    # some brokers report a slightly stale end offset: stop only when the
                    # reported end is reached AND a poll comes back empty
                    behind = [tp for tp in tps if await c.position(tp) < ends[tp]]
                    if not behind:
                        break
                for msgs in got.values():
                    for m in msgs:
                        p = wanted.get(m.key or b"")
                        if p is not None and m.value:
                            found[p] = m.value
            return found
        finally:
            await c.stop()
