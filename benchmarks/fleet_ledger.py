"""What a fleet-wide verdict costs: the wait of one repair need on the Kafka fleet ledger.

    .venv/bin/python benchmarks/fleet_ledger.py [--requests N] [--runs R] [--out FILE]

Two ``KafkaFleet`` gates (as two processes would) alternate ``request`` calls on one ledger
topic; each call produces the need and waits until its own reader has applied the log up to
it. The baseline, measured in the same run on the same broker, is one plain aiokafka
``send_and_wait`` (acks=all) to a one-partition topic: the produce round trip a verdict cannot
avoid. Prints a Markdown section with medians and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer
from selfheal.connectors.broker import kafka_broker
from selfheal.connectors.fleet_ledger import KafkaFleet
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.fleet import FleetArbiter
from selfheal.pipeline.kernel.types import FleetRequest, RepairAction

from benchmarks.common import nproc, publish


def _arbiter() -> FleetArbiter:
    # a budget and a storm threshold no run reaches: every request is a full verdict
    return FleetArbiter(10**9, 600.0, 10**9, 300.0, cap=10**6, remember=10**6)


async def _ledger_run(bootstrap: str, n: int) -> list[float]:
    topic = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], 1)
    gates = [KafkaFleet(bootstrap, topic, "bench", _arbiter()) for _ in range(2)]
    for g in gates:
        await g.start()
    waits: list[float] = []
    try:
        for i in range(n):
            req = FleetRequest(f"d{i}", 1000.0 + i, f"e{i}", RepairAction.RESTART, True, f"s{i}")
            started = time.perf_counter()
            gates[i % 2].request(req)
            waits.append(time.perf_counter() - started)
    finally:
        for g in gates:
            await g.stop()
    return waits


async def _produce_run(bootstrap: str, n: int) -> list[float]:
    topic = f"bench-produce-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], 1)
    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
    )
    await p.start()
    waits: list[float] = []
    try:
        for i in range(n):
            started = time.perf_counter()
            await p.send_and_wait(topic, b'{"need": %d}' % i, partition=0)
            waits.append(time.perf_counter() - started)
    finally:
        await p.stop()
    return waits


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the Markdown section here")
    args = ap.parse_args(argv)
    ledger: list[float] = []
    produce: list[float] = []
    with kafka_broker() as broker:
        for _ in range(args.runs):
            # alternate, so drift in the machine's load hits both alike
            produce.append(statistics.median(await _produce_run(broker.bootstrap, args.requests)))
            ledger.append(statistics.median(await _ledger_run(broker.bootstrap, args.requests)))
        kind = broker.kind
    ms = statistics.median(ledger) * 1000
    base = statistics.median(produce) * 1000
    lines = [
        "## Fleet ledger: the wait for a fleet-wide verdict (#4)",
        "",
        f"Command: `.venv/bin/python benchmarks/fleet_ledger.py --requests {args.requests} "
        f"--runs {args.runs}`",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {nproc()} CPUs (shared with other "
        f"jobs), Python {platform.python_version()}, {kind} broker on the same machine.",
        "",
        f"Two gates alternate {args.requests} requests per run on one ledger topic; the "
        "baseline is one acks=all produce round trip on the same broker, in the same run.",
        "",
        "| what | median wait (ms) | run medians (ms) |",
        "| --- | ---: | --- |",
        f"| produce round trip (baseline) | {base:.2f} | "
        + ", ".join(f"{x * 1000:.2f}" for x in produce)
        + " |",
        f"| fleet verdict (produce + read back) | {ms:.2f} | "
        + ", ".join(f"{x * 1000:.2f}" for x in ledger)
        + " |",
        "",
        f"Verdict / produce round trip: **{ms / base:.2f}x**. A need covered by a known storm "
        "does not wait; every other need waits once.",
        "",
    ]
    text = "\n".join(lines)
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
