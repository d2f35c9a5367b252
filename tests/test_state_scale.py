"""100,000 series in one partition's snapshot, through the broker with default message limits.

The state is built directly through the pipeline (one warm-up sample per series, not a long
stream). The snapshot is split into chunks, each under Kafka's default 1 MB limit, written
with a producer left at its defaults (``max_request_size`` 1 MB: an oversized record fails),
read back by a fresh store, and restored into a fresh stage that encodes to the same bytes.
"""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from selfheal.connectors.kafka import ensure_topics
from selfheal.connectors.state_store import CHUNK_BYTES, KafkaStateStore
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.stage import Pipeline

from benchmarks.checkpoint import build_stage

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

SERIES = 100_000


async def test_100k_series_snapshot_round_trips_in_bounded_records(broker, topic_prefix):
    pipe, stage = build_stage(SERIES, samples=1)
    assert len(stage.series) == SERIES
    blob = snapshots.encode(stage, {("m", 0): SERIES})
    topic = f"{topic_prefix}.state"
    await ensure_topics(broker.bootstrap, [topic], 1, compacted=[topic])
    store = KafkaStateStore(broker.bootstrap, topic, "g")
    records = store.records(0, blob)
    store.generations.clear()
    assert len(records) > 2, "the snapshot needs several records"
    assert max(len(k) + len(v) for k, v in records) < 1_000_000
    assert all(len(v) <= CHUNK_BYTES + 16 for _, v in records)

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")  # defaults
    await producer.start()
    try:
        await store.save(producer, {0: blob})
    finally:
        await producer.stop()
    got = await KafkaStateStore(broker.bootstrap, topic, "g").load([0])
    assert got == {0: blob}

    offsets, state = snapshots.decode(got[0])
    fresh = Pipeline(pipe.settings, pipe.policy_factory, live=False).stage(0)
    snapshots.restore(fresh, state)
    assert offsets == {("m", 0): SERIES} and len(fresh.series) == SERIES
    assert snapshots.encode(fresh, offsets) == blob, "restored state is the state that was saved"
