"""Shared fixtures: a real Kafka-protocol broker for the session, topics, clients."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from selfheal.connectors.broker import BrokerHandle, kafka_broker

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerHandle]:
    """KAFKA_BOOTSTRAP, else testcontainers Kafka when Docker answers, else embedded Tansu."""
    with kafka_broker() as handle:
        if handle.note:
            warnings.warn(handle.note, stacklevel=1)  # listed in pytest's warnings summary
        yield handle


@pytest.fixture
def topic_prefix() -> str:
    """Unique topic names per test: the session broker is shared."""
    return f"t{uuid.uuid4().hex[:8]}"


async def consume_all(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout: float = 30.0,
    idle: float = 3.0,
) -> list[bytes]:
    """Read a topic from the beginning (manual assignment) until ``expect`` or idle."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        out: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = loop.time()
        while loop.time() < deadline:
            got = await c.getmany(timeout_ms=200, max_records=10_000)
            n = sum(len(v) for v in got.values())
            for msgs in got.values():
                out.extend(m.value or b"" for m in msgs)
            if n:
                last = loop.time()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and loop.time() - last > idle:
                break
        return out
    finally:
        await c.stop()


@pytest.fixture
async def producer(broker: BrokerHandle) -> AsyncIterator[object]:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_request_size=16 * 1024 * 1024,
    )
    await p.start()
    yield p
    await p.stop()
