"""selfheal report: the page an operator reads after a night, from anomaly and repair events.

Usage: ``selfheal report EVENTS.jsonl --out X.html [--audit AUDIT.jsonl] [--samples S.jsonl]
[--truth TRUTH.json]``. Works on events alone (anomalies, repairs, plots); incident events
(``selfheal replay`` writes them, the demo collects them) put the incidents first, each with
its anomalies under it (``selfheal.pipeline.app.report_incidents``); ``--audit`` adds the
repairs' verification outcomes and the repairs left to an incident's cause, ``--truth``
(simulator ground truth) the scorecard.
:func:`summarize` is the pure scorecard (the demo reuses it); the page is
``selfheal.pipeline.app.report_html``, the figures ``selfheal.pipeline.app.report_plots``.

>>> truth = [{"entity": "a-1", "fault": "stuck_loop", "start": 100.0, "end": 400.0,
...           "cleared_by": "restart"}]
>>> events = [
...     {"type": "io.selfheal.anomaly.loop_stuck", "time": 130.0,
...      "data": {"entity": "a-1", "metric": "loop_iteration_seconds", "kind": "loop_stuck"}},
...     {"type": "io.selfheal.anomaly.latency_anomaly", "time": 50.0,
...      "data": {"entity": "b-1", "metric": "x", "kind": "latency_anomaly"}}]
>>> s = summarize(events, truth)
>>> (s.detected, s.missed, s.faults[0].detection_delay_s, s.faults[0].time_to_recovery_s,
...  s.false_alarms)
(1, 0, 30.0, 300.0, 1)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from selfheal.pipeline.app.report_html import render_html
from selfheal.pipeline.app.report_incidents import (
    incident_lines,
    incidents_html,
    place,
    read_incidents,
)
from selfheal.pipeline.app.report_plots import load_samples
from selfheal.pipeline.app.sim_plan import DEPENDENCY_DOWN
from selfheal.pipeline.kernel.cloudevents import INCIDENT_PREFIX
from selfheal.pipeline.kernel.schemas import parse_ts

ANOMALY_PREFIX = "io.selfheal.anomaly."
REPAIR_PREFIX = "io.selfheal.repair."

#: which anomaly kinds count as detecting each fault kind
FAULT_DETECTED_BY: dict[str, frozenset[str]] = {
    "memory_leak": frozenset({"memory_leak", "memory_high"}),
    "error_rate_drift": frozenset({"error_rate_drift", "error_burst", "log_pattern"}),
    "latency_regression": frozenset({"latency_anomaly"}),
    "stuck_loop": frozenset({"loop_stuck"}),
    "slow_loop": frozenset({"loop_slow"}),
    "flapping_dependency": frozenset({"breaker_open"}),
    "queue_filling": frozenset({"queue_high"}),
    "abusive_client": frozenset({"rate_limited"}),
    "sql_injection": frozenset({"security"}),
    "failing_health_checks": frozenset({"health_check_failed"}),
    "memory_high": frozenset({"memory_high"}),
    # a caller of a failing service (``simulator.FleetConfig.calls``): its breaker opens
    DEPENDENCY_DOWN: frozenset({"breaker_open"}),
}
#: faults with a breach ahead of them (OOM, full queue): a repair before it is predictive
PREDICTABLE_FAULTS = frozenset({"memory_leak", "queue_filling"})
#: detectors may keep firing briefly after a fault clears; not counted as false alarms
DEFAULT_GRACE_S = 300.0
__all__ = ["load_samples", "main", "normalize_event", "read_jsonl", "render_html", "summarize"]


def parse_time(value: Any) -> float | None:
    """Epoch seconds from a number or an RFC 3339 / numeric string; None if it is neither."""
    try:
        return None if value is None else parse_ts(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Event:
    """An anomaly or repair CloudEvent reduced to what the summary needs."""

    ts: float
    category: str  # "anomaly" | "repair"
    entity: str
    kind: str  # anomaly kind or repair action
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""  #: the CloudEvent id (repairs cite anomalies by it)

    @property
    def predictive(self) -> bool:
        return bool(self.data.get("predictive"))

    @property
    def mode(self) -> str:
        return str(self.data.get("mode", "enforce"))

    @property
    def status(self) -> str:
        """Decision status: execute, dry_run, pending_approval or suppressed."""
        default = "dry_run" if self.mode == "dry_run" else "execute"
        return str(self.data.get("status", default))

    @property
    def decided(self) -> bool:
        """A repair the policy took (executed or dry run), not suppressed nor pending."""
        return self.status in ("execute", "dry_run")

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce" and self.status == "execute"


def normalize_event(ev: Mapping[str, Any]) -> Event | None:
    """An :class:`Event` from a CloudEvent dict, None when it is neither anomaly nor repair."""
    typ = str(ev.get("type", ""))
    raw = ev.get("data")
    data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if typ.startswith(ANOMALY_PREFIX):
        category, kind = "anomaly", str(data.get("kind") or typ[len(ANOMALY_PREFIX) :])
    elif typ.startswith(REPAIR_PREFIX):
        category, kind = "repair", str(data.get("action") or typ[len(REPAIR_PREFIX) :])
    else:
        return None
    entity = data.get("entity") or ev.get("subject")
    ts = parse_time(data.get("ts"))
    if ts is None:
        ts = parse_time(ev.get("time"))
    if not entity or ts is None:
        return None
    return Event(ts, category, str(entity), kind, dict(data), str(ev.get("id") or ""))


@dataclass
class FaultResult:
    entity: str
    fault: str
    start: float
    end: float | None
    cleared_by: str | None
    detected: bool = False
    detected_at: float | None = None
    detected_by: str | None = None
    detection_delay_s: float | None = None
    breach_at: float | None = None  #: first OOM, else the planned breach (predictable faults)
    first_predictive_repair: float | None = None
    predictive_lead_s: float | None = None  #: breach - first predictive repair (< 0: too late)
    time_to_recovery_s: float | None = None  #: cleared by a repair: cleared time - start
    anomalies: int = 0  #: anomalies on the entity inside the fault window
    repairs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Summary:
    faults: list[FaultResult]
    anomalies: int
    repairs: int  #: every repair event, whatever its status
    repairs_enforced: int  #: mode enforce and status execute: these touched the system
    repairs_dry_run: int
    repairs_withheld: int  #: suppressed or pending approval
    predictive_repairs: int  #: predictive and decided (executed or dry run)
    false_alarms: int | None  #: None without ground truth
    false_alarm_events: list[dict[str, Any]]
    grace_s: float = DEFAULT_GRACE_S

    @property
    def detected(self) -> int:
        return sum(f.detected for f in self.faults)

    @property
    def missed(self) -> int:
        return len(self.faults) - self.detected

    @property
    def recovered(self) -> int:
        return sum(f.time_to_recovery_s is not None for f in self.faults)

    def _median(self, attr: str) -> float | None:
        vals = [getattr(f, attr) for f in self.faults if getattr(f, attr) is not None]
        return statistics.median(vals) if vals else None

    @property
    def median_detection_delay_s(self) -> float | None:
        return self._median("detection_delay_s")

    @property
    def median_time_to_recovery_s(self) -> float | None:
        return self._median("time_to_recovery_s")

    @property
    def median_predictive_lead_s(self) -> float | None:
        return self._median("predictive_lead_s")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in (
            "detected",
            "missed",
            "recovered",
            "median_detection_delay_s",
            "median_time_to_recovery_s",
            "median_predictive_lead_s",
        ):
            d[name] = getattr(self, name)
        return d


def _truth_list(truth: Any) -> list[dict[str, Any]] | None:
    if truth is None:
        return None
    if isinstance(truth, Mapping):
        truth = truth.get("faults", [])
    return [dict(f) for f in truth]


def summarize(
    events: Iterable[Mapping[str, Any] | Event],
    truth: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None,
    *,
    grace_s: float = DEFAULT_GRACE_S,
) -> Summary:
    """Score events against the ground truth (a fault list or the simulator's truth document).

    A fault is detected by the first anomaly on its entity of a kind in
    ``FAULT_DETECTED_BY[fault]`` inside ``[start, end + grace_s]`` (end None: open). An anomaly
    on an entity at a time outside every fault window of that entity is a false alarm.
    """
    evs = [e if isinstance(e, Event) else normalize_event(e) for e in events]
    evs_ok = sorted((e for e in evs if e is not None), key=lambda e: e.ts)
    anomalies = [e for e in evs_ok if e.category == "anomaly"]
    repairs = [e for e in evs_ok if e.category == "repair"]
    faults = _truth_list(truth)
    results = [_fault_result(f, anomalies, repairs, grace_s) for f in faults or []]
    windows: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        hi = math.inf if r.end is None else r.end + grace_s
        windows.setdefault(r.entity, []).append((r.start, hi))
    false_alarms = [
        {
            "ts": a.ts,
            "entity": a.entity,
            "kind": a.kind,
            "metric": a.data.get("metric"),
            "severity": a.data.get("severity"),
        }
        for a in (anomalies if faults is not None else [])
        if not any(lo <= a.ts <= hi for lo, hi in windows.get(a.entity, []))
    ]
    return Summary(
        faults=results,
        anomalies=len(anomalies),
        repairs=len(repairs),
        repairs_enforced=sum(p.enforced for p in repairs),
        repairs_dry_run=sum(p.status == "dry_run" for p in repairs),
        repairs_withheld=sum(not p.decided for p in repairs),
        predictive_repairs=sum(p.predictive and p.decided for p in repairs),
        false_alarms=None if faults is None else len(false_alarms),
        false_alarm_events=false_alarms,
        grace_s=grace_s,
    )


def _fault_result(
    f: Mapping[str, Any], anomalies: list[Event], repairs: list[Event], grace_s: float
) -> FaultResult:
    """One fault scored: its first detecting anomaly, predictive repair and repairs."""
    start = float(f["start"])
    end = None if f.get("end") is None else float(f["end"])
    hi = math.inf if end is None else end + grace_s
    r = FaultResult(f["entity"], f["fault"], start, end, f.get("cleared_by"))
    kinds = FAULT_DETECTED_BY.get(r.fault, frozenset())
    inside = [a for a in anomalies if a.entity == r.entity and start <= a.ts <= hi]
    r.anomalies = len(inside)
    hit = next((a for a in inside if a.kind in kinds), None)
    if hit is not None:
        r.detected, r.detected_at, r.detected_by = True, hit.ts, hit.kind
        r.detection_delay_s = hit.ts - start
    mine = [p for p in repairs if p.entity == r.entity and start <= p.ts <= hi]
    if r.fault in PREDICTABLE_FAULTS:
        ooms = f.get("ooms") or []
        breach = min(ooms) if ooms else f.get("breach_at")
        r.breach_at = None if breach is None else float(breach)
        pred = next((p for p in mine if p.predictive and p.decided), None)
        if pred is not None:
            r.first_predictive_repair = pred.ts
            if r.breach_at is not None:
                r.predictive_lead_s = r.breach_at - pred.ts
    if r.cleared_by and end is not None:
        r.time_to_recovery_s = end - start
    r.repairs = [
        {
            "ts": p.ts,
            "action": p.kind,
            "mode": p.mode,
            "status": p.status,
            "predictive": p.predictive,
        }
        for p in mine
    ]
    return r


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    sign = "-" if v < 0 else ""
    v = abs(v)
    return f"{sign}{v:.0f}s" if v < 120 else f"{sign}{v / 60:.1f}min"


def summary_lines(s: Summary) -> list[str]:
    """A plain-text rendering (one fault per line) for terminals and logs."""
    fa = "n/a" if s.false_alarms is None else str(s.false_alarms)
    lines = [
        f"faults {len(s.faults)}: detected {s.detected}, missed {s.missed}; "
        f"median detection delay {_fmt_s(s.median_detection_delay_s)}; anomalies {s.anomalies}, "
        f"false alarms {fa}; repairs {s.repairs} ({s.repairs_enforced} enforced, "
        f"{s.repairs_dry_run} dry run, {s.repairs_withheld} withheld, "
        f"{s.predictive_repairs} predictive); recovered {s.recovered}, median time to recovery "
        f"{_fmt_s(s.median_time_to_recovery_s)}",
    ]
    for f in s.faults:
        lines.append(
            f"  {f.entity:<14} {f.fault:<22} "
            f"{'detected by ' + (f.detected_by or '') if f.detected else 'MISSED':<30} "
            f"delay {_fmt_s(f.detection_delay_s):>8}  lead {_fmt_s(f.predictive_lead_s):>8}  "
            f"cleared by {f.cleared_by or '-':<14} ttr {_fmt_s(f.time_to_recovery_s)}"
        )
    return lines


# ---------------------------------------------------------------------------- inputs
def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """JSON objects, one per line, and the number of lines skipped as malformed."""
    out: list[dict[str, Any]] = []
    bad = 0
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                out.append(obj)
            else:
                bad += 1
    return out, bad


class ReportInputError(Exception):
    """An input the report cannot use; the message names the file and the problem."""


def _is_event(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("type"), str) and "data" in obj


def read_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """CloudEvents (JSON lines) and the number of unreadable lines skipped.

    A file whose first line is not a CloudEvent is not an event file (``selfheal report
    README.md``): that is an error, not an empty report. Later bad lines (a torn last write)
    are skipped and counted. An empty file is a quiet night: no events, no error.
    """
    out: list[dict[str, Any]] = []
    bad = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ReportInputError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from exc
    with fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            if _is_event(obj):
                out.append(obj)
            elif not out and not bad:
                what = "not JSON" if obj is None else "not a CloudEvent (no type and data)"
                raise ReportInputError(
                    f"{path} is not anomaly/repair CloudEvents in JSON lines: line {number} is "
                    f"{what}"
                )
            else:
                bad += 1
    return out, bad


def read_truth(path: Path) -> list[dict[str, Any]]:
    try:
        doc = orjson.loads(path.read_bytes())
        truth = _truth_list(doc)
        if truth is None or not all("entity" in f and "start" in f for f in truth):
            raise ValueError("no faults with entity and start")
    except OSError as exc:
        raise ReportInputError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise ReportInputError(f"{path} is not simulator ground truth: {exc}") from exc
    return truth


def read_decisions(path: Path) -> list[Mapping[str, Any]]:
    """The decision records of an audit file (suppressed ones too: they are only there)."""
    from selfheal.pipeline.core.audit import DECISION, read_records

    try:
        return [r.data for r in read_records(path) if r.record == DECISION]
    except OSError as exc:
        raise ReportInputError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from exc


def read_verdicts(path: Path) -> dict[str, bool]:
    """Decision id -> verified success, from the verification records of an audit file."""
    from selfheal.pipeline.core.audit import VERIFICATION, read_records

    try:
        return {r.id: bool(r.data.get("success")) for r in read_records(path)
                if r.record == VERIFICATION}  # fmt: skip
    except OSError as exc:
        raise ReportInputError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from exc


def effectiveness_html(raw: list[dict[str, Any]], path: Path) -> str:
    """The repair effectiveness section (``report_effectiveness``) from an audit file."""
    from selfheal.pipeline.app.report_effectiveness import effectiveness_rows, section_html
    from selfheal.pipeline.core.audit import read_records

    try:
        return section_html(effectiveness_rows(raw, (r.data for r in read_records(path))))
    except OSError as exc:
        raise ReportInputError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from exc


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfheal report",
        description="Render the HTML report of anomaly and repair events for operators.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("events", type=Path, metavar="EVENTS.jsonl", help="anomaly/repair CloudEvents, JSON lines")
    add("--out", type=Path, required=True, metavar="REPORT.html", help="the HTML page to write")
    add("--audit", type=Path, metavar="AUDIT.jsonl",
        help="audit trail: adds each repair's verification outcome (default: none)")  # fmt: skip
    add("--samples", type=Path, metavar="SAMPLES.jsonl",
        help="metric samples to plot (default: anomaly timelines only)")  # fmt: skip
    add("--truth", type=Path, metavar="TRUTH.json",
        help="simulator ground truth: adds the scorecard section (default: none)")  # fmt: skip
    add("--grace", type=float, default=DEFAULT_GRACE_S, metavar="S",
        help="seconds after a fault ends before anomalies count as false alarms")  # fmt: skip
    add("--quiet", action="store_true", help="print nothing but errors")
    return p


def _usage(argv: list[str]) -> argparse.Namespace | int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        for path in (args.events, args.truth, args.samples, args.audit):
            if path is not None and not path.is_file():
                parser.error(f"no such file: {path}")
        folder = args.out.resolve().parent
        if not folder.is_dir():
            parser.error(f"cannot write {args.out}: no such directory {folder}")
    except SystemExit as exc:  # usage errors exit 2, --help 0
        return int(exc.code or 0)
    return args


def main(argv: list[str]) -> int:
    """0 written, 2 bad arguments or input (one line on stderr naming the problem)."""
    args = _usage(argv)
    if isinstance(args, int):
        return args
    try:
        raw, bad = read_events(args.events)
        truth = read_truth(args.truth) if args.truth else None
        verdicts = read_verdicts(args.audit) if args.audit else None
        decisions = read_decisions(args.audit) if args.audit else []
        learned = effectiveness_html(raw, args.audit) if args.audit else ""
    except ReportInputError as exc:
        print(f"selfheal report: {exc}", file=sys.stderr)
        return 2
    events = sorted((e for e in map(normalize_event, raw) if e is not None), key=lambda e: e.ts)
    summary = summarize(events, truth, grace_s=args.grace) if truth is not None else None
    samples = None
    if args.samples is not None:
        wanted = {f.entity for f in summary.faults} if summary else {e.entity for e in events}
        samples = load_samples(args.samples, wanted)
    incidents = read_incidents(raw)
    loose = place(incidents, events, decisions) if incidents else None
    notes = f"{len(raw)} events read from {args.events.name}"
    if bad:
        notes += f", {bad} malformed lines skipped"
    other = len(raw) - len(events) - sum(str(e["type"]).startswith(INCIDENT_PREFIX) for e in raw)
    if other:
        notes += f", {other} neither anomaly, repair nor incident"
    first = incidents_html(incidents, args.audit is not None) if incidents else ""
    page = render_html(events, summary=summary, samples=samples, truth=truth or [],
                       verdicts=verdicts, notes=notes, extra=learned, first=first,
                       loose=loose)  # fmt: skip
    try:
        args.out.write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"selfheal report: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.quiet:
        return 0
    if loose is not None:
        print("\n".join(incident_lines(incidents, loose, args.audit is not None)))
    if summary is not None:
        print("\n".join(summary_lines(summary)))
    else:
        n_anom = sum(e.category == "anomaly" for e in events)
        print(f"{n_anom} anomalies, {len(events) - n_anom} repair decisions")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
