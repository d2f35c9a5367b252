"""selfheal demo: embedded broker, simulated fleet and pipeline in a closed loop, with a summary.

The fleet (``selfheal.pipeline.app.simulator``) emits metrics and logs with one fault of every
kind on its own service, and three healthy services call the one whose health checks fail (a
dependency failing behind its callers: one incident, its cause ranked first); the pipeline
detects, groups anomalies into incidents, decides and publishes repairs; the fleet reads the
repair topic and heals (restart clears a leak, rollback removes a regression...). A live view
(``selfheal.pipeline.app.demo_view``) shows incidents first with their anomalies under them,
then services, counters and events as they happen; at the end the incidents again, then one
summary scoring every fault against the ground truth. Event time runs faster
than the clock (default: 6 simulated hours in about two minutes), which is why the demo
validates timestamps against the watermark. Ctrl-C ends early and cleanly: the summary and the
report cover the part that ran (exit code 130).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table
from selfheal.connectors.broker import BrokerHandle, EmbeddedBroker
from selfheal.connectors.http_server import MetricsServer
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app.argtypes import bootstrap, port, positive_float, positive_int
from selfheal.pipeline.app.console import serve
from selfheal.pipeline.app.demo_view import (
    DemoState,
    counters_line,
    deadletter_text,
    incident_table,
    live_view,
    progress_line,
)
from selfheal.pipeline.app.report import Summary, summarize
from selfheal.pipeline.app.runner import Runner
from selfheal.pipeline.app.sim_plan import default_calls
from selfheal.pipeline.app.simulator import (
    FaultKind,
    FaultSpec,
    FleetConfig,
    default_schedule,
    service_names,
)
from selfheal.pipeline.app.simulator_kafka import SimStats, run_simulator
from selfheal.pipeline.app.status import _by_label
from selfheal.pipeline.app.wiring import SelfhealProcess
from selfheal.pipeline.core.config import Settings, load_settings
from selfheal.pipeline.core.policy import PolicyEngine

STEP_SECONDS = 15.0
#: how far (event time) the fleet may run ahead of the pipeline: on a busy machine the demo
#: slows down instead of delivering repairs hours of simulated time after their decision
MAX_AHEAD_SECONDS = 900.0

#: what the demo changes from the shipped defaults, and why
DEMO_OVERRIDES: dict[str, Any] = {
    # simulated time runs ~180x faster than the clock: judge timestamps by the watermark
    "validation": {"time_reference": "watermark", "rate_per_second": 5.0, "burst": 100.0},
    # absence is judged from the watermark (the other services keep it moving); the clock
    # takes over only after a long silence: a few seconds of stalled consumption on a busy
    # machine are minutes of simulated time, and must not read as every loop stuck at once
    "detection": {"tick_seconds": 15.0, "idle_grace_seconds": 60.0},
    "http": {"enabled": False},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfheal demo",
        description=__doc__.splitlines()[0].removeprefix("selfheal demo: "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=120.0,
        metavar="S",
        help="wall-clock seconds of simulation",
    )
    p.add_argument(
        "--services",
        type=positive_int,
        default=17,
        metavar="N",
        help="simulated services (17 fit every fault kind once)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=12.0,
        metavar="R",
        help="simulated 15 s steps per wall second (12: 6 h in 2 min)",
    )
    p.add_argument("--seed", type=int, default=7, help="random seed of the fleet")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        metavar="DIR",
        help="folder for events.jsonl, audit.jsonl, truth.json, samples.jsonl, report.html",
    )
    p.add_argument(
        "--bootstrap",
        type=bootstrap,
        metavar="HOST:PORT",
        help="use this broker instead of starting the embedded one (default: embedded)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML configuration applied over the demo's (default: none)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument(
        "--console-port",
        type=port,
        default=9464,
        metavar="P",
        help="operator console on http://127.0.0.1:P/console (a free port if P is taken; "
        "0: any free port)",
    )
    p.add_argument("--no-console", action="store_true", help="no operator console")
    return p


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[BrokerHandle]:
    if bootstrap:
        yield BrokerHandle(bootstrap, "external")
        return
    with EmbeddedBroker() as b:
        yield BrokerHandle(b.bootstrap, "embedded")


class _Collector:
    """Reads the anomaly, repair and audit topics like a downstream consumer would."""

    def __init__(self, bootstrap: str, topics: list[str], audit: str, state: DemoState) -> None:
        self.bootstrap = bootstrap
        self.topics = [*topics, audit]
        self.audit = audit
        self.state = state
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
        for tp, msgs in got.items():
            for m in msgs:
                try:
                    rec = orjson.loads(m.value or b"")
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(rec, dict):
                    continue
                if tp.topic == self.audit:
                    self.state.add_audit(rec)
                else:
                    n += self.state.add(rec)
        return n

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


def _summary_table(summary: Summary) -> Table:
    t = Table(title="faults vs ground truth (times are event time)")
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
            f.cleared_by or "[red]never[/]",
            fmt(f.time_to_recovery_s),
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
                    "incidents",
                )
            },
        },
    }
    return load_settings(config, over) if config else load_settings(None, over)


@dataclasses.dataclass
class _Run:
    """One demo run's moving parts (shared by the watch loop and the summary)."""

    args: argparse.Namespace
    console: Console
    state: DemoState
    runner: Runner
    collector: _Collector
    interrupted: asyncio.Event
    started: float = dataclasses.field(default_factory=time.monotonic)

    def deadletters(self) -> dict[str, float]:
        return _by_label(self.runner.metrics.registry, "deadletter_messages_total", "reason")

    def counts(self) -> tuple[int, int]:
        # the pipeline's event time drives the progress, also before the first anomaly
        marks = [st.watermark for st in self.runner.pipeline.stages.values()]
        if marks and max(marks) > self.state.watermark:
            self.state.watermark = max(marks)
        return self.runner.stats.messages, self.runner.stats.rejects


