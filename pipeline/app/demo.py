"""``selfheal demo``: embedded broker + simulated fleet + the pipeline, closed loop, with a summary.

The fleet (``selfheal.pipeline.app.simulator``) emits metrics and logs with one fault of every kind
on
its own service; the pipeline detects, decides and publishes repairs; the fleet reads the
repair topic and heals (restart clears a leak, rollback removes a regression...). A live view
shows anomalies and repairs as they happen; at the end a table scores every fault against the
ground truth. Event time runs faster than the clock (default: 6 simulated hours in about two
minutes), which is why the demo validates timestamps against the watermark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from selfheal.connectors.broker import BrokerHandle, EmbeddedBroker
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app.argtypes import positive_float, positive_int
from selfheal.pipeline.app.report import summarize
from selfheal.pipeline.app.runner import Runner
from selfheal.pipeline.app.simulator import FaultKind, FaultSpec, FleetConfig, default_schedule
from selfheal.pipeline.app.simulator_kafka import run_simulator
from selfheal.pipeline.core.config import Settings, load_settings
from selfheal.pipeline.core.policy import PolicyEngine

STEP_SECONDS = 15.0

#: what the demo changes from the shipped defaults, and why
DEMO_OVERRIDES: dict[str, Any] = {
    # simulated time runs ~180x faster than the clock: judge timestamps by the watermark
    "validation": {"time_reference": "watermark", "rate_per_second": 5.0, "burst": 100.0},
    "detection": {"tick_seconds": 15.0, "idle_grace_seconds": 5.0},
    "http": {"enabled": False},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfheal demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--duration",
        type=positive_float,
        default=120.0,
        help="wall-clock seconds of simulation (default 120)",
    )
    p.add_argument(
        "--services",
        type=positive_int,
        default=17,
        help="simulated services (17 fit every fault kind; default 17)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=12.0,
        help="simulated 15 s steps per wall second (default 12: 6 h in 2 min)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        help="folder for events.jsonl, truth.json, samples.jsonl, report.html",
    )
    p.add_argument("--bootstrap", help="use this broker instead of starting the embedded one")
    p.add_argument("--config", type=Path, help="YAML configuration applied over the demo's")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return p


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[BrokerHandle]:
    if bootstrap:
        yield BrokerHandle(bootstrap, "external")
        return
    with EmbeddedBroker() as b:
        yield BrokerHandle(b.bootstrap, "embedded")


class _Collector:
    """Reads the anomaly and repair topics like a downstream consumer would."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.events: dict[str, dict[str, Any]] = {}  # by id: duplicates collapse
        self.recent: list[dict[str, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await c.start()
        await c._client.force_metadata_update()
        tps = [
            TopicPartition(t, p)
            for t in self.topics
            for p in sorted(c.partitions_for_topic(t) or {0})
        ]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        self._consumer = c

    async def poll(self) -> int:
        assert self._consumer is not None
        got = await self._consumer.getmany(timeout_ms=100, max_records=5000)
        n = 0
        for msgs in got.values():
            for m in msgs:
                try:
                    ev = orjson.loads(m.value or b"")
                except orjson.JSONDecodeError:
                    continue
                if ev.get("id") not in self.events:
                    self.events[ev["id"]] = ev
                    self.recent.append(ev)
                    n += 1
        self.recent = self.recent[-12:]
        return n

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


def _view(progress: Progress, col: _Collector) -> Group:
    t = Table(title="latest anomalies and repairs", expand=True)
    for name in ("time", "entity", "event", "detail"):
        t.add_column(name)
    for ev in reversed(col.recent):
        d = ev.get("data", {})
        kind = ev["type"].removeprefix("io.selfheal.")
        if kind.startswith("anomaly."):
            detail = f"{d.get('severity')} score={d.get('score', 0):.3g} {d.get('metric', '')}"
            if d.get("forecast"):
                detail += f" eta={d['forecast']['eta_seconds'] / 60:.0f}min"
            style = "yellow"
        else:
            detail = (
                f"{d.get('mode')} {d.get('status')}{' predictive' if d.get('predictive') else ''}"
            )
            style = "green"
        t.add_row(ev.get("time", "")[11:19], ev.get("subject", ""), f"[{style}]{kind}[/]", detail)
    return Group(progress, t)


def _summary_table(summary: Any, false_repairs: list[dict[str, Any]]) -> Table:
    t = Table(title="faults vs ground truth")
    for name in (
        "entity",
        "fault",
        "detected by",
        "delay",
        "predictive lead",
        "cleared by",
        "recovery",
    ):
        t.add_column(name)

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v / 60:.1f} min"

    for f in summary.faults:
        t.add_row(
            f.entity,
            f.fault,
            f"[green]{f.detected_by}[/]" if f.detected else "[red]MISSED[/]",
            fmt(f.detection_delay_s),
            fmt(f.predictive_lead_s),
            f.cleared_by or "-",
            fmt(f.time_to_recovery_s),
        )
    t.caption = (
        f"{summary.detected}/{len(summary.faults)} faults detected; "
        f"{summary.anomalies} anomalies, {summary.false_alarms} outside fault windows; "
        f"{summary.repairs_enforced} repairs executed ({summary.predictive_repairs} "
        f"predictive), {len(false_repairs)} on healthy services; "
        f"{summary.recovered} faults cleared by a repair"
    )
    return t


def _schedule(services: int, span: float, start: float) -> list[FaultSpec]:
    """The simulator's default schedule, with a leak slow enough to be predicted.

    A leak that fills memory in minutes is a crash, not a leak: the memory-growth model wants
    sustained growth over a window comparable to the forecast, so the demo's leak takes half
    of the remaining run (at least 2 h) to reach the limit.
    """
    out = []
    for f in default_schedule(services, span, start):
        if f.fault is FaultKind.MEMORY_LEAK:
            remaining = start + span - f.start
            f = dataclasses.replace(f, time_to_breach=max(7200.0, 0.6 * remaining))
        out.append(f)
    return out


def demo_settings(prefix: str, config: Path | None) -> Settings:
    over: dict[str, Any] = {
        **DEMO_OVERRIDES,
        "kafka": {
            "group_id": f"{prefix}-pipeline",
            "partitions": 3,
            "topics": {
                name: f"{prefix}.{name}"
                for name in (
                    "metrics",
                    "logs",
                    "anomalies",
                    "repairs",
                    "deadletter",
                    "audit",
                    "state",
                )
            },
        },
    }
    return load_settings(config, over) if config else load_settings(None, over)


async def run_demo(args: argparse.Namespace, console: Console) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = max(1, round(args.duration * args.rate))
    event_span = steps * STEP_SECONDS
    start = float(int(time.time() // 3600 * 3600))
    fleet = FleetConfig(
        services=args.services,
        seed=args.seed,
        start=start,
        step_s=STEP_SECONDS,
        faults=tuple(_schedule(args.services, event_span, start)),
    )
    with _broker(args.bootstrap) as broker:
        prefix = "selfheal" if broker.kind == "embedded" else f"demo{uuid.uuid4().hex[:6]}"
        settings = demo_settings(prefix, args.config)
        settings = settings.model_copy(
            update={
                "runtime": settings.runtime.model_copy(update={"audit_path": out / "audit.jsonl"})
            }
        )
        (out / "audit.jsonl").unlink(missing_ok=True)
        t = settings.kafka.topics
        console.print(
            f"[bold]selfheal demo[/]: {args.services} services, {steps} steps of "
            f"{STEP_SECONDS:.0f} s ({event_span / 3600:.1f} h of event time) at "
            f"{args.rate:g} steps/s; broker {broker.kind} at {broker.bootstrap}"
        )
        await ensure_topics(
            broker.bootstrap,
            [t.metrics, t.logs, t.anomalies, t.repairs, t.deadletter, t.audit, t.state],
            settings.kafka.partitions,
        )
        runner = Runner(settings, lambda: PolicyEngine(settings.policy))
        stop = asyncio.Event()
        run_task = asyncio.create_task(runner.run(broker.bootstrap, stop=stop))
        for _ in range(600):  # the consumer group join takes a few seconds
            if runner.health.ready or run_task.done():
                break
            await asyncio.sleep(0.1)
        if run_task.done():
            run_task.result()
        col = _Collector(broker.bootstrap, [t.anomalies, t.repairs])
        await col.start()
        progress = Progress(
            TextColumn("[bold]simulated time"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
        )
        task_id = progress.add_task("sim", total=event_span)
        sim = asyncio.create_task(
            run_simulator(
                broker.bootstrap,
                fleet,
                steps=steps,
                rate=args.rate,
                metrics_topic=t.metrics,
                logs_topic=t.logs,
                repairs_topic=t.repairs,
                truth_path=out / "truth.json",
                samples_path=out / "samples.jsonl",
                create_topics=False,
            )
        )
        with Live(_view(progress, col), console=console, refresh_per_second=4) as live:
            while not sim.done():
                await col.poll()
                marks = [st.watermark for st in runner.pipeline.stages.values()]
                if marks:
                    progress.update(task_id, completed=max(0.0, max(marks) - start))
                live.update(_view(progress, col))
                if run_task.done():
                    run_task.result()
            stats = sim.result()
            expected = stats.samples + stats.logs
            # drain: let the pipeline catch up with everything the fleet produced
            deadline = time.monotonic() + 60
            while runner.stats.messages < expected and time.monotonic() < deadline:
                await col.poll()
                live.update(_view(progress, col))
            progress.update(task_id, completed=event_span)
            for _ in range(20):
                await col.poll()
            live.update(_view(progress, col))
        stop.set()
        await run_task
        for _ in range(10):
            await col.poll()
        await col.stop()

    events = sorted(col.events.values(), key=lambda e: (e.get("time", ""), e["id"]))
    (out / "events.jsonl").write_bytes(
        b"".join(orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE) for e in events)
    )
    truth = orjson.loads((out / "truth.json").read_bytes())
    summary = summarize(events, truth)
    faulty = {f["entity"] for f in truth["faults"]}
    false_repairs = [
        e
        for e in events
        if e["type"].startswith("io.selfheal.repair.")
        and e["subject"] not in faulty
        and not e["subject"].startswith("storm:")
        and e["data"].get("status") == "execute"
    ]
    console.print(_summary_table(summary, false_repairs))
    console.print(
        f"pipeline: {runner.stats.messages} messages, {runner.stats.anomalies} "
        f"anomalies, {runner.stats.repairs} repairs, {runner.stats.rejects} dead letters; "
        f"fleet applied {stats.repairs_applied} repairs"
    )
    if not args.no_report:
        from selfheal.pipeline.app.report import main as report_main

        report_main(
            [
                str(out / "events.jsonl"),
                "--truth",
                str(out / "truth.json"),
                "--samples",
                str(out / "samples.jsonl"),
                "--out",
                str(out / "report.html"),
            ]
        )
        console.print(f"report: {out / 'report.html'}")
    console.print(
        f"events: {out / 'events.jsonl'}  audit: {out / 'audit.jsonl'}  "
        f"(selfheal audit {out / 'audit.jsonl'})"
    )
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("drain3").setLevel(logging.WARNING)
    console = Console()
    return asyncio.run(run_demo(args, console))
