"""Scale-out on one consumer group: two pipeline processes share the partitions; ``kill -9``
one mid-stream; the survivor takes its partitions over, restores their state from the
snapshots on the state topic, and the deduplicated anomaly ids equal those of an
uninterrupted single-process run (``selfheal replay`` over the same records).

The input makes the ids depend on model state: ``memory_high`` re-reports every
``repeat_seconds`` of event time while memory stays high, ``breaker_open`` fires on the 5th of
7 consecutive failures, and the ``memory_leak`` forecaster (models on) fits hours of history.
A partition restarted from scratch at the kill point would report at other times (other ids)
or miss a failure run altogether.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from selfheal.connectors.broker import BrokerHandle, free_port
from selfheal.pipeline.core.config import Settings

from tests.conftest import ROOT, consume_all
from tests.spine_helpers import settings_for, start_pipeline, write_config

pytestmark = pytest.mark.asyncio

PARTITIONS = 4
MEMORY = "container_memory_working_set_bytes"


def stateful_input(
    entities: int = 32, steps: int = 1200, base: float | None = None
) -> list[dict[str, Any]]:
    """Per entity and 15 s step: a leaking memory series and a dependency probe.

    Memory climbs from 30 % to 99 % of its limit over ``steps`` (one restart back to 30 %,
    at an entity-specific phase); the probe fails 7 times in a row every 45 steps.
    """
    base = time.time() - 6 * 3600 if base is None else base
    out: list[dict[str, Any]] = []
    for step in range(steps):
        ts = base + step * 15.0
        for e in range(entities):
            ent = f"api-{e:03d}"
            frac = (step + 37 * e) % steps / steps
            sawtooth = 0.02 * ((step % 8) / 8)
            out.append(
                {
                    "ts": ts,
                    "entity": ent,
                    "metric": MEMORY,
                    "value": (0.30 + 0.69 * frac + sawtooth) * 1e9,
                    "limit": 1e9,
                }
            )
            phase = (step + 11 * e) % 45
            out.append(
                {
                    "ts": ts,
                    "entity": ent,
                    "metric": "dependency_request_ok",
                    "value": 0.0 if phase < 7 else 1.0,
                    "labels": {"dependency": "db"},
                }
            )
    return out


def group_settings(prefix: str, bootstrap: str, **extra: Any) -> Settings:
    """Settings for pipeline processes in one group (each gets its own HTTP port later)."""
    over: dict[str, Any] = {
        "kafka": {"max_batch": 500, "retry_backoff_seconds": 0.2, "retry_backoff_max_seconds": 1.0},
        "state": {"snapshot_every_seconds": 0.5, "snapshot_every_messages": 5_000},
        # wall-clock idleness must not move event time: replay has no wall clock
        "detection": {"idle_grace_seconds": 3600.0},
        "http": {"enabled": True, "port": 0},
    }
    for key, val in extra.items():
        over[key] = {**over.get(key, {}), **val}
    return settings_for(prefix, bootstrap, partitions=PARTITIONS, **over)


def config_with_port(settings: Settings, path: Path, port: int) -> Path:
    return write_config(
        path, settings.model_copy(update={"http": settings.http.model_copy(update={"port": port})})
    )


def scrape(port: int, path: str = "/metrics", timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of an HTTP GET on the pipeline's server; (0, "") when unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def metric_sum(port: int, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` matching ``labels`` (0 when the server does not answer)."""
    status, body = scrape(port)
    if status != 200:
        return 0.0
    want = set(labels.items())
    return sum(v for (n, lab), v in metric_values(body).items() if n == name and want <= set(lab))


async def produce_keyed(
    bootstrap: str, topic: str, records: Sequence[dict[str, Any]]
) -> dict[int, int]:
    """Produce JSON records keyed by entity; returns the end offset written per partition."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=20
    )
    await p.start()
    try:
        futs = [
            await p.send(topic, orjson.dumps(r), key=str(r["entity"]).encode()) for r in records
        ]
        ends: dict[int, int] = {}
        for md in await asyncio.gather(*futs):
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
        return ends
    finally:
        await p.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str, parts: int) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        out: dict[int, int] = {}
        for p in range(parts):
            out[p] = await c.committed(TopicPartition(topic, p)) or 0
        return out
    finally:
        await c.stop()


async def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    ends: dict[int, int],
    procs: Sequence[subprocess.Popen[bytes]],
    timeout: float,
) -> dict[int, int]:
    """Poll the group's committed offsets until they reach ``ends`` on every partition."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got: dict[int, int] = {}
    while loop.time() < deadline:
        got = await committed_offsets(bootstrap, group, topic, PARTITIONS)
        if all(got.get(p, 0) >= end for p, end in ends.items()):
            return got
        for proc in procs:
            assert proc.poll() is None, f"pipeline exited with {proc.returncode}"
        await asyncio.sleep(0.3)
    return got


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def replay_ids(records: Sequence[dict[str, Any]], config: Path, tmp: Path) -> set[str]:
    """Anomaly ids of ``selfheal replay`` (one process, no interruption) over ``records``."""
    src = tmp / "input.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    out = tmp / "replay.jsonl"
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
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert rc.returncode == 0, rc.stderr.decode()[-2000:]
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    return {e["id"] for e in events if e["type"].startswith("io.selfheal.anomaly.")}


