"""``selfheal`` command line: broker, run, replay, demo, simulate, score, audit, report, schema.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration (the message names
the field).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from selfheal.pipeline.app.argtypes import port, positive_float
from selfheal.pipeline.core.config import ConfigError, Settings, load_settings
from selfheal.pipeline.core.policy import PolicyEngine

# subcommands implemented in their own modules, each with ``main(argv) -> int``
DELEGATED: dict[str, tuple[str, str]] = {
    "score": ("selfheal.pipeline.core.scoring", "score a NAB-style CSV with the latency detector"),
    "audit": ("selfheal.pipeline.core.audit", "read the audit trail (JSONL) back, filtered"),
    "simulate": ("selfheal.pipeline.app.simulate_cli", "run the simulated fleet against a broker"),
    "report": (
        "selfheal.pipeline.app.report",
        "render an HTML report from events and ground truth",
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfheal", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    b.add_argument("--port", type=port, default=9092)
    b.add_argument("--host", default="127.0.0.1")

    r = sub.add_parser("run", help="the Kafka consumer deployment")
    r.add_argument("--bootstrap", help="HOST:PORT (default: config kafka.bootstrap)")
    r.add_argument("--config", type=Path, help="YAML configuration file")
    r.add_argument("--duration", type=positive_float, help="stop after S seconds")

    rp = sub.add_parser("replay", help="the same pipeline over files (JSONL, NAB CSV)")
    rp.add_argument("inputs", nargs="+", type=Path, metavar="IN")
    rp.add_argument(
        "--out", type=Path, required=True, help="anomaly and repair CloudEvents (JSONL)"
    )
    rp.add_argument("--deadletter", type=Path, help="rejected records (JSONL)")
    rp.add_argument("--config", type=Path, help="YAML configuration file")

    sub.add_parser("schema", help="print the JSON Schema of every wire format")
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def _settings(path: Path | None, overrides: dict[str, object] | None = None) -> Settings:
    return load_settings(path, overrides)


def _policy_factory(settings: Settings) -> Callable[[], PolicyEngine]:
    return lambda: PolicyEngine(settings.policy)


def cmd_broker(args: argparse.Namespace) -> int:
    from selfheal.connectors.broker import EmbeddedBroker

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


def cmd_run(args: argparse.Namespace) -> int:
    from selfheal.pipeline.app.wiring import SelfhealProcess

    settings = _settings(args.config)
    bootstrap = args.bootstrap or settings.kafka.bootstrap
    # detection publishes decisions; the process's executor stage runs them
    process = SelfhealProcess(settings, _policy_factory(settings))
    runner = process.runner
    server = runner.start_http()
    if server is not None:
        logging.getLogger("selfheal").info(
            "metrics on http://%s:%d/metrics", settings.http.host, server.port
        )

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stats = await process.run(bootstrap, duration=args.duration, stop=stop)
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

    print(json.dumps(json_schemas(), indent=2))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "broker": cmd_broker,
    "run": cmd_run,
    "replay": cmd_replay,
    "schema": cmd_schema,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    if verbose:
        argv = argv[1:]
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiokafka's warnings (lost connections, failed commits, rebalances) are worth seeing
    logging.getLogger("aiokafka").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("drain3").setLevel(logging.WARNING)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        try:
            entry = getattr(module, f"main_{argv[0]}", None) or module.main
            return int(entry(argv[1:]))
        except ConfigError as exc:
            print(f"selfheal {argv[0]}: invalid configuration: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with usage on a bad argument
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"selfheal {args.command}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout closed early (`selfheal schema | head`): not an error worth a traceback
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
