"""selfheal audit: print the audit trail (decisions, executions, verifications) of a file.

``selfheal audit FILE [--entity GLOB] [--since T] [--record KIND] [--json]``: JSON lines when
stdout is not a terminal (or with ``--json``), a table with UTC times otherwise.

>>> since("2026-11-28T05:00:00Z", now=0.0)
1795842000.0
>>> since("2h", now=1795842000.0) == 1795842000.0 - 7200
True
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from selfheal.pipeline.core.audit import (
    RECORD_KINDS,
    AuditRecord,
    ReadStats,
    encode,
    matches,
    read_records,
)
from selfheal.pipeline.kernel.schemas import parse_ts

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
#: epoch seconds (2020..2033) written into older explanations
_EPOCH = re.compile(r"\b(1[6-9]\d{8}(?:\.\d+)?)\b")
#: below this terminal width the table folds short columns so the explanation keeps room
WIDE = 120


def since(text: str, now: float | None = None) -> float:
    """Epoch seconds from RFC 3339, epoch seconds, or a duration before now (``90m``, ``2d``)."""
    rel = _RELATIVE.match(text)
    if rel:
        now = time.time() if now is None else now
        return now - float(rel.group(1)) * _UNITS[rel.group(2)]
    try:
        return parse_ts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use RFC 3339 (2026-11-28T05:00:00Z), epoch seconds, "
            "or a duration before now (30m, 1h, 2d)"
        ) from exc


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def readable(text: str) -> str:
    """Epoch seconds inside an explanation, as UTC timestamps."""
    return _EPOCH.sub(lambda m: utc(float(m.group(1))) + " UTC", text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfheal audit",
        description="Print the audit records (decisions, executions, verifications) of a file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", type=Path, help="audit JSON-lines file")
    p.add_argument(
        "--entity", metavar="E", help="only this entity (glob patterns allowed; default: all)"
    )
    p.add_argument(
        "--since",
        metavar="T",
        type=since,
        help="only records at or after T: RFC 3339 (2026-11-28T05:00:00Z), epoch seconds, "
        "or a duration before now (30m, 1h, 2d, 1w); default: all",
    )
    p.add_argument(
        "--record",
        action="append",
        choices=RECORD_KINDS,
        help="only these record kinds (repeatable; default: all)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    return p


def _cells(r: AuditRecord) -> dict[str, str]:
    d: dict[str, Any] = dict(r.data)
    return {
        "time": utc(r.ts),
        "record": r.record,
        "entity": r.entity,
        "action": r.action,
        "status": str(d.get("status") or ""),
        "by": str(d.get("suppressed_by") or d.get("executor") or d.get("by") or ""),
        "rule": str(d.get("rule") or ""),
        "explanation": readable(str(d.get("explanation") or d.get("detail") or "")),
    }


def table(records: list[AuditRecord], console: Any = None) -> None:
    """A rich table; on a narrow terminal the short columns stack so the explanation wraps."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"selfheal audit ({len(records)} records, times UTC)")
    if console.width >= WIDE:
        names = ("time", "record", "entity", "action", "status", "by", "rule", "explanation")
        for name in names:
            t.add_column(name, overflow="fold", ratio=4 if name == "explanation" else None)
        for r in records:
            c = _cells(r)
            t.add_row(*(c[n] for n in names))
    else:
        # fixed widths: 13 characters of borders and padding, the rest to the explanation
        t.add_column("time (UTC)", no_wrap=True, width=10)
        t.add_column("record / entity", overflow="fold", width=14)
        t.add_column("action / status", overflow="fold", width=16)
        t.add_column("explanation", overflow="fold", width=max(20, console.width - 53))
        for r in records:
            c = _cells(r)
            by = f" by {c['by']}" if c["by"] else ""
            t.add_row(
                c["time"].replace(" ", "\n"),
                f"{c['record']}\n{c['entity']}",
                f"{c['action']}\n{c['status']}{by}",
                c["explanation"] + (f" (rule {c['rule']})" if c["rule"] else ""),
            )
    console.print(t)


def main(argv: list[str]) -> int:
    """``selfheal audit``: 0 ok, 2 bad arguments or unreadable file (one line on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed usage (or help)
        return int(exc.code) if isinstance(exc.code, int) else 2
    stats = ReadStats()
    selected: list[AuditRecord] = []
    try:
        for record in read_records(args.file, stats):
            if matches(record, args.entity, args.since, args.record):
                selected.append(record)
    except OSError as exc:
        print(f"selfheal audit: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if sys.stdout.isatty() and not args.json:
        table(selected)
    else:
        sys.stdout.write(encode(selected).decode("utf-8"))
        sys.stdout.flush()
    if stats.skipped:
        print(f"selfheal audit: skipped {stats.skipped} unreadable line(s)", file=sys.stderr)
    return 0
