"""What one shared incident book costs: the wait of one anomaly note on the Kafka incident log.

    .venv/bin/python benchmarks/incident_log.py [--notes N] [--runs R] [--out FILE]

Two processes' ``IncidentLog``s over ``KafkaIncidentLog`` (as two ``selfheal run`` processes
would) alternate anomaly notes on one log topic; each note is produced and waited for until its
own reader has applied the log up to it (then its incident events and repair plan are known),
alone or with the other notes of its batch (``--batch``).
The notes are a fleet's: 60 entities of 20 services, callers and callees, so incidents open,
grow and resolve as they go. Baselines measured in the same run: one plain aiokafka
``send_and_wait`` (acks=all) to a one-partition topic (the produce round trip a note cannot
avoid) and the same notes through the local log a replay uses (no broker). Prints a Markdown
section with medians.
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

from selfheal.connectors.broker import kafka_broker
from selfheal.connectors.incident_log import KafkaIncidentLog
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.incident_log import IncidentArbiter, IncidentLog
from selfheal.pipeline.core.incidents import AnomalyNote
from selfheal.pipeline.kernel.types import AnomalyKind, Severity

from benchmarks.common import nproc, publish
from benchmarks.fleet_ledger import _produce_run


def _note(i: int) -> AnomalyNote:
    service = i % 20
    callee = f"svc{(service + 1) % 20}-0"
    kind = AnomalyKind.HEALTH_CHECK_FAILED if i % 3 == 0 else AnomalyKind.BREAKER_OPEN
    entity = f"svc{service}-{i % 3}"
    return AnomalyNote(
        f"a{i}", 1000.0 + 5.0 * i, entity, kind, Severity.CRITICAL, "m", f"svc{service}", None,
        (callee,),
    )  # fmt: skip


def _local_run(n: int) -> list[float]:
    log = IncidentLog.local()
    waits = []
    for i in range(n):
        started = time.perf_counter()
        log.note(_note(i))
        waits.append(time.perf_counter() - started)
    return waits


async def _log_run(bootstrap: str, n: int, batch: int = 1) -> list[float]:
    """Per note: its wait alone (``batch`` 1), or its batch's wait divided by ``batch`` (the
    notes of one stage batch are logged at once, ``IncidentLog.prefetch``)."""
    topic = f"bench-incidents-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], 1)
    arbiters = [IncidentArbiter(None, "bench") for _ in range(2)]
    transports = [KafkaIncidentLog(bootstrap, topic, "bench", a.apply_raw) for a in arbiters]
    for t in transports:
        await t.start()
    logs = [IncidentLog(a, t, clock=time.time) for a, t in zip(arbiters, transports, strict=True)]
    waits: list[float] = []
    try:
        for k, i in enumerate(range(0, n, batch)):
            notes = [_note(j) for j in range(i, min(i + batch, n))]
            log = logs[k % 2]
            started = time.perf_counter()
            if batch > 1:
                log.prefetch(notes)
            for note in notes:
                log.note(note)
            waits.append((time.perf_counter() - started) / len(notes))
    finally:
        for t in transports:
            await t.stop()
    return waits


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=20, help="notes per stage batch (prefetch)")
    ap.add_argument("--out", type=Path, help="also write the Markdown section here")
    args = ap.parse_args(argv)
    shared: list[float] = []
    batched: list[float] = []
    produce: list[float] = []
    local = [statistics.median(_local_run(args.notes)) for _ in range(args.runs)]
    with kafka_broker() as broker:
        for _ in range(args.runs):
            # alternate, so drift in the machine's load hits both alike
            produce.append(statistics.median(await _produce_run(broker.bootstrap, args.notes)))
            shared.append(statistics.median(await _log_run(broker.bootstrap, args.notes)))
            batched.append(
                statistics.median(await _log_run(broker.bootstrap, args.notes, args.batch))
            )
        kind = broker.kind

    def row(what: str, runs: list[float]) -> str:
        cells = ", ".join(f"{x * 1000:.3f}" for x in runs)
        return f"| {what} | {statistics.median(runs) * 1000:.3f} | {cells} |"

    ms = statistics.median(shared) * 1000
    base = statistics.median(produce) * 1000
    lines = [
        "## Incident log: the wait for one anomaly note (#17)",
        "",
        f"Command: `.venv/bin/python benchmarks/incident_log.py --notes {args.notes} "
        f"--runs {args.runs} --batch {args.batch}`",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {nproc()} CPUs (shared with other "
        f"jobs), Python {platform.python_version()}, {kind} broker on the same machine.",
        "",
        f"Two processes' logs alternate {args.notes} notes per run on one topic; baselines in the "
        "same run: one acks=all produce round trip, and the local log of a replay.",
        "",
        "| what | median per note (ms) | run medians (ms) |",
        "| --- | ---: | --- |",
        row("local log, call order (replay)", local),
        row("produce round trip (baseline)", produce),
        row("shared note (produce + read back + apply)", shared),
        row(f"shared note in a batch of {args.batch} (one wait per batch)", batched),
        "",
        f"Shared note / produce round trip: **{ms / base:.2f}x**. A stage batch's anomalies wait "
        "once together; a redelivered one does not wait (its outcome is known).",
        "",
    ]
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
