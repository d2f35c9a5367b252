"""Scale-out throughput: 1, 2 and 3 ``selfheal run`` processes in one consumer group.

A backlog is put on a fresh topic (6 partitions, keyed by entity), then N pipeline processes
are started in one group and timed until the group's committed offsets reach the end of every
partition. Throughput = messages / (time to the last commit - time of the first member ready).
Median of ``--runs`` runs per N; the baseline (1 process) is measured in the same run and the
table reports the ratio, since absolute numbers depend on the (shared, 2-core) machine.

    .venv/bin/python benchmarks/scale_out.py [--messages 120000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from selfheal.connectors.broker import EmbeddedBroker, free_port  # noqa: E402
from selfheal.connectors.kafka import ensure_topics  # noqa: E402

from benchmarks.common import publish  # noqa: E402
from tests.spine_helpers import valid_samples  # noqa: E402
from tests.test_scale_out import (  # noqa: E402
    committed_offsets,
    config_with_port,
    group_settings,
    produce_keyed,
    scrape,
    start_pipeline,
    stop,
)

PARTITIONS = 6


async def produce_backlog(bootstrap: str, topic: str, n: int) -> dict[int, int]:
    return await produce_keyed(bootstrap, topic, valid_samples(n, entities=500))


async def one_run(bootstrap: str, procs_n: int, messages: int, tmp: Path) -> float:
    """Messages per second for ``procs_n`` processes in one group over a fresh backlog."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    s = group_settings(prefix, bootstrap, kafka={"partitions": PARTITIONS})
    t = s.kafka.topics
    await ensure_topics(
        bootstrap,
        [t.metrics, t.logs, t.anomalies, t.repairs, t.deadletter, t.audit, t.state],
        PARTITIONS,
        compacted=[t.state],
    )
    ends = await produce_backlog(bootstrap, t.metrics, messages)
    total = sum(ends.values())
    ports = [free_port() for _ in range(procs_n)]
    cfgs = [config_with_port(s, tmp / f"{prefix}-{i}.yaml", ports[i]) for i in range(procs_n)]
    procs = [start_pipeline(c, bootstrap, tmp / f"{prefix}-{i}.log") for i, c in enumerate(cfgs)]
    try:
        start = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if start is None and any(scrape(p, "/readyz")[0] == 200 for p in ports):
                start = time.monotonic()
            if start is not None:
                got = await committed_offsets(bootstrap, s.kafka.group_id, t.metrics, PARTITIONS)
                if all(got.get(p, 0) >= e for p, e in ends.items()):
                    return total / (time.monotonic() - start)
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"pipeline exited with {proc.returncode}")
            await asyncio.sleep(0.1)
        raise TimeoutError("the group did not finish the backlog in 300 s")
    finally:
        for proc in procs:
            stop(proc)


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=120_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale_out.md")
    args = ap.parse_args(argv)
    results: dict[int, list[float]] = {1: [], 2: [], 3: []}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            # interleave the sizes so a noisy neighbour hits all of them alike
            for n in results:
                rate = await one_run(broker.bootstrap, n, args.messages, Path(tmp))
                results[n].append(rate)
                print(f"{n} process(es): {rate:,.0f} msg/s", file=sys.stderr, flush=True)
    base = statistics.median(results[1])
    lines = [
        "## Scale-out: processes in one consumer group",
        "",
        f"Command: `.venv/bin/python benchmarks/scale_out.py --messages {args.messages} "
        f"--runs {args.runs}`",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared with other jobs), Python {platform.python_version()}, "
        "embedded Tansu broker on the same machine.",
        "",
        f"Input: {args.messages:,} metric samples (500 entities, keyed by entity) on "
        f"{PARTITIONS} partitions, already on the topic; time from the first member ready to "
        "the group's last commit; median of the runs.",
        "",
        "| processes | median msg/s | runs (msg/s) | ratio vs 1 process |",
        "| --- | --- | --- | --- |",
    ]
    for n, rates in results.items():
        med = statistics.median(rates)
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        lines.append(f"| {n} | {med:,.0f} | {runs} | {med / base:.2f}x |")
    lines += [
        "",
        "On 2 cores shared by the broker, the pipelines and other jobs, more than "
        "two processes cannot add CPU; the ratio, not the absolute rate, is the figure to read. "
        "Each added member also costs a rebalance and a snapshot restore at start.",
    ]
    text = "\n".join(lines) + "\n"
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
