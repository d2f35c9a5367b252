"""``selfheal report``: score anomaly/repair CloudEvents against the ground truth, render HTML.

Usage: ``selfheal report EVENTS.jsonl [--truth TRUTH.json] [--samples SAMPLES.jsonl] --out X.html``.
:func:`summarize` is pure (the demo reuses it for its terminal table); :func:`render_html`
returns one self-contained page (figures embedded as base64 PNG).

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
import base64
import html
import io
import itertools
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from selfheal.pipeline.app.report_effectiveness import effectiveness_rows, section_html
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
}
#: faults with a breach ahead of them (OOM, full queue): a repair before it is predictive
PREDICTABLE_FAULTS = frozenset({"memory_leak", "queue_filling"})
#: detectors may keep firing briefly after a fault clears; not counted as false alarms
DEFAULT_GRACE_S = 300.0
MEMORY_METRICS = ("container_memory_working_set_bytes", "process_resident_memory_bytes",
                  "jvm_memory_used_bytes", "process_memory_bytes")  # fmt: skip


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
    return Event(ts, category, str(entity), kind, dict(data))


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
    results: list[FaultResult] = []
    windows: dict[str, list[tuple[float, float]]] = {}
    for f in faults or []:
        start = float(f["start"])
        end = None if f.get("end") is None else float(f["end"])
        hi = math.inf if end is None else end + grace_s
        windows.setdefault(f["entity"], []).append((start, hi))
        r = FaultResult(f["entity"], f["fault"], start, end, f.get("cleared_by"))
        kinds = FAULT_DETECTED_BY.get(r.fault, frozenset())
        inside = [a for a in anomalies if a.entity == r.entity and start <= a.ts <= hi]
        r.anomalies = len(inside)
        hit = next((a for a in inside if a.kind in kinds), None)
        if hit is not None:
            r.detected, r.detected_at, r.detected_by = True, hit.ts, hit.kind
            r.detection_delay_s = hit.ts - start
        if r.fault in PREDICTABLE_FAULTS:
            ooms = f.get("ooms") or []
            breach = min(ooms) if ooms else f.get("breach_at")
            r.breach_at = None if breach is None else float(breach)
            pred = next(
                (
                    p
                    for p in repairs
                    if p.entity == r.entity and p.predictive and p.decided and start <= p.ts <= hi
                ),
                None,
            )
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
            for p in repairs
            if p.entity == r.entity and start <= p.ts <= hi
        ]
        results.append(r)
    false_alarms: list[dict[str, Any]] = []
    if faults is not None:
        for a in anomalies:
            if not any(lo <= a.ts <= hi for lo, hi in windows.get(a.entity, [])):
                false_alarms.append(
                    {
                        "ts": a.ts,
                        "entity": a.entity,
                        "kind": a.kind,
                        "metric": a.data.get("metric"),
                        "severity": a.data.get("severity"),
                    }
                )
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


Series = dict[str, list[tuple[float, float, float | None]]]  # metric -> (ts, value, limit)


def load_samples(path: Path, entities: Iterable[str]) -> dict[str, Series]:
    """Metric samples (wire format, JSON lines) of the given entities, by entity and metric."""
    wanted = set(entities)
    out: dict[str, Series] = {e: {} for e in wanted}
    with path.open("rb") as fh:
        for line in fh:
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or rec.get("entity") not in wanted or "metric" not in rec:
                continue
            ts = parse_time(rec.get("ts"))
            if ts is None or not isinstance(rec.get("value"), int | float):
                continue
            lim = rec.get("limit")
            out[rec["entity"]].setdefault(rec["metric"], []).append(
                (ts, float(rec["value"]), float(lim) if isinstance(lim, int | float) else None)
            )
    for series in out.values():
        for pts in series.values():
            pts.sort(key=lambda p: p[0])
    return out


# ---------------------------------------------------------------------------- figures
def _primary_series(
    fault: str, series: Series
) -> tuple[str, list[tuple[float, float]], float | None] | None:
    """(label, points, limit) of the signal that shows ``fault`` best, None if absent."""

    def plain(name: str) -> tuple[str, list[tuple[float, float]], float | None] | None:
        pts = series.get(name)
        if not pts:
            return None
        return name, [(t, v) for t, v, _ in pts], pts[-1][2]

    if fault in ("memory_leak", "memory_high"):
        return next((r for r in map(plain, MEMORY_METRICS) if r), None)
    if fault == "latency_regression":
        names = sorted(n for n in series if "latency" in n or "duration" in n)
        return plain(names[0]) if names else None
    if fault == "error_rate_drift":
        req = {t: v for t, v, _ in series.get("requests_total", [])}
        err = sorted((t, v) for t, v, _ in series.get("errors_total", []) if t in req)
        pts = []
        for (t0, e0), (t1, e1) in itertools.pairwise(err):
            dr = req[t1] - req[t0]
            if dr > 0:
                pts.append((t1, (e1 - e0) / dr))
        return ("error ratio (errors_total / requests_total)", pts, None) if pts else None
    if fault == "abusive_client":
        counts: dict[float, int] = {}
        for pts3 in series.values():
            for t, _, _ in pts3:
                counts[t // 60 * 60] = counts.get(t // 60 * 60, 0) + 1
        return ("metric samples per minute", sorted(counts.items()), None) if counts else None
    name = {
        "stuck_loop": "loop_iteration_seconds",
        "slow_loop": "loop_iteration_seconds",
        "flapping_dependency": "dependency_request_ok",
        "queue_filling": "queue_depth",
        "failing_health_checks": "health_check_ok",
    }.get(fault)
    return plain(name) if name else None


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def entity_figure(
    entity: str,
    faults: Sequence[FaultResult],
    events: Sequence[Event],
    series: Series | None,
    t0: float,
    t_end: float,
    truth: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Base64 PNG: the entity's series (or an event timeline) with faults, anomalies, repairs.

    The x axis is minutes since ``t0`` up to ``t_end`` (shared by all figures of a report).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mins = lambda t: (t - t0) / 60.0  # noqa: E731 - local axis helper
    ents = [e for e in events if e.entity == entity]
    prim = None
    for f in faults:
        prim = _primary_series(f.fault, series or {})
        if prim:
            break
    fig, ax = plt.subplots(figsize=(9, 2.8))
    try:
        kinds = sorted({e.kind for e in ents if e.category == "anomaly"})
        colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
        if prim is not None:
            label, pts, limit = prim
            ax.plot([mins(t) for t, _ in pts], [v for _, v in pts], lw=1, color="#333", label=label)
            if limit:
                ax.axhline(limit, color="red", lw=0.8, ls="--", label="limit")
            ax.set_ylabel(label if len(label) < 30 else label.split(" ")[0], fontsize=8)
            for k in kinds:
                xs = [mins(e.ts) for e in ents if e.category == "anomaly" and e.kind == k]
                ax.plot(xs, [0.97] * len(xs), "v", ms=6, color=colors[k], label=f"anomaly {k}",
                        transform=ax.get_xaxis_transform(), ls="none")  # fmt: skip
        else:  # event timeline: one row per anomaly kind
            for i, k in enumerate(kinds):
                xs = [mins(e.ts) for e in ents if e.category == "anomaly" and e.kind == k]
                ax.plot(xs, [i] * len(xs), "o", ms=5, color=colors[k], label=f"anomaly {k}")
            ax.set_yticks(range(len(kinds)), kinds)
            ax.set_ylim(-1, max(1, len(kinds)))
            if not kinds:
                ax.text(0.5, 0.5, "no anomalies", transform=ax.transAxes, ha="center")
        for f in faults:
            hi = f.end if f.end is not None else t_end
            ax.axvspan(mins(f.start), mins(hi), color="orange", alpha=0.15)
        for g in truth:
            if g.get("entity") == entity:
                for oom in g.get("ooms") or []:
                    ax.axvline(mins(oom), color="red", lw=1.5, label="OOM kill")
        for e in ents:
            if e.category == "repair" and e.decided:
                ls = "-" if e.enforced else ":"
                ax.axvline(mins(e.ts), color="green", ls=ls, lw=1.2)
                tag = (
                    e.kind
                    + (" (predictive)" if e.predictive else "")
                    + ("" if e.enforced else f" [{e.status}]")
                )
                ax.text(mins(e.ts), 0.02, " " + tag, rotation=90, fontsize=7, color="green",
                        transform=ax.get_xaxis_transform(), va="bottom")  # fmt: skip
        ax.set_xlim(mins(t0), mins(max(t_end, t0 + 60)))
        ax.set_xlabel("minutes since start")
        ax.set_title(f"{entity}: " + ", ".join(f.fault for f in faults), fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=False))
        if uniq:
            ax.legend(
                uniq.values(), uniq.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0)
            )
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f3f3f3}.miss{color:#b00;font-weight:bold}
.ok{color:#070}.num{text-align:right}img{max-width:100%;display:block;margin:.5em 0 1.5em}"""


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{c if isinstance(c, _Raw) else esc(str(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


_FAULT_COLS = "entity|fault|start (UTC)|detected by|delay|lead|cleared by|time to recovery"
_FAULT_COLS += "|anomalies|repairs (*predictive)"
_REPAIR_COLS = "time (UTC)|entity|action|mode|status|predictive|reason"


def _fault_row(f: FaultResult) -> tuple[Any, ...]:
    found = f'<span class="ok">{html.escape(f.detected_by or "")}</span>'
    status = _Raw(found if f.detected else '<span class="miss">missed</span>')
    reps = [
        r["action"]
        + ("*" if r["predictive"] else "")
        + ("" if r["status"] == "execute" else f" [{r['status']}]")
        for r in f.repairs
    ]
    return (f.entity, f.fault, _iso(f.start), status, _fmt_s(f.detection_delay_s),
            _fmt_s(f.predictive_lead_s), f.cleared_by or "-", _fmt_s(f.time_to_recovery_s),
            f.anomalies, ", ".join(reps) or "-")  # fmt: skip


def _repair_row(e: Event) -> tuple[Any, ...]:
    reason = e.data.get("reason")
    why = "; ".join(map(str, reason)) if isinstance(reason, list) else str(reason or "")
    return (_iso(e.ts), e.entity, e.kind, e.mode, e.status, "yes" if e.predictive else "no", why)


def render_html(
    summary: Summary,
    events: Sequence[Event],
    *,
    samples: Mapping[str, Series] | None = None,
    truth: Sequence[Mapping[str, Any]] = (),
    title: str = "selfheal report",
    notes: str = "",
    extra_html: str = "",
) -> str:
    """The whole report as one self-contained HTML page."""
    s, esc = summary, html.escape
    fa = "n/a (no ground truth)" if s.false_alarms is None else str(s.false_alarms)
    times = [f.start for f in s.faults] + [f.end for f in s.faults if f.end is not None]
    times += [e.ts for e in events]
    for ser in (samples or {}).values():
        for pts in ser.values():
            times += [pts[0][0], pts[-1][0]]
    t0, t_end = (min(times), max(times)) if times else (0.0, 60.0)
    repairs = f"{s.repairs} ({s.repairs_enforced} / {s.repairs_dry_run} / "
    repairs += f"{s.repairs_withheld} / {s.predictive_repairs})"
    overview = [
        ("faults", len(s.faults)), ("detected", s.detected), ("missed", s.missed),
        ("median detection delay", _fmt_s(s.median_detection_delay_s)),
        ("median predictive lead time", _fmt_s(s.median_predictive_lead_s)),
        ("anomalies", s.anomalies), (f"false alarms (grace {s.grace_s:.0f}s)", fa),
        ("repairs (enforced / dry run / withheld / predictive)", repairs),
        ("recovered by a repair", s.recovered),
        ("median time to recovery", _fmt_s(s.median_time_to_recovery_s)),
    ]  # fmt: skip
    fa_rows = [
        (_iso(a["ts"]), a["entity"], a["kind"], a.get("metric") or "-", a.get("severity") or "-")
        for a in s.false_alarm_events[:100]
    ]
    more = len(s.false_alarm_events) - len(fa_rows)
    rep_rows = [_repair_row(e) for e in events if e.category == "repair"]
    by_entity: dict[str, list[FaultResult]] = {}
    for f in s.faults:
        by_entity.setdefault(f.entity, []).append(f)
    figs = []
    for entity, fs in by_entity.items():
        png = entity_figure(entity, fs, events, (samples or {}).get(entity), t0, t_end, truth)
        figs.append(f'<h3>{esc(entity)}</h3><img alt="{esc(entity)}" '
                    f'src="data:image/png;base64,{png}">')  # fmt: skip
    fa_html = f"<p>{'none' if s.false_alarms == 0 else fa}</p>"
    if fa_rows:
        fa_html = _table(["time (UTC)", "entity", "kind", "metric", "severity"], fa_rows)
    if more > 0:
        fa_html += f"<p>... and {more} more</p>"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
        f"<p>{esc(notes)}</p>" if notes else "",
        "<h2>Summary</h2>", _table(["measure", "value"], overview),
        "<h2>Faults</h2>", _table(_FAULT_COLS.split("|"), map(_fault_row, s.faults)),
        "<h2>False alarms</h2>", fa_html,
        "<h2>Repairs</h2>",
        _table(_REPAIR_COLS.split("|"), rep_rows) if rep_rows else "<p>none</p>",
        extra_html, "<h2>Faulty entities</h2>", *figs, "</body></html>",
    ]  # fmt: skip
    return "\n".join(parts)


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfheal report", description="Score anomaly/repair events, render an HTML report."
    )
    add = p.add_argument
    add("events", type=Path, metavar="EVENTS.jsonl", help="anomaly/repair CloudEvents, JSON lines")
    add("--truth", type=Path, metavar="TRUTH.json", help="simulator ground truth")
    add("--samples", type=Path, metavar="SAMPLES.jsonl", help="metric samples to plot")
    add("--out", type=Path, required=True, metavar="report.html")
    add("--audit", type=Path, metavar="AUDIT.jsonl",
        help="audit trail: adds the repair effectiveness section")  # fmt: skip
    add("--grace", type=float, default=DEFAULT_GRACE_S, metavar="S",
        help="seconds after a fault ends before anomalies count as false alarms")  # fmt: skip
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        for path in (args.events, args.truth, args.samples, args.audit):
            if path is not None and not path.is_file():
                parser.error(f"no such file: {path}")
    except SystemExit as exc:  # usage errors exit 2, --help 0
        return int(exc.code or 0)
    raw, bad = read_jsonl(args.events)
    truth_doc: Any = orjson.loads(args.truth.read_bytes()) if args.truth else None
    truth = _truth_list(truth_doc)
    events = sorted((e for e in map(normalize_event, raw) if e is not None), key=lambda e: e.ts)
    summary = summarize(events, truth, grace_s=args.grace)
    samples = None
    if args.samples is not None:
        samples = load_samples(args.samples, {f.entity for f in summary.faults})
    notes = f"{len(raw)} events read from {args.events.name}"
    if bad:
        notes += f", {bad} malformed lines skipped"
    if len(raw) != len(events):
        notes += f", {len(raw) - len(events)} neither anomaly nor repair"
    rows = None
    if args.audit is not None:
        rows = effectiveness_rows(raw, read_jsonl(args.audit)[0])
    page = render_html(
        summary, events, samples=samples, truth=truth or [], notes=notes,
        extra_html=section_html(rows),
    )  # fmt: skip
    args.out.write_text(page, encoding="utf-8")
    print("\n".join(summary_lines(summary)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
