"""Input generators and runner helpers shared by the spine's integration tests."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from selfheal.pipeline.app.runner import Runner
from selfheal.pipeline.core.config import Settings, TopicsConfig, load_settings
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.kernel.types import Anomaly, AnomalyKind, Finding, Severity

from tests.conftest import ROOT


async def until(cond: Any, timeout: float, what: str) -> None:
    """Wait until ``cond()`` holds, checking every 0.2 s; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def critical_memory(entity: str, ts: float) -> dict[str, Any]:
    """A memory sample at 99 % of its limit (the default policy restarts the entity)."""
    return {
        "ts": ts,
        "entity": entity,
        "metric": "container_memory_working_set_bytes",
        "value": 0.99e9,
        "limit": 1e9,
    }


def queue_backlog(entity: str, ts: float) -> Anomaly:
    """A warning ``queue_high`` anomaly of ``entity`` at ``ts`` (id ``entity@ts``), as a rule
    judge reports one: the learning tests' incident."""
    f = Finding(
        ts=ts,
        entity=entity,
        metric="queue_depth",
        detector="rule",
        kind=AnomalyKind.QUEUE_HIGH,
        severity=Severity.WARNING,
        score=0.9,
        threshold=0.8,
        value=900,
    )
    return Anomaly(id=f"{entity}@{ts:g}", finding=f)


def settings_for(prefix: str, bootstrap: str, partitions: int = 3, **extra: Any) -> Settings:
    topics = {
        name: f"{prefix}.{name}"
        for name in TopicsConfig.model_fields  # every topic the pipeline uses, per test
    }
    over: dict[str, Any] = {
        "kafka": {
            "bootstrap": bootstrap,
            "topics": topics,
            "partitions": partitions,
            "group_id": f"{prefix}-group",
        },
        "http": {"enabled": False},
    }
    for key, val in extra.items():
        over[key] = {**over.get(key, {}), **val}
    over.setdefault("state", {"snapshot_every_seconds": 1.0})
    return load_settings(None, over)


def write_config(path: Path, settings: Settings) -> Path:
    data = settings.model_dump(mode="json", exclude={"policy"})
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def valid_samples(n: int, entities: int = 50, base: float | None = None) -> list[dict[str, Any]]:
    """``n`` valid samples: memory ramps on e0 (crosses 95 %), dependency failures on e1."""
    base = time.time() - 3 * 3600 if base is None else base
    out: list[dict[str, Any]] = []
    steps = n // entities
    for step in range(steps):
        ts = base + step * 15.0
        for e in range(entities):
            ent = f"svc-{e:02d}"
            if e == 0:
                out.append(
                    {
                        "ts": ts,
                        "entity": ent,
                        "metric": "container_memory_working_set_bytes",
                        "value": 100e6 + 900e6 * step / steps,
                        "limit": 1e9,
                    }
                )
            elif e == 1:
                ok = 0.0 if steps // 2 <= step < steps // 2 + 6 else 1.0
                out.append(
                    {
                        "ts": ts,
                        "entity": ent,
                        "metric": "dependency_request_ok",
                        "value": ok,
                        "labels": {"dependency": "db"},
                    }
                )
            elif e == 2:
                out.append(
                    {
                        "ts": ts,
                        "entity": ent,
                        "metric": "queue_depth",
                        "value": 10.0 if step < steps - 20 else 90.0,
                        "limit": 100.0,
                    }
                )
            else:
                out.append(
                    {
                        "ts": ts,
                        "entity": ent,
                        "metric": "cpu_seconds",
                        "value": 0.5 + 0.01 * (step % 7),
                    }
                )
    return out


def malformed(n: int, seed: int = 7) -> list[bytes]:
    """The kinds of garbage producers send, cycled: each must reach the dead-letter topic."""
    rnd = random.Random(seed)
    kinds = [
        lambda i: b'{"ts": 1, "entity": "x", "metric": "m", "value": ',  # bad JSON
        lambda i: orjson.dumps({"ts": time.time(), "entity": "x", "metric": "m", "value": "high"}),
        lambda i: b'{"ts": %f, "entity": "x", "metric": "m", "value": NaN}' % time.time(),
        lambda i: orjson.dumps({"hello": "world", "n": i}),  # unknown format
        lambda i: bytes(rnd.getrandbits(8) for _ in range(64)),  # binary garbage
        lambda i: orjson.dumps({"ts": time.time(), "entity": "", "metric": "m", "value": 1}),
        lambda i: orjson.dumps(
            {"ts": time.time() + 86400, "entity": "x", "metric": "m", "value": 1}
        ),  # far future
    ]
    out = [kinds[i % len(kinds)](i) for i in range(n - 1)]
    out.append(b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}')  # 10 MB payload
    return out


async def produce(producer: Any, topic: str, values: list[bytes], keys: list[bytes | None]) -> None:
    futs = [await producer.send(topic, v, key=k) for v, k in zip(values, keys, strict=True)]
    await asyncio.gather(*futs)


async def produce_records(producer: Any, topic: str, records: list[dict[str, Any]]) -> None:
    """``records`` as JSON, keyed by their entity (one entity stays on one partition)."""
    await produce(
        producer, topic, [orjson.dumps(r) for r in records], [r["entity"].encode() for r in records]
    )


async def run_until(runner: Runner, bootstrap: str, done: Any, timeout: float = 60.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(bootstrap, stop=stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline and not done():
            if task.done():
                task.result()
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def make_runner(settings: Settings) -> Runner:
    return Runner(settings, lambda: PolicyEngine(settings.policy))


def env_without_kafka() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}


def start_pipeline(config: Path, bootstrap: str, log: Path) -> subprocess.Popen[bytes]:
    """``selfheal run`` as a subprocess; stderr (the log) goes to ``log``."""
    with log.open("ab") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "selfheal.pipeline.app.cli",
                "run",
                "--config",
                str(config),
                "--bootstrap",
                bootstrap,
            ],
            cwd=ROOT,
            env=env_without_kafka(),
            stdout=subprocess.PIPE,
            stderr=err,
        )


async def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    """The group's committed offset of one partition (0 before any commit)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        return await c.committed(TopicPartition(topic, partition)) or 0
    finally:
        await c.stop()


async def wait_while_running(
    cond: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90
) -> None:
    """Poll the async ``cond`` until true; fail with the log's tail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not await cond():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        await asyncio.sleep(0.2)
