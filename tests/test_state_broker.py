"""Snapshots through the real broker: forged snapshots are refused (never executed), state
survives a restart in bounded chunks, signed with HMAC, and a restore that times out says so."""

from __future__ import annotations

import asyncio
import logging
import pickle
import subprocess
import zlib
from pathlib import Path

import orjson
import pytest
from selfheal.connectors.kafka import ensure_topics
from selfheal.connectors.state_store import CHUNK_BYTES, KafkaStateStore
from selfheal.pipeline.core.codec import _HEADER, MAGIC, VERSION

from tests.spine_helpers import make_runner, produce_records, run_until, settings_for, valid_samples

pytestmark = pytest.mark.asyncio


def _restores(runner, outcome: str) -> float:
    value = runner.metrics.registry.get_sample_value("state_restores_total", {"outcome": outcome})
    return value or 0.0


class _Evil:
    """A pickle that runs ``touch <marker>`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (subprocess.call, (["touch", str(self.marker)],))


async def test_forged_snapshots_are_not_executed_and_partitions_start_fresh(
    broker, producer, topic_prefix, tmp_path, caplog
):
    s = settings_for(topic_prefix, broker.bootstrap, partitions=3)
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs, t.state], 3, compacted=[t.state])
    # the payload is live: unpickled here, it creates its file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe)))
    assert probe.exists()

    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker))
    store = KafkaStateStore(broker.bootstrap, t.state, s.kafka.group_id)
    old_format = b"SHSNAP" + (3).to_bytes(2, "big") + zlib.crc32(evil).to_bytes(4, "big")
    tree = zlib.compress(orjson.dumps(["c", "posix.system", ["t", f"touch {marker}"]]))
    codec_frame = _HEADER.pack(MAGIC, VERSION, 0, zlib.crc32(tree)) + tree
    forged = [(store._key(0), evil)]  # a raw pickle where the snapshot (manifest) lives
    forged += store.records(1, old_format + zlib.compress(evil))  # the old pickle snapshot
    forged += store.records(2, codec_frame)  # a codec frame naming os.system
    futs = [await producer.send(t.state, v, key=k) for k, v in forged]
    await asyncio.gather(*futs)

    recs = valid_samples(3000)
    await produce_records(producer, t.metrics, recs)
    runner = make_runner(s)
    with caplog.at_level(logging.ERROR, logger="selfheal.runner"):
        await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(recs))
    assert not marker.exists(), "a forged snapshot ran code"
    assert runner.stats.messages == len(recs)
    assert _restores(runner, "corrupt") == 3
    assert _restores(runner, "restored") == 0
    assert "starting it fresh" in caplog.text
    first_ts = min(r["ts"] for r in recs)
    for stage in runner.pipeline.stages.values():
        assert stage.watermark >= first_ts  # fresh: nothing came from the forged state


async def test_state_survives_restart_in_bounded_signed_chunks(broker, producer, topic_prefix):
    s = settings_for(topic_prefix, broker.bootstrap, partitions=3, state={"hmac_key": "k1"})
    t = s.kafka.topics
    recs = valid_samples(6000)
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 3)
    await produce_records(producer, t.metrics, recs[:3000])
    first = make_runner(s)
    await run_until(first, broker.bootstrap, lambda: first.stats.messages >= 3000)
    marks = {p: st.watermark for p, st in first.pipeline.stages.items()}
    sizes = {p: len(st.series) for p, st in first.pipeline.stages.items()}

    await produce_records(producer, t.metrics, recs[3000:])
    second = make_runner(s)
    await run_until(second, broker.bootstrap, lambda: second.stats.messages >= 3000)
    assert _restores(second, "restored") == len(marks)
    assert second.stats.messages == 3000, "resumed at the snapshot's offsets"
    for p, st in second.pipeline.stages.items():
        assert st.watermark > marks[p] and len(st.series) >= sizes[p]

    other_key = settings_for(topic_prefix, broker.bootstrap, partitions=3, state={"hmac_key": "k2"})
    third = make_runner(other_key)
    await produce_records(producer, t.metrics, recs[:150])
    await run_until(third, broker.bootstrap, lambda: third.stats.messages >= 150)
    assert _restores(third, "corrupt") == len(marks), "a snapshot under another key is refused"


async def test_a_snapshot_larger_than_a_message_is_chunked_and_reassembled(broker, topic_prefix):
    from aiokafka import AIOKafkaProducer

    topic = f"{topic_prefix}.state"
    await ensure_topics(broker.bootstrap, [topic], 1, compacted=[topic])
    # default producer limits (1 MB requests): every record of a 5 MB snapshot must fit
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        store = KafkaStateStore(broker.bootstrap, topic, "g")
        big = bytes(range(256)) * (5 * 2**20 // 256)
        await store.save(producer, {0: big})
        newer = b"\x01" * (3 * CHUNK_BYTES // 2)
        await store.save(producer, {0: newer})
        # a crash in the middle of a third save: some chunks written, no manifest
        torn = store.records(0, b"\x02" * (2 * CHUNK_BYTES + 5))
        await asyncio.gather(*[await producer.send(topic, v, key=k) for k, v in torn[:2]])
    finally:
        await producer.stop()
    fresh = KafkaStateStore(broker.bootstrap, topic, "g")
    got = await fresh.load([0, 1])
    assert got == {0: newer}, "the last complete generation, never a mix"
    assert fresh.generations[0] == 2 and not fresh.timed_out


async def test_a_snapshot_load_that_times_out_is_reported(broker, producer, topic_prefix, caplog):
    s = settings_for(topic_prefix, broker.bootstrap, partitions=1)
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs, t.state], 1, compacted=[t.state])
    # a state topic with more than a tiny timeout can read
    filler = [await producer.send(t.state, b"x" * 1000, key=b"other") for _ in range(3000)]
    await asyncio.gather(*filler)
    s = settings_for(
        topic_prefix, broker.bootstrap, partitions=1, state={"load_timeout_seconds": 0.001}
    )
    recs = valid_samples(100)
    await produce_records(producer, t.metrics, recs)
    runner = make_runner(s)
    with caplog.at_level(logging.ERROR, logger="selfheal.runner"):
        await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(recs))
    assert _restores(runner, "timeout") == 1
    assert "snapshot load timed out" in caplog.text