async def _watch(run: _Run, sim: asyncio.Task[SimStats], run_task: asyncio.Task[Any]) -> None:
    """Show progress until the fleet is done (then drain) or Ctrl-C; live or plain lines."""
    live = None
    if run.console.is_terminal:
        live = Live(
            live_view(run.state, run.started, *run.counts()),
            console=run.console,
            refresh_per_second=4,
        )
    last_line = 0.0
    with live if live is not None else contextlib.nullcontext():
        while not sim.done() and not run.interrupted.is_set():
            await run.collector.poll()
            if run_task.done():
                run_task.result()  # a crashed pipeline ends the demo with its error
            if live is not None:
                live.update(live_view(run.state, run.started, *run.counts()))
            elif time.monotonic() - last_line >= 5.0:
                last_line = time.monotonic()
                line = progress_line(run.state, run.started, *run.counts())
                run.console.print(line, soft_wrap=True, highlight=False)
        if not run.interrupted.is_set():
            expected = sim.result().samples + sim.result().logs
            deadline = time.monotonic() + 60  # let the pipeline catch up with the fleet
            while (
                run.runner.stats.messages < expected
                and time.monotonic() < deadline
                and not run.interrupted.is_set()
            ):
                await run.collector.poll()
            for _ in range(20):
                await run.collector.poll()
        if live is not None:
            live.update(live_view(run.state, run.started, *run.counts()))


async def _start_runner(
    settings: Settings, bootstrap: str, console_port: int | None
) -> tuple[Runner, asyncio.Event, Any, MetricsServer | None]:
    # the process of `selfheal run` (executor stage, pause, approvals) and its console
    if console_port is not None:
        http = {"enabled": True, "host": "127.0.0.1", "port": console_port}
        settings = settings.model_copy(update={"http": settings.http.model_copy(update=http)})
    process = SelfhealProcess(settings, lambda: PolicyEngine(settings.policy))
    runner = process.runner
    server = None if console_port is None else serve(runner, "127.0.0.1", console_port)
    stop = asyncio.Event()
    run_task = asyncio.create_task(process.run(bootstrap, stop=stop))
    for _ in range(600):  # the consumer group join takes a few seconds
        if runner.health.ready or run_task.done():
            break
        await asyncio.sleep(0.1)
    if run_task.done():
        run_task.result()
    return runner, stop, run_task, server


