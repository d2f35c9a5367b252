"""kill -9 mid-stream and restart: nothing unprocessed, repeated outputs keep their ids, and
``selfheal replay`` over the same input yields the same set of event ids (anomalies, repairs and
incidents) as ``selfheal run``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import orjson
import pytest

from tests.conftest import consume_all
from tests.spine_helpers import (
    malformed,
    produce,
    settings_for,
    start_pipeline,
    valid_samples,
    write_config,
)

pytestmark = pytest.mark.asyncio


async def _committed(bootstrap: str, group: str, topic: str) -> tuple[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        committed = await c.committed(tp) or 0
        end = (await c.end_offsets([tp]))[tp]
        return committed, end
    finally:
        await c.stop()


async def test_kill_9_restart_and_replay_equivalence(broker, producer, topic_prefix, tmp_path):
    # one partition: a replay of the file sees the records in the same order as the consumer
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        kafka={"max_batch": 100},
        detection={"models_enabled": False},
    )
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    good = [orjson.dumps(x) for x in valid_samples(20_000)]
    bad = malformed(201)[:200]  # without the 10 MB one: this test is about recovery
    values: list[bytes] = []
    for i, v in enumerate(good):
        values.append(v)
        if i % 100 == 0:
            values.append(bad[i // 100])
    await produce(producer, t.metrics, values, [None] * len(values))
    src = tmp_path / "input.jsonl"
    src.write_bytes(b"\n".join(values) + b"\n")
    config = write_config(tmp_path / "config.yaml", s)

    log = tmp_path / "pipeline.log"
    proc = start_pipeline(config, broker.bootstrap, log)
    try:
        # wait until it has committed part of the stream, then kill it without warning
        for _ in range(600):
            committed, _end = await _committed(broker.bootstrap, s.kafka.group_id, t.metrics)
            if committed > 2_000:
                break
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert committed < len(values), "killed mid-stream"
    finally:
        if proc.poll() is None:
            proc.kill()

    proc = start_pipeline(config, broker.bootstrap, log)
    try:
        for _ in range(1200):
            committed, _end = await _committed(broker.bootstrap, s.kafka.group_id, t.metrics)
            # (Tansu's ListOffsets can lag behind the last batch: count what we produced)
            if committed >= len(values):
                break
            await asyncio.sleep(0.1)
        assert committed == len(values), "no input is left unprocessed"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0

    run_events = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.anomalies)]
    run_events += [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.repairs)]
    run_events += [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.incidents)]
    dead = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.deadletter)]
    assert {(d["partition"], d["offset"]) for d in dead} == {
        (0, i) for i, v in enumerate(values) if v in set(bad)
    }, "every reject, once or more"

    # a repeated output is the same event: same id, same content
    by_id: dict[str, dict] = {}
    for e in run_events:
        if e["id"] in by_id:
            assert by_id[e["id"]] == e
        by_id[e["id"]] = e

    out = tmp_path / "replay.jsonl"
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "selfheal.pipeline.app.cli",
            "replay",
            str(src),
            "--out",
            str(out),
            "--config",
            str(config),
        ],
        capture_output=True,
        timeout=120,
    )
    assert rc.returncode == 0, rc.stderr.decode()
    # anomalies, repairs and incidents: the incident book is a function of the incident log
    # (snapshotted with it), so after a kill -9 its events are the replay's too
    replayed = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    replay_ids = {e["id"] for e in replayed}
    assert replay_ids, "the input holds threshold breaches"
    assert any(e["type"].startswith("io.selfheal.incident.") for e in replayed)
    assert set(by_id) == replay_ids
