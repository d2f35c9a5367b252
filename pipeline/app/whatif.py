"""``selfheal whatif``: what a candidate policy would have done with recorded anomalies.

Usage: ``selfheal whatif EVENTS.jsonl [--baseline CURRENT.yaml] --policy CANDIDATE.yaml``
or ``selfheal whatif --topic selfheal.anomalies --bootstrap H:P [--since T] --policy ...``.

Both policies get a fresh engine (and a private fleet budget) and the same anomalies in
event-time order. The output lists repairs by action and rule, escalations, storms and holds,
suppressed decisions and the first anomalies decided differently; the last line is a JSON
summary. Exit codes: 0, 1 with ``--fail-on-more-repairs`` when the candidate repairs more,
2 for bad usage, an unreadable file or an invalid policy (the message names the field).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson
import yaml
from selfheal.pipeline.app.argtypes import positive_float
from selfheal.pipeline.core.config import ConfigError, load_settings
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.core.whatif_replay import (
    MAX_LISTED,
    EventError,
    anomaly_from_event,
    differences,
    order_anomalies,
    replay_policy,
    summary,
)
from selfheal.pipeline.kernel.schemas import parse_ts
from selfheal.pipeline.kernel.types import Anomaly

DESCRIPTION = """\
Replay recorded anomaly events (a `selfheal replay` output, or a dump of the anomalies topic)
through the current policy and a candidate, and print what would differ.

