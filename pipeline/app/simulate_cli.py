"""``selfheal simulate``: run the simulated fleet against a Kafka broker.

Usage: ``selfheal simulate --bootstrap HOST:PORT [--services N] [--duration S] [--rate STEPS_PER_S]
[--seed N] [--truth FILE]``. ``--duration`` is event time; the fault schedule is
``default_schedule`` over it. Ctrl-C stops after the current batch and still writes the truth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
import time
from pathlib import Path

from selfheal.pipeline.app.argtypes import bootstrap, positive_float, positive_int
from selfheal.pipeline.app.simulator import (
    DEFAULT_START,
    MIN_SERVICES_FOR_ALL_FAULTS,
    FleetConfig,
    default_schedule,
)
from selfheal.pipeline.app.simulator_kafka import SimStats, run_simulator


def _start(text: str) -> float:
    if text == "now":
        return float(int(time.time()))
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"epoch seconds or 'now', not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfheal simulate",
        description="Simulate a service fleet with scheduled faults; apply repairs it is sent.",
    )
    p.add_argument(
        "--bootstrap", type=bootstrap, required=True, metavar="HOST:PORT", help="Kafka bootstrap"
    )
    p.add_argument(
        "--services",
        type=positive_int,
        default=MIN_SERVICES_FOR_ALL_FAULTS,
        metavar="N",
        help="fleet size (default %(default)s: every fault kind once)",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=7200.0,
        metavar="S",
        help="event-time seconds to simulate (default %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        metavar="STEPS_PER_S",
        help="batches per wall-clock second (default: as fast as possible)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument(
        "--step",
        type=positive_float,
        default=15.0,
        metavar="S",
        help="event-time seconds between samples (default %(default)s)",
    )
    p.add_argument(
        "--start",
        type=_start,
        default=DEFAULT_START,
        metavar="EPOCH|now",
        help="event time of the first batch (default %(default)s)",
    )
    p.add_argument(
        "--truth",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the ground truth JSON here at the end",
    )
    p.add_argument(
        "--samples",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write every metric sample as JSON lines (for selfheal report)",
    )
    p.add_argument("--metrics-topic", default="selfheal.metrics")
    p.add_argument("--logs-topic", default="selfheal.logs")
    p.add_argument("--repairs-topic", default="selfheal.repairs")
    return p


def _summary(stats: SimStats) -> str:
    lines = [
        f"simulated {stats.steps} steps in {stats.wall_seconds:.1f}s: {stats.samples} samples, "
        f"{stats.logs} log lines; repairs received {stats.repairs_received}, applied "
        f"{stats.repairs_applied}, ignored {stats.repairs_ignored}",
    ]
    for f in stats.truth:
        how = (
            f"cleared by {f['cleared_by']}"
            if f["cleared_by"]
            else ("ended" if f["end"] is not None else "still active")
        )
        lines.append(f"  {f['entity']:<14} {f['fault']:<22} {how}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors exit 2, --help 0
        return int(exc.code or 0)
    steps = math.ceil(args.duration / args.step)
    config = FleetConfig(
        services=args.services,
        seed=args.seed,
        start=args.start,
        step_s=args.step,
        faults=tuple(default_schedule(args.services, args.duration, args.start)),
    )

    async def run() -> SimStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await run_simulator(
            args.bootstrap,
            config,
            steps=steps,
            rate=args.rate,
            metrics_topic=args.metrics_topic,
            logs_topic=args.logs_topic,
            repairs_topic=args.repairs_topic,
            truth_path=args.truth,
            stop=stop,
            samples_path=args.samples,
        )

    try:
        stats = asyncio.run(run())
    except (OSError, RuntimeError) as exc:
        print(f"selfheal simulate: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # aiokafka connection errors (KafkaConnectionError etc.)
        print(f"selfheal simulate: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(_summary(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