async def test_two_processes_share_partitions_and_survive_kill_9(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    s = group_settings(topic_prefix, broker.bootstrap)
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(
        broker.bootstrap,
        [t.metrics, t.logs, t.anomalies, t.repairs, t.deadletter, t.audit, t.state],
        PARTITIONS,
        compacted=[t.state],
    )
    records = stateful_input()
    third = len(records) // 3
    chunks = [records[:third], records[third : 2 * third], records[2 * third :]]

    ports = [free_port(), free_port()]
    cfgs = [config_with_port(s, tmp_path / f"config{i}.yaml", ports[i]) for i in range(2)]
    logs = [tmp_path / f"proc{i}.log" for i in range(2)]
    procs = [start_pipeline(cfgs[i], broker.bootstrap, logs[i]) for i in range(2)]
    survivor, victim = 0, 1
    try:
        # both members must be in the group before the input arrives, or the first one to
        # join would take the whole first chunk; two cold starts on a loaded 2-core CI
        # machine have taken over 30 s, so the wait is a deadline, not a count of polls
        deadline = asyncio.get_running_loop().time() + 90.0
        while asyncio.get_running_loop().time() < deadline:
            if all(scrape(p, "/readyz")[0] == 200 for p in ports):
                break
            await asyncio.sleep(0.1)
        assert all(scrape(p, "/readyz")[0] == 200 for p in ports), "both pipelines ready"
        await asyncio.sleep(3.0)  # let the second join's rebalance settle

        ends = await produce_keyed(broker.bootstrap, t.metrics, chunks[0])
        # the partitions are shared: both processes consume part of the input
        for _ in range(300):
            done = [metric_sum(p, "samples_processed_total") for p in ports]
            if all(d > 0 for d in done) and sum(done) >= len(chunks[0]):
                break
            await asyncio.sleep(0.1)
        done = [metric_sum(p, "samples_processed_total") for p in ports]
        assert all(d > 0 for d in done), f"both processes consume: {done}"
        assert sum(done) >= len(chunks[0]), done

        # mid-stream: the victim is busy with the second chunk when it dies
        before = done[victim]
        produce_task = asyncio.create_task(produce_keyed(broker.bootstrap, t.metrics, chunks[1]))
        for _ in range(600):
            if metric_sum(ports[victim], "samples_processed_total") > before + 2_000:
                break
            await asyncio.sleep(0.02)
        restored_before = metric_sum(ports[survivor], "state_restores_total", outcome="restored")
        os.kill(procs[victim].pid, signal.SIGKILL)
        procs[victim].wait(timeout=10)
        ends.update(await produce_task)
        committed = await committed_offsets(
            broker.bootstrap, s.kafka.group_id, t.metrics, PARTITIONS
        )
        assert sum(committed.values()) < sum(ends.values()), "killed mid-stream"

        ends.update(await produce_keyed(broker.bootstrap, t.metrics, chunks[2]))
        assert sum(ends.values()) == len(records)
        committed = await wait_committed(
            broker.bootstrap, s.kafka.group_id, t.metrics, ends, [procs[survivor]], timeout=60
        )
        assert committed == ends, "the survivor processes every partition to its end"
        restored = metric_sum(ports[survivor], "state_restores_total", outcome="restored")
        assert restored > restored_before, "the survivor restored the victim's partitions"
        assert metric_sum(ports[survivor], "state_restores_total", outcome="corrupt") == 0
    finally:
        for proc in procs:
            stop(proc)
    assert procs[survivor].returncode == 0, logs[survivor].read_text()[-3000:]

    events = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.anomalies)]
    by_id: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["id"] in by_id:
            assert by_id[e["id"]] == e, "a repeated output is the same event"
        by_id[e["id"]] = e
    kinds = {e["data"]["kind"] for e in by_id.values()}
    assert {"memory_high", "breaker_open", "memory_leak"} <= kinds, kinds

    expected = replay_ids(records, cfgs[0], tmp_path)
    missing, extra = expected - set(by_id), set(by_id) - expected
    sample = [f"{by_id[i]['type']} {by_id[i]['subject']} {by_id[i]['time']}" for i in extra]
    assert not missing and not extra, (
        f"{len(missing)} anomaly ids missing, {len(extra)} extra; e.g. {sample[:5]}"
    )