Recorded events carry no condition reports (what the detectors say about an entity's
condition while a repair is verified), so condition presence is derived from the anomaly
stream: an entity and kind count as present while anomalies of that kind keep arriving
within the verification window, and as clear once a whole window passes without one.
"""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def since_arg(text: str) -> float:
    """An RFC 3339 time, epoch seconds, or a duration back from now (``30m``, ``2h``, ``1d``)."""
    m = _DURATION.match(text.strip())
    if m:
        return time.time() - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return parse_ts(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a time (RFC 3339 or epoch seconds) nor a duration like 2h"
        ) from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfheal whatif",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The last line printed is a JSON summary. Exit codes: 0; 1 with\n"
        "--fail-on-more-repairs when the candidate repairs more, or when the topic cannot\n"
        "be read; 2 for bad usage, an unreadable file or an invalid policy.",
    )
    p.add_argument(
        "events",
        nargs="?",
        type=Path,
        metavar="EVENTS.jsonl",
        help="recorded CloudEvents (JSON lines); other event types are skipped",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="current policy (a policy file or a run config with a policy section; "
        "default: the shipped policy with SELFHEAL_ environment overrides)",
    )
    p.add_argument(
        "--policy",
        type=Path,
        required=True,
        help="candidate policy; a partial file (say, only rules) is merged like a run config",
    )
    p.add_argument("--topic", help="read the anomalies from this Kafka topic instead of a file")
    p.add_argument("--bootstrap", help="HOST:PORT of the broker (with --topic)")
    p.add_argument(
        "--since",
        type=since_arg,
        help="only anomalies at or after this event time (RFC 3339, epoch, or 2h/30m/1d ago)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="seconds to read the topic to its end (default: 60)",
    )
    p.add_argument(
        "--fail-on-more-repairs",
        action="store_true",
        help="exit 1 when the candidate would repair more than the baseline (a CI gate)",
    )
    return p


def load_policy_file(path: Path | None) -> PolicyConfig:
    """A policy file merged over the shipped policy like a run config's ``policy`` section.

    Accepts a bare policy (``rules:`` ... at the top) or a run config with a ``policy:``
    section. ``None`` is the running default (shipped policy plus the environment).
    """
    if path is None:
        return load_settings(None).policy
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from exc
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from exc
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "must hold a mapping at the top level")
    section = raw["policy"] if isinstance(raw.get("policy"), dict) else raw
    try:
        return load_settings(None, {"policy": section}).policy
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.field}", exc.message) from exc


def parse_events(lines: list[bytes], since: float | None) -> tuple[list[Anomaly], list[str]]:
    """Anomalies in ``lines`` (other event types skipped) and a note per unusable line."""
    anomalies: list[Anomaly] = []
    problems: list[str] = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            a = anomaly_from_event(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            problems.append(f"record {no}: not JSON ({exc})")
            continue
        except EventError as exc:
            problems.append(f"record {no}: {exc}")
            continue
        if a is not None and (since is None or a.finding.ts >= since):
            anomalies.append(a)
    return anomalies, problems


def read_lines(args: argparse.Namespace) -> list[bytes]:
    if args.topic:
        from selfheal.connectors.topic_dump import read_topic

        return asyncio.run(read_topic(args.bootstrap, args.topic, timeout=args.timeout))
    return args.events.read_bytes().splitlines()


def compare(
    baseline: PolicyConfig, candidate: PolicyConfig, anomalies: list[Anomaly]
) -> dict[str, Any]:
    """Replay both policies; the report as data (printed by ``render``)."""
    ordered = order_anomalies(anomalies)
    base, cand = replay_policy(baseline, ordered), replay_policy(candidate, ordered)
    diffs = differences(base, cand, ordered)
    return {
        "rules": {
            "baseline": [r.name for r in baseline.rules],
            "candidate": [r.name for r in candidate.rules],
        },
        "anomalies": len(ordered),
        "baseline": summary(base),
        "candidate": summary(cand),
        "changed": len(diffs),
        "first_differences": [
            {
                "anomaly": d.anomaly_id,
                "ts": d.ts,
                "entity": d.entity,
                "baseline": d.baseline,
                "candidate": d.candidate,
            }
            for d in diffs[:MAX_LISTED]
        ],
    }


def _delta_lines(name: str, base: dict[str, int], cand: dict[str, int]) -> list[str]:
    keys = sorted(set(base) | set(cand))
    if not keys:
        return [f"{name}: none in either"]
    rows = [f"{name}:"]
    for k in keys:
        b, c = base.get(k, 0), cand.get(k, 0)
        mark = "" if b == c else f"  ({c - b:+d})"
        rows.append(f"  {k:<40} {b:>6} -> {c:<6}{mark}")
    return rows


def render(report: dict[str, Any], out: TextIO) -> None:
    b, c = report["baseline"], report["candidate"]
    lines = [f"{report['anomalies']} anomalies replayed (baseline -> candidate)"]
    rules = report["rules"]
    if rules["baseline"] != rules["candidate"]:
        # a rules list replaces the shipped one as a whole, as in a run config
        lines.append(f"rules: {', '.join(rules['baseline']) or '(none)'}")
        lines.append(f"    -> {', '.join(rules['candidate']) or '(none)'}")
    lines += _delta_lines("repairs by action", b["repairs"], c["repairs"])
    lines += _delta_lines("repairs by rule", b["repairs_by_rule"], c["repairs_by_rule"])
    lines += _delta_lines("suppressed", b["suppressed"], c["suppressed"])
    for key in ("escalations", "storms", "held", "pending_approval"):
        lines.append(f"{key}: {b[key]} -> {c[key]}")
    lines.append(f"anomalies decided differently: {report['changed']}")
    for d in report["first_differences"]:
        lines.append(f"  {d['anomaly']} {d['entity']} at {d['ts']:.3f}")
        lines.append(f"    baseline:  {'; '.join(d['baseline']) or '(nothing)'}")
        lines.append(f"    candidate: {'; '.join(d['candidate']) or '(nothing)'}")
    print("\n".join(lines), file=out)
    last = {k: report[k] for k in ("anomalies", "baseline", "candidate", "changed")}
    print(json.dumps(last, sort_keys=True), file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.events is None) == (args.topic is None):
        parser.error("give either EVENTS.jsonl or --topic (with --bootstrap)")
    if args.topic and not args.bootstrap:
        parser.error("--topic needs --bootstrap HOST:PORT")
    try:
        baseline = load_policy_file(args.baseline)
        candidate = load_policy_file(args.policy)
    except ConfigError as exc:
        print(f"selfheal whatif: invalid policy: {exc}", file=sys.stderr)
        return 2
    try:
        lines = read_lines(args)
    except OSError as exc:
        print(f"selfheal whatif: cannot read {args.events}: {exc.strerror}", file=sys.stderr)
        return 2
    except Exception as exc:  # the broker: unreachable, topic missing, read timed out
        print(f"selfheal whatif: cannot read topic {args.topic}: {exc}", file=sys.stderr)
        return 1
    anomalies, problems = parse_events(lines, args.since)
    for note in problems[:MAX_LISTED]:
        print(f"selfheal whatif: skipped {note}", file=sys.stderr)
    if len(problems) > MAX_LISTED:
        print(f"selfheal whatif: skipped {len(problems)} records in all", file=sys.stderr)
    report = compare(baseline, candidate, anomalies)
    render(report, sys.stdout)
    more = sum(report["candidate"]["repairs"].values()) > sum(
        report["baseline"]["repairs"].values()
    )
    return 1 if args.fail_on_more_repairs and more else 0


if __name__ == "__main__":
    sys.exit(main())
