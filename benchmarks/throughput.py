"""End-to-end throughput through a real broker, next to the raw aiokafka ceiling.

    .venv/bin/python benchmarks/throughput.py [--samples N] [--runs R] [--models]

Produces N native samples (1,000 entities, 3 partitions) once, then per run measures
(a) the ceiling: a plain aiokafka consumer group reading the topic and ``orjson.loads`` on every
value, committing after every batch, and (b) the selfheal runner (static rules only by default;
``--models`` turns on every detector) consuming the same topic with a fresh group until it has
processed every message (outputs written and acknowledged; offsets committed at its snapshot
checkpoints). Both use the same fetch settings and batch size, both clocks start at the first
batch, and the two alternate in going first. Prints a Markdown section with medians and the
ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from selfheal.connectors.broker import kafka_broker
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app.runner import Runner
from selfheal.pipeline.core.config import KafkaConfig, load_settings
from selfheal.pipeline.core.policy import PolicyEngine

from benchmarks.common import publish


def make_samples(n: int, entities: int = 1000) -> list[tuple[bytes, bytes]]:
    base = time.time() - 6 * 3600
    out = []
    for i in range(n):
        e = i % entities
        step = i // entities
        ent = f"svc-{e:04d}"
        if e % 4 == 0:
            rec = {
                "ts": base + step * 15,
                "entity": ent,
                "metric": "container_memory_working_set_bytes",
                "value": 2e8 + (step % 40) * 1e6,
                "limit": 1e9,
            }
        elif e % 4 == 1:
            rec = {
                "ts": base + step * 15,
                "entity": ent,
                "metric": "queue_depth",
                "value": float(step % 50),
                "limit": 100.0,
            }
        elif e % 4 == 2:
            rec = {
                "ts": base + step * 15,
                "entity": ent,
                "metric": "http_request_duration_seconds",
                "value": 0.1 + (step % 13) * 0.001,
                "labels": {"route": "/api"},
            }
        else:
            rec = {
                "ts": base + step * 15,
                "entity": ent,
                "metric": "dependency_request_ok",
                "value": 1.0,
                "labels": {"dependency": "db"},
            }
        out.append((ent.encode(), orjson.dumps(rec)))
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=20,
        max_batch_size=1024 * 1024,
    )
    await p.start()
    try:
        futs = [await p.send(topic, v, key=k) for k, v in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


#: the fetch settings of ``selfheal.connectors.kafka.KafkaSource``, so the ceiling reads the same
#: way
FETCH = {
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "fetch_max_bytes": 32 * 1024 * 1024,
    "fetch_max_wait_ms": 50,
}


async def ceiling(bootstrap: str, topic: str, n: int) -> float:
    defaults = KafkaConfig()
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"ceil-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **FETCH,
    )
    await c.start()
    try:
        seen = 0
        t0 = None
        while seen < n:
            got = await c.getmany(
                timeout_ms=defaults.fetch_timeout_ms, max_records=defaults.max_batch
            )
            for msgs in got.values():
                if t0 is None and msgs:
                    t0 = time.perf_counter()
                for m in msgs:
                    orjson.loads(m.value)
                seen += len(msgs)
            if got:
                await c.commit()
        assert t0 is not None
        return n / (time.perf_counter() - t0)
    finally:
        await c.stop()


async def pipeline_rate(bootstrap: str, prefix: str, n: int, models: bool) -> float:
    topics = {
        name: f"{prefix}.{name}"
        for name in ("metrics", "logs", "anomalies", "repairs", "deadletter", "audit", "state")
    }
    s = load_settings(
        None,
        {
            "kafka": {
                "topics": topics,
                "group_id": f"pipe-{uuid.uuid4().hex[:6]}",
                "partitions": 3,
            },
            "http": {"enabled": False},
            "detection": {"models_enabled": models},
            "validation": {"max_past_seconds": 30 * 86400},
        },
    )
    runner = Runner(s, lambda: PolicyEngine(s.policy))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(bootstrap, stop=stop))
    t0 = None
    while runner.stats.messages < n:
        if task.done():
            task.result()
        if t0 is None and runner.stats.messages:
            t0 = time.perf_counter() - 0.0
            first = runner.stats.messages
        await asyncio.sleep(0.005)
    dt = time.perf_counter() - t0  # type: ignore[operator]
    stop.set()
    await task
    return (n - first) / dt


async def main_async(args: argparse.Namespace) -> str:
    with kafka_broker() as broker:
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        topic = f"{prefix}.metrics"
        await ensure_topics(broker.bootstrap, [topic, f"{prefix}.logs"], 3)
        records = make_samples(args.samples)
        await produce(broker.bootstrap, topic, records)
        ceil: list[float] = []
        pipe: list[float] = []

        async def measure_ceiling() -> None:
            ceil.append(await ceiling(broker.bootstrap, topic, args.samples))

        async def measure_pipeline() -> None:
            pipe.append(await pipeline_rate(broker.bootstrap, prefix, args.samples, args.models))

        for i in range(args.runs):
            # alternate which goes first, so neither always meets the warmer broker and heap
            order = [measure_ceiling, measure_pipeline]
            for measure in reversed(order) if i % 2 else order:
                await measure()
        c, p = statistics.median(ceil), statistics.median(pipe)
        what = "all detectors on" if args.models else "static rules only"
        lines = [
            f"### End-to-end throughput through the broker ({what})",
            "",
            f"Command: `.venv/bin/python benchmarks/throughput.py --samples {args.samples} "
            f"--runs {args.runs}{' --models' if args.models else ''}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, "
            f"broker: {broker.kind} (shared, noisy machine: medians of {args.runs} runs)",
            "",
            "| what | samples/s (median) | runs |",
            "| --- | ---: | --- |",
            f"| raw aiokafka consume + orjson decode (ceiling) | {c:,.0f} | "
            + ", ".join(f"{x:,.0f}" for x in ceil)
            + " |",
            f"| selfheal pipeline, one process | {p:,.0f} | "
            + ", ".join(f"{x:,.0f}" for x in pipe)
            + " |",
            "",
            f"Pipeline / ceiling: **{p / c:.2f}**",
        ]
        return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", action="store_true", help="all detectors on")
    ap.add_argument("--out", type=Path, help="also write the Markdown section here")
    args = ap.parse_args()
    text = asyncio.run(main_async(args))
    publish(text + "\n", args.out)


if __name__ == "__main__":
    main()