async def run_demo(args: argparse.Namespace, console: Console) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = max(1, round(args.duration * args.rate))
    event_span = steps * STEP_SECONDS
    start = float(int(time.time() // 3600 * 3600))
    faults = tuple(_schedule(args.services, event_span, start))
    fleet = FleetConfig(
        services=args.services,
        seed=args.seed,
        start=start,
        step_s=STEP_SECONDS,
        faults=faults,
        calls=default_calls(args.services, faults),
    )
    state = DemoState(service_names(args.services), start, event_span)
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    try:
        with _broker(args.bootstrap) as broker:
            prefix = "selfheal" if broker.kind == "embedded" else f"demo{uuid.uuid4().hex[:6]}"
            settings = demo_settings(prefix, args.config)
            runtime = settings.runtime.model_copy(update={"audit_path": out / "audit.jsonl"})
            settings = settings.model_copy(update={"runtime": runtime})
            (out / "audit.jsonl").unlink(missing_ok=True)
            t = settings.kafka.topics
            console.print(
                f"[bold]selfheal demo[/]: {args.services} services, {steps} steps of "
                f"{STEP_SECONDS:.0f} s ({event_span / 3600:.1f} h of event time from "
                f"{start_text(start)} UTC) at {args.rate:g} steps/s; broker {broker.kind} at "
                f"{broker.bootstrap}; Ctrl-C ends early with a partial summary"
            )
            topics = [t.metrics, t.logs, t.anomalies, t.repairs, t.incidents, t.deadletter]
            topics += [t.audit, t.state]
            await ensure_topics(broker.bootstrap, topics, settings.kafka.partitions)
            runner, stop, run_task, server = await _start_runner(
                settings, broker.bootstrap, None if args.no_console else args.console_port
            )
            if server is not None:
                console.print(f"operator console: http://127.0.0.1:{server.port}/console")
            col = _Collector(
                broker.bootstrap, [t.anomalies, t.repairs, t.incidents], t.audit, state
            )
            await col.start()
            sim_stop = asyncio.Event()
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
                    stop=sim_stop,
                    consumer_time=lambda: pipeline_time(runner),
                    max_ahead_s=MAX_AHEAD_SECONDS,
                )
            )
            run = _Run(args, console, state, runner, col, interrupted)
            try:
                await _watch(run, sim, run_task)
            finally:
                sim_stop.set()  # the fleet stops after its current batch, truth still written
                sim_stats = await sim
                stop.set()
                await run_task
                if server is not None:
                    server.stop()
                for _ in range(5):
                    await col.poll()
                await col.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return _finish(run, sim_stats)


def pipeline_time(runner: Runner) -> float:
    """Event time every partition has reached (-inf before the first record)."""
    marks = [st.watermark for st in runner.pipeline.stages.values()]
    finite = [m for m in marks if math.isfinite(m)]
    return min(finite) if finite else float("-inf")


def start_text(ts: float) -> str:
    from selfheal.pipeline.app.demo_view import utc

    return utc(ts, seconds=False)


def _finish(run: _Run, sim: SimStats) -> int:
    """The one final summary, the events file and the (partial) report."""
    out, console, state = run.args.out, run.console, run.state
    events = sorted(state.events.values(), key=lambda e: (e.get("time", ""), e["id"]))
    (out / "events.jsonl").write_bytes(
        b"".join(orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE) for e in events)
    )
    truth = orjson.loads((out / "truth.json").read_bytes())
    summary = summarize(events, truth)
    faulty = {f["entity"] for f in truth["faults"]}
    healthy_repairs = sum(
        1
        for e in events
        if e["type"].startswith("io.selfheal.repair.")
        and e["subject"] not in faulty
        and not e["subject"].startswith("storm:")
        and e["data"].get("status") == "execute"
    )
    incidents = state.incidents()
    console.print(incident_table(incidents, rows=10, wrap=True))
    console.print(_summary_table(summary))
    messages, dead = run.counts()
    part = "" if not run.interrupted.is_set() else " (interrupted: covers the part that ran)"
    console.print(
        f"[bold]summary{part}[/]: {len(incidents)} incidents "
        f"({sum(len(i.entities) > 1 for i in incidents)} with several entities) holding "
        f"{state.anomalies} anomalies ({summary.false_alarms} outside fault windows); "
        f"{summary.detected} of {len(summary.faults)} faults detected, {summary.recovered} "
        f"cleared by a repair; {healthy_repairs} repairs on healthy services; fleet applied "
        f"{sim.repairs_applied} repairs"
    )
    console.print("  " + counters_line(state, messages, dead))
    for line in deadletter_text(run.deadletters()):
        console.print(f"  dead letters: {line}")
    if not run.args.no_report:
        from selfheal.pipeline.app.report import main as report_main

        report_main(
            [
                str(out / "events.jsonl"),
                "--audit",
                str(out / "audit.jsonl"),
                "--truth",
                str(out / "truth.json"),
                "--samples",
                str(out / "samples.jsonl"),
                "--out",
                str(out / "report.html"),
                "--quiet",
            ]
        )
    console.print(
        f"files: {out / 'events.jsonl'}, {out / 'audit.jsonl'} (selfheal audit FILE)"
        + ("" if run.args.no_report else f", {out / 'report.html'}")
    )
    if run.interrupted.is_set():
        console.print(f"selfheal demo: interrupted at {100 * state.fraction():.0f}% of the run")
        return 130
    return 0


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors exit 2, --help 0
        return int(exc.code or 0)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"selfheal demo: cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    logging.getLogger("drain3").setLevel(logging.WARNING)
    console = Console()
    if not console.is_terminal:  # a log file: tables at a readable width, no frozen frames
        console = Console(width=160)
    return asyncio.run(run_demo(args, console))
