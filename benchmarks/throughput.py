"""End-to-end throughput through a real broker, next to the raw aiokafka ceiling.

    .venv/bin/python benchmarks/throughput.py [--samples N] [--runs R] [--models]

Produces N native samples (1,000 entities, 3 partitions) once, then per run measures
(a) the ceiling: a plain aiokafka consumer group reading the topic and ``orjson.loads`` on every
value, committing after every batch, and (b) the selfheal runner (static rules only by default;
``--models`` turns on every detector and switches to a realistic mix: metrics, counters and
logs on two topics, a warm-up past every model's learning period that is not timed, then a
timed part where a few entities turn faulty, see ``make_mix``) consuming the same topics with a
fresh group until it has processed every message (outputs written and acknowledged; offsets
committed at its snapshot checkpoints). Both use the same fetch settings and batch size, both
clocks start at the first (timed) batch, and the two alternate in going first. Prints a
Markdown section with medians and the ratio.
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
from dataclasses import dataclass
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


def hours_ago(hours: int) -> float:
    """The start of the hour ``hours`` hours ago: a mix stamped from there falls on the same
    bucket boundaries in every invocation (see ``make_mix``)."""
    return float((int(time.time()) // 3600 - hours) * 3600)


def make_samples(n: int, entities: int = 1000) -> list[tuple[bytes, bytes]]:
    base = hours_ago(6)
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


#: learning periods the ``--models`` mix streams past before the clock starts, in 15 s steps:
#: the memory forecast's 2 h of history (480), the latency model's 300 points, the error-rate
#: baseline (60 one-minute buckets = 240) and the log analyzer's 30 min / 500 lines
WARM_STEPS = 500
_LOGS = (
    ("INFO", "GET /api/items/{} 200 in {} ms"),
    ("INFO", "cache refresh done, {} keys"),
    ("WARNING", "slow query on shard {} took {} ms"),
    ("ERROR", "upstream 10.0.{}.{}:8080 reset the connection"),
)


def _mix_step(e: int, step: int, base: float, faulty: bool) -> list[tuple[str, dict]]:
    """One entity's records for one 15 s step: 6 metric samples (2 counters) + 2 log lines.

    Faulty entities (past the warm-up) get a latency regression (x8), a memory leak towards
    the limit, and a 30 % error rate, so findings, repairs and fleet-ledger traffic happen."""
    ts, ent = base + step * 15, f"svc-{e:03d}"
    late = faulty and step >= WARM_STEPS + 50
    lat = (0.1 + (step % 13) * 0.002 + (e % 7) * 0.01) * (8.0 if late else 1.0)
    mem = 2e8 + (step % 40) * 1e6 + (max(0, step - WARM_STEPS) * 2e6 if faulty else 0.0)
    reqs = 100 * (step + 1)
    errs = (step + 1) // 2 + (30 * max(0, step - WARM_STEPS - 50) if late else 0)
    lab = {"route": "/api"}
    out: list[tuple[str, dict]] = [
        ("metrics", {"ts": ts, "entity": ent, "metric": "container_memory_working_set_bytes",
                     "value": mem, "limit": 1e9}),
        ("metrics", {"ts": ts, "entity": ent, "metric": "queue_depth",
                     "value": float(step % 50), "limit": 100.0}),
        ("metrics", {"ts": ts, "entity": ent, "metric": "http_request_duration_seconds",
                     "value": lat, "labels": lab}),
        ("metrics", {"ts": ts, "entity": ent, "metric": "dependency_request_ok", "value": 1.0,
                     "labels": {"dependency": "db"}}),
        ("metrics", {"ts": ts, "entity": ent, "metric": "requests_total", "value": float(reqs)}),
        ("metrics", {"ts": ts, "entity": ent, "metric": "errors_total", "value": float(errs)}),
    ]  # fmt: skip
    for k in range(2):
        level, tpl = _LOGS[(step * 3 + k + e) % 3 if not late else 3 - k % 2]
        msg = tpl.format(*((step * 7 + e + k) % 250 for _ in range(tpl.count("{}"))))
        out.append(("logs", {"ts": ts + k, "entity": ent, "level": level, "message": msg}))
    return out


def make_mix(n: int, entities: int = 40, faulty: int = 4) -> list[tuple[str, bytes, bytes]]:
    """The ``--models`` mix: ``WARM_STEPS`` of warm-up, then about ``n`` timed records.

    Stamped from the start of an hour: the detectors bucket on absolute event time (the memory
    forecast's floors are 5-minute minima, the error rate's buckets whole minutes), so stamps
    relative to the wall clock put the memory sawtooth (40 steps, 10 min) in a different phase
    against the buckets in each invocation, and which findings fire changed with it (112
    anomalies / 13 repairs at some phases, 152 / 29 at others)."""
    base = hours_ago(24)
    steps = WARM_STEPS + max(1, n // (entities * 8))
    out = []
    for step in range(steps):
        for e in range(entities):
            for kind, rec in _mix_step(e, step, base, e < faulty):
                out.append((kind, rec["entity"].encode(), orjson.dumps(rec)))
    return out


async def produce(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> None:
    """``records``: (topic, key, value)."""
    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=20,
        max_batch_size=1024 * 1024,
    )
    await p.start()
    try:
        futs = [await p.send(topic, v, key=k) for topic, k, v in records]
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


async def ceiling(bootstrap: str, topics: list[str], n: int, warm: int) -> float:
    """Records/s of a plain consumer group over ``topics``, clock started after ``warm``."""
    defaults = KafkaConfig()
    c = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"ceil-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **FETCH,
    )
    await c.start()
    try:
        seen, first = 0, 0
        t0 = None
        while seen < n:
            got = await c.getmany(
                timeout_ms=defaults.fetch_timeout_ms, max_records=defaults.max_batch
            )
            for msgs in got.values():
                if t0 is None and msgs and seen >= warm:
                    t0, first = time.perf_counter(), seen
                for m in msgs:
                    orjson.loads(m.value)
                seen += len(msgs)
            if got:
                await c.commit()
        assert t0 is not None
        return (n - first) / (time.perf_counter() - t0)
    finally:
        await c.stop()


@dataclass
class PipeRun:
    rate: float
    anomalies: int
    repairs: int
    rejects: int


async def pipeline_rate(bootstrap: str, prefix: str, n: int, models: bool, warm: int) -> PipeRun:
    topics = {
        name: f"{prefix}.{name}"
        for name in ("metrics", "logs", "anomalies", "repairs", "deadletter", "audit", "state")
    }
    topics["fleet"] = f"{prefix}.fleet.{uuid.uuid4().hex[:6]}"  # a fresh repair ledger per run
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
            # the records are days old; the guard's rate limit keeps its defaults (the source
            # reads the metrics and logs topics side by side in time, connectors/aligner.py)
            "validation": {"max_past_seconds": 30 * 86400},
        },
    )
    runner = Runner(s, lambda: PolicyEngine(s.policy))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(bootstrap, stop=stop))
    t0, first = None, 0
    while runner.stats.messages < n:
        if task.done():
            task.result()
        if t0 is None and runner.stats.messages > warm:
            t0, first = time.perf_counter(), runner.stats.messages
        await asyncio.sleep(0.005)
    dt = time.perf_counter() - t0  # type: ignore[operator]
    stop.set()
    await task
    stats = runner.stats
    return PipeRun((n - first) / dt, stats.anomalies, stats.repairs, stats.rejects)


async def main_async(args: argparse.Namespace) -> str:
    with kafka_broker() as broker:
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        topic, logs = f"{prefix}.metrics", f"{prefix}.logs"
        await ensure_topics(broker.bootstrap, [topic, logs], 3)
        if args.models:
            mixed = make_mix(args.samples)
            records = [(topic if kind == "metrics" else logs, k, v) for kind, k, v in mixed]
            warm = len(records) - args.samples
        else:
            records = [(topic, k, v) for k, v in make_samples(args.samples)]
            warm = 0
        await produce(broker.bootstrap, records)
        n = len(records)
        ceil: list[float] = []
        runs: list[PipeRun] = []

        async def measure_ceiling() -> None:
            ceil.append(await ceiling(broker.bootstrap, [topic, logs], n, warm))

        async def measure_pipeline() -> None:
            runs.append(await pipeline_rate(broker.bootstrap, prefix, n, args.models, warm))

        for i in range(args.runs):
            # alternate which goes first, so neither always meets the warmer broker and heap
            order = [measure_ceiling, measure_pipeline]
            for measure in reversed(order) if i % 2 else order:
                await measure()
        pipe = [r.rate for r in runs]
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
        if args.models:
            lines += [
                "",
                f"Mix: {n:,} records ({warm:,} of warm-up, not timed: every model past its "
                f"learning period), 40 entities x 15 s steps from the start of the hour 24 h "
                "before the run x (memory with limit, queue depth, "
                "request latency, dependency health, `requests_total` / `errors_total` "
                "counters, 2 log lines); 4 entities turn faulty after the warm-up (latency x8, "
                "memory leak, 30 % errors and error logs). Per pipeline run: "
                + ", ".join(
                    f"{r.anomalies} anomalies / {r.repairs} repairs / {r.rejects} dead letters"
                    for r in runs
                )
                + " (repairs go through the fleet ledger topic). Rates count the timed records. "
                "The guard runs with its default rate limit: the source reads the metrics and "
                "logs topics side by side in time (`connectors/aligner.py`).",
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
