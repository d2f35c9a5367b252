"""Partition snapshots on a Kafka topic (``selfheal.state``, compacted), in bounded records.

Two methods, like a Drain3 persistence backend: ``save`` (acknowledged by the broker before
the caller commits input offsets) and ``load`` (the latest complete snapshot per partition).

A snapshot of any size is split into chunks of at most ``CHUNK_BYTES`` (well under Kafka's
default 1 MB ``message.max.bytes``), written under keys ``<group>/partition-<p>/s<slot>/<i>``;
only once every chunk is acknowledged does a small manifest under ``<group>/partition-<p>``
name the generation, slot, chunk count, length and CRC. Generations alternate between two
slots, so a crash in the middle of a save overwrites only chunks of the *other* slot: the
manifest still points at a complete earlier generation, and two snapshots are never mixed.
Compaction keeps the latest record per key, which is exactly what ``load`` needs.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

log = logging.getLogger("selfheal.state_store")

#: largest chunk value: two never fit one producer batch, one with headers stays < 1 MB
CHUNK_BYTES = 768 * 1024
_MANIFEST = struct.Struct(">6sQBIQI")  # magic, generation, slot, chunks, length, crc32
_MANIFEST_MAGIC = b"SHMAN1"
_CHUNK = struct.Struct(">QII")  # generation, index, count


class KafkaStateStore:
    """Snapshots keyed by consumer group and partition: two deployments (groups) reading the
    same input keep separate state even when they share the state topic."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        client: dict[str, Any] | None = None,
        *,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.client = client or {}
        self.chunk_bytes = chunk_bytes
        #: last generation written or loaded per partition (the next save goes above it)
        self.generations: dict[int, int] = {}
        #: partitions whose last ``load`` ran out of time before the topic's end
        self.timed_out: set[int] = set()
        #: partitions whose last ``load`` found a manifest but not its chunks
        self.incomplete: dict[int, str] = {}

    def _key(self, partition: int) -> bytes:
        return f"{self.group}/partition-{partition}".encode()

    def _chunk_key(self, partition: int, slot: int, index: int) -> bytes:
        return f"{self.group}/partition-{partition}/s{slot}/{index}".encode()

    def records(self, partition: int, blob: bytes) -> list[tuple[bytes, bytes]]:
        """(key, value) records of one snapshot: its chunks, then the manifest."""
        gen = self.generations.get(partition, 0) + 1
        self.generations[partition] = gen
        slot = gen % 2
        size = self.chunk_bytes
        pieces = [blob[i : i + size] for i in range(0, len(blob), size)] or [b""]
        out = [
            (self._chunk_key(partition, slot, i), _CHUNK.pack(gen, i, len(pieces)) + piece)
            for i, piece in enumerate(pieces)
        ]
        manifest = _MANIFEST.pack(
            _MANIFEST_MAGIC, gen, slot, len(pieces), len(blob), zlib.crc32(blob)
        )
        return [*out, (self._key(partition), manifest)]

    async def save(self, producer: AIOKafkaProducer, snapshots: dict[int, bytes]) -> None:
        recs = {p: self.records(p, blob) for p, blob in snapshots.items()}
        # every chunk acknowledged before any manifest points at it
        chunks = [
            await producer.send(self.topic, v, key=k) for r in recs.values() for k, v in r[:-1]
        ]
        await asyncio.gather(*chunks)
        manifests = [await producer.send(self.topic, r[-1][1], key=r[-1][0]) for r in recs.values()]
        await asyncio.gather(*manifests)

    async def load(self, partitions: Iterable[int], timeout: float = 30.0) -> dict[int, bytes]:
        """Latest complete snapshot of each wanted partition (reads the topic up to its end)."""
        wanted = {self._key(p): p for p in partitions}
        self.timed_out = set()
        self.incomplete = {}
        if not wanted:
            return {}
        manifests, chunks, complete = await self._scan(wanted, timeout)
        if not complete:
            self.timed_out = set(wanted.values())
        found: dict[int, bytes] = {}
        for p, raw in manifests.items():
            try:
                found[p] = self._assemble(p, raw, chunks)
            except ValueError as exc:
                self.incomplete[p] = str(exc)
        return found

    def _assemble(self, p: int, manifest: bytes, chunks: dict[bytes, bytes]) -> bytes:
        if len(manifest) != _MANIFEST.size or manifest[:6] != _MANIFEST_MAGIC:
            raise ValueError("not a snapshot manifest")
        _, gen, slot, count, length, crc = _MANIFEST.unpack(manifest)
        self.generations[p] = max(self.generations.get(p, 0), gen)
        parts: list[bytes] = []
        for i in range(count):
            value = chunks.get(self._chunk_key(p, slot, i))
            if value is None or len(value) < _CHUNK.size:
                raise ValueError(f"generation {gen}: chunk {i} of {count} missing")
            cgen, idx, cnt = _CHUNK.unpack_from(value)
            if (cgen, idx, cnt) != (gen, i, count):
                raise ValueError(f"generation {gen}: chunk {i} belongs to generation {cgen}")
            parts.append(value[_CHUNK.size :])
        blob = b"".join(parts)
        if len(blob) != length or zlib.crc32(blob) != crc:
            raise ValueError(f"generation {gen}: length or checksum mismatch")
        return blob

    async def _scan(
        self, wanted: dict[bytes, int], timeout: float
    ) -> tuple[dict[int, bytes], dict[bytes, bytes], bool]:
        """Latest manifest per wanted partition and latest value per chunk key; and whether
        the topic's end was reached in time."""
        prefixes = tuple(k + b"/" for k in wanted)
        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            **self.client,
        )
        await c.start()
        manifests: dict[int, bytes] = {}
        chunks: dict[bytes, bytes] = {}
        try:
            parts = c.partitions_for_topic(self.topic)
            if not parts:
                await c._client.force_metadata_update()
                parts = c.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            if not tps:
                return manifests, chunks, True
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            ends = await c.end_offsets(tps)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                got = await c.getmany(timeout_ms=300, max_records=1000)
                if not got:
                    # some brokers report a slightly stale end offset: stop only when the
                    # reported end is reached AND a poll comes back empty
                    behind = [tp for tp in tps if await c.position(tp) < ends[tp]]
                    if not behind:
                        return manifests, chunks, True
                for msgs in got.values():
                    for m in msgs:
                        key = m.key or b""
                        p = wanted.get(key)
                        if p is not None:
                            if m.value:
                                manifests[p] = m.value
                            else:
                                manifests.pop(p, None)  # a tombstone: no snapshot
                        elif key.startswith(prefixes) and m.value:
                            chunks[key] = m.value
            log.warning("state topic not read to its end within %.0fs", timeout)
            return manifests, chunks, False
        finally:
            await c.stop()
