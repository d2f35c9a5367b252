"""Checkpoint time and size at 10k and 100k series: the data-only codec vs pickle (same run).

One partition's stage holds N series (a fifth each of latency, memory, CPU, queue-depth and
error-counter series over N/5 entities, every series warmed with a few samples), built through
the real ``Pipeline``. Measured, median of ``--runs``: encode (``core.state.encode``, what a
checkpoint writes), decode + restore (what a takeover reads), the snapshot's bytes and its
record count on the state topic (chunks of ``CHUNK_BYTES``, each under Kafka's 1 MB default),
and a save + load round trip through the broker with a default-limits producer. Baseline: the
pickle + zlib snapshot of the same state document (``zlib.compress(pickle.dumps(doc), 1)``;
unsafe to load from a topic, shown for cost only).

Run: ``.venv/bin/python benchmarks/checkpoint.py --series 10000 100000 --runs 3``
(writes ``benchmarks/results/checkpoint.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selfheal.connectors.state_store import CHUNK_BYTES, KafkaStateStore  # noqa: E402
from selfheal.pipeline.core import state as snapshots  # noqa: E402
from selfheal.pipeline.core.config import Settings, load_settings  # noqa: E402
from selfheal.pipeline.core.policy import PolicyEngine  # noqa: E402
from selfheal.pipeline.core.stage import PartitionStage, Pipeline  # noqa: E402
from selfheal.pipeline.kernel.types import Envelope  # noqa: E402

from benchmarks.common import nproc  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "checkpoint.md"
T0 = 1_795_842_000.0
METRICS = (
    "http_request_duration_seconds",
    "container_memory_working_set_bytes",
    "cpu_seconds",
    "queue_depth",
    "errors_total",
)


def scale_settings(series: int) -> Settings:
    cap = max(series, 100_000)
    return load_settings(
        None,
        {
            "http": {"enabled": False},
            "detection": {"max_series": cap},
            # every entity of the state is new at once: admitted in one burst
            "validation": {"max_entities": cap, "new_entities_burst": float(cap)},
        },
    )


def _doc(i: int, k: int) -> dict[str, Any]:
    metric = METRICS[i % 5]
    doc: dict[str, Any] = {
        "ts": T0 + 30.0 * k + i * 1e-4,
        "entity": f"svc-{i // 5:06d}",
        "metric": metric,
        "value": 0.1 + (i % 7) * 0.01 + k * 0.001,
    }
    if i % 5 == 1:
        doc.update(value=1e8 + 1e5 * k, limit=1e9)
    elif i % 5 == 3:
        doc.update(value=10.0, limit=100.0)
    elif i % 5 == 4:
        doc.update(value=100.0 * k)
    return doc


def build_stage(series: int, samples: int = 3) -> tuple[Pipeline, PartitionStage]:
    """A replay pipeline whose partition 0 holds ``series`` warmed series."""
    s = scale_settings(series)
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    topic = s.kafka.topics.metrics
    offset = 0
    for k in range(samples):
        envs = []
        for i in range(series):
            envs.append(Envelope(topic, 0, offset, orjson.dumps(_doc(i, k))))
            offset += 1
        for j in range(0, len(envs), 5000):
            pipe.process(envs[j : j + 5000], None)
    return pipe, pipe.stages[0]


async def broker_round_trip(bootstrap: str, topic: str, blob: bytes) -> tuple[float, float]:
    """(save seconds, load seconds) through the broker with a default-limits producer."""
    from aiokafka import AIOKafkaProducer
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(bootstrap, [topic], 1, compacted=[topic])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    store = KafkaStateStore(bootstrap, topic, "bench")
    try:
        t = time.perf_counter()
        await store.save(producer, {0: blob})
        saved = time.perf_counter() - t
    finally:
        await producer.stop()
    t = time.perf_counter()
    got = await KafkaStateStore(bootstrap, topic, "bench").load([0])
    loaded = time.perf_counter() - t
    assert got == {0: blob}
    return saved, loaded


def _pickled(stage: Any) -> bytes:
    """The pickle baseline's bytes: the same state document the codec encodes, pickled (the
    stage itself does not pickle: its policy engine holds configuration and refuses)."""
    doc = snapshots.stage_state(stage)
    return zlib.compress(pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL), 1)


def measure(series: int, runs: int, bootstrap: str | None) -> dict[str, Any]:
    pipe, stage = build_stage(series)
    enc, dec, pk, unpk, save, load = [], [], [], [], [], []
    blob = b""
    for run in range(runs):
        t = time.perf_counter()
        blob = snapshots.encode(stage, {("m", 0): series})
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, state = snapshots.decode(blob)
        snapshots.restore(Pipeline(pipe.settings, pipe.policy_factory, live=False).stage(0), state)
        dec.append(time.perf_counter() - t)
        t = time.perf_counter()
        old = _pickled(stage)
        pk.append(time.perf_counter() - t)
        t = time.perf_counter()
        pickle.loads(zlib.decompress(old))  # our own bytes, in-process: the baseline's cost
        unpk.append(time.perf_counter() - t)
        if bootstrap:
            s, lo = asyncio.run(broker_round_trip(bootstrap, f"bench.state.{series}.{run}", blob))
            save.append(s)
            load.append(lo)
    med = statistics.median
    return {
        "series": series,
        "bytes": len(blob),
        "records": -(-len(blob) // CHUNK_BYTES) + 1,
        "encode": med(enc),
        "decode": med(dec),
        "pickle": med(pk),
        "unpickle": med(unpk),
        "pickle_bytes": len(old),
        "save": med(save) if save else None,
        "load": med(load) if load else None,
    }


def render(rows: list[dict[str, Any]], runs: int, broker: str) -> str:
    lines = [
        "#### Checkpoint time and size (one partition, data-only codec vs pickle)",
        "",
        f"Command: `.venv/bin/python benchmarks/checkpoint.py --series "
        f"{' '.join(str(r['series']) for r in rows)} --runs {runs}`  ",
        f"Machine: {platform.machine()}, {nproc()} cores, Python {platform.python_version()}, "
        f"broker: {broker} (shared, noisy machine: medians of {runs} runs)",
        "",
        "| series | snapshot | records on the topic | encode (checkpoint) | decode + restore "
        "| save to broker | load from broker | pickle+zlib baseline: write / read / size |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        save = f"{r['save']:.2f} s" if r["save"] is not None else "-"
        load = f"{r['load']:.2f} s" if r["load"] is not None else "-"
        lines.append(
            f"| {r['series']:,} | {r['bytes'] / 2**20:.1f} MiB | {r['records']} "
            f"| {r['encode']:.2f} s | {r['decode']:.2f} s | {save} | {load} "
            f"| {r['pickle']:.2f} s / {r['unpickle']:.2f} s / {r['pickle_bytes'] / 2**20:.1f} MiB |"
        )
    lines += [
        "",
        f"Records are chunks of at most {CHUNK_BYTES // 1024} KiB plus one manifest, each under "
        "Kafka's default 1 MB `message.max.bytes`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-broker", action="store_true", help="skip the broker round trip")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    if args.no_broker:
        for n in args.series:
            rows.append(measure(n, args.runs, None))
        broker = "none"
    else:
        from selfheal.connectors.broker import kafka_broker

        with kafka_broker() as handle:
            for n in args.series:
                rows.append(measure(n, args.runs, handle.bootstrap))
            broker = handle.kind
    text = render(rows, args.runs, broker)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
