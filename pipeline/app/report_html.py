"""The HTML page of ``selfheal report``: what an on-call engineer reads after a night.

Order: time range and mode; incidents (when the events have them: each with its probable
causes, its repair plan and its anomalies, ``report_incidents``); problems never cleared;
anomalies by entity and kind (those in no incident, when there are incidents); repairs
(grouped, with their verification outcome and what they cited in words); repairs awaiting
approval; the ground-truth scorecard (only with ``--truth``); page-wide plots. One
self-contained page: figures are embedded PNGs, no external links.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from selfheal.pipeline.app.report_plots import (
    Series,
    entity_figure,
    fmt_value,
    overview_figure,
)

if TYPE_CHECKING:
    from selfheal.pipeline.app.report import Event, FaultResult, Summary

#: plots drawn per report at most (the most anomalous entities first)
MAX_PLOTS = 20
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1400px}
h1{margin-bottom:.2em}.meta{color:#555;margin-top:0}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.bad{color:#b00;font-weight:bold}.ok{color:#070}.muted{color:#777}
tr.open td{background:#fde8e8}td ul{margin:0;padding-left:1.2em}section{margin-bottom:1.5em}
img.plot{width:100%;height:auto;display:block;margin:.3em 0 1.2em}"""


class Raw(str):
    """Already-escaped HTML for a table cell."""


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    sign, v = ("-" if v < 0 else ""), abs(v)
    if v < 120:
        return f"{sign}{v:.0f} s"
    return f"{sign}{v / 60:.1f} min" if v < 7200 else f"{sign}{v / 3600:.1f} h"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], row_class: str = "") -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    cls = f' class="{row_class}"' if row_class else ""
    body = "".join(
        f"<tr{cls}>"
        + "".join(f"<td>{c if isinstance(c, Raw) else esc(str(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{html.escape(title)}</h2>{body}</section>'


def cited(anomaly: Event | None, ident: str) -> str:
    """An anomaly in words: kind, metric and value (the id only when the event is unknown)."""
    if anomaly is None:
        return f"anomaly {ident} (not in this file)"
    d = anomaly.data
    metric = str(d.get("metric", ""))
    text = f"{anomaly.kind}: {metric}"
    if isinstance(d.get("value"), int | float):
        text += f" = {fmt_value(metric, float(d['value']))}"
    forecast = d.get("forecast")
    if isinstance(forecast, Mapping) and isinstance(forecast.get("eta_seconds"), int | float):
        text += f", breach forecast in {fmt_s(float(forecast['eta_seconds']))}"
    return text + f" at {iso(anomaly.ts)[11:]}"


@dataclass
class RepairGroup:
    """Consecutive repairs of one action on one entity with one status: ``scale_up x39``."""

    entity: str
    action: str
    status: str
    predictive: bool
    first: float
    last: float
    count: int = 0
    reasons: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)


def repair_groups(
    repairs: Sequence[Event], by_id: Mapping[str, Event], verdicts: Mapping[str, bool]
) -> list[RepairGroup]:
    groups: dict[tuple[str, str, str], RepairGroup] = {}
    for e in repairs:
        key = (e.entity, e.kind, e.status)
        g = groups.get(key)
        if g is None:
            g = groups[key] = RepairGroup(e.entity, e.kind, e.status, e.predictive, e.ts, e.ts)
        g.count += 1
        g.last = e.ts
        g.ids.append(e.id)
        g.predictive = g.predictive or e.predictive
        reason = e.data.get("reason")
        for rid in reason if isinstance(reason, list) else []:
            text = cited(by_id.get(str(rid)), str(rid))
            if text not in g.reasons:
                g.reasons.append(text)
        if e.status == "execute":
            verdict = verdicts.get(e.id)
            g.outcomes["unverified" if verdict is None else "ok" if verdict else "failed"] += 1
    return sorted(groups.values(), key=lambda g: (g.first, g.entity))


def _outcome_cell(g: RepairGroup, have_audit: bool) -> Raw:
    if g.status != "execute":
        return Raw('<span class="muted">not executed</span>')
    if not have_audit:
        return Raw('<span class="muted">unknown (no --audit file)</span>')
    parts = []
    for name, css in (("ok", "ok"), ("failed", "bad"), ("unverified", "muted")):
        if g.outcomes[name]:
            parts.append(f'<span class="{css}">{g.outcomes[name]} {name}</span>')
    return Raw(", ".join(parts))


def _repairs_html(groups: Sequence[RepairGroup], have_audit: bool) -> str:
    if not groups:
        return "<p>No repairs were decided.</p>"
    rows = []
    for g in groups:
        what = g.action + (f" x{g.count}" if g.count > 1 else "")
        when = iso(g.first) if g.count == 1 else f"{iso(g.first)} to {iso(g.last)[11:]}"
        status = g.status.replace("_", " ") + (" (predictive)" if g.predictive else "")
        cites = "; ".join(g.reasons[:3]) + (
            f"; +{len(g.reasons) - 3} more" if len(g.reasons) > 3 else ""
        )
        rows.append((when, g.entity, what, status, _outcome_cell(g, have_audit), cites or "-"))
    head = ["time (UTC)", "entity", "repair", "status", "verification", "cited anomalies"]
    return table(head, rows)


def _anomalies_html(anomalies: Sequence[Event]) -> str:
    if not anomalies:
        return "<p>No anomalies.</p>"
    groups: dict[tuple[str, str], list[Event]] = {}
    for a in anomalies:
        groups.setdefault((a.entity, a.kind), []).append(a)
    rows = []
    for (entity, kind), evs in sorted(groups.items(), key=lambda kv: (kv[1][0].ts, kv[0])):
        metric = Counter(str(e.data.get("metric", "")) for e in evs).most_common(1)[0][0]
        values = [
            float(e.data["value"])
            for e in evs
            if e.data.get("metric") == metric and isinstance(e.data.get("value"), int | float)
        ]
        peak = fmt_value(metric, max(values, key=abs)) if values else "-"
        sev = Counter(str(e.data.get("severity", "-")) for e in evs).most_common(1)[0][0]
        rows.append((entity, kind, len(evs), iso(evs[0].ts), iso(evs[-1].ts), metric, peak, sev))
    head = ["entity", "kind", "count", "first (UTC)", "last (UTC)", "metric", "peak", "severity"]
    return table(head, rows)


def not_cleared(
    summary: Summary | None, events: Sequence[Event], verdicts: Mapping[str, bool], t_end: float
) -> list[tuple[str, str, str, str]]:
    """(entity, problem, since, why): faults never cleared (ground truth), else entities whose
    anomalies continue to the end with no verified repair after them."""
    if summary is not None and summary.faults:
        return [
            (f.entity, f.fault, iso(f.start), "fault still active at the end (ground truth)")
            for f in summary.faults
            if f.end is None
        ]
    last_anomaly: dict[str, Event] = {}
    last_fixed: dict[str, float] = {}
    for e in events:
        if e.category == "anomaly":
            last_anomaly[e.entity] = e
        elif e.category == "repair" and verdicts.get(e.id):
            last_fixed[e.entity] = e.ts
    out = []
    for entity, a in sorted(last_anomaly.items()):
        if a.ts >= t_end - 600 and a.ts > last_fixed.get(entity, -1.0):
            why = "anomalies until the end of the range, no verified repair after them"
            out.append((entity, a.kind, iso(a.ts), why))
    return out


def _scorecard_html(s: Summary) -> str:
    overview = [
        ("faults", len(s.faults)),
        ("detected", s.detected),
        ("missed", s.missed),
        ("median detection delay", fmt_s(s.median_detection_delay_s)),
        ("median predictive lead time", fmt_s(s.median_predictive_lead_s)),
        (f"false alarms (outside fault windows + {s.grace_s:.0f} s)", s.false_alarms),
        ("faults cleared by a repair", s.recovered),
        ("median time to recovery", fmt_s(s.median_time_to_recovery_s)),
    ]
    rows = []
    for f in s.faults:
        found = (
            Raw(f'<span class="ok">{html.escape(f.detected_by or "")}</span>')
            if f.detected
            else Raw('<span class="bad">missed</span>')
        )
        rows.append(
            (
                f.entity,
                f.fault,
                iso(f.start),
                found,
                fmt_s(f.detection_delay_s),
                fmt_s(f.predictive_lead_s),
                f.cleared_by or "never",
                fmt_s(f.time_to_recovery_s),
            )
        )
    head = [
        "entity",
        "fault",
        "start (UTC)",
        "detected by",
        "delay",
        "predictive lead",
        "cleared by",
        "time to recovery",
    ]
    fa = s.false_alarm_events[:50]
    fa_html = table(
        ["time (UTC)", "entity", "kind", "metric"],
        [(iso(a["ts"]), a["entity"], a["kind"], a.get("metric") or "-") for a in fa],
    )
    more = len(s.false_alarm_events) - len(fa)
    return (
        table(["measure", "value"], overview)
        + "<h3>Faults</h3>"
        + table(head, rows)
        + "<h3>False alarms</h3>"
        + (fa_html if fa else "<p>none</p>")
        + (f"<p>... and {more} more</p>" if more > 0 else "")
    )


def mode_text(repairs: Sequence[Event]) -> str:
    modes = Counter(e.mode for e in repairs)
    if not modes:
        return "no repairs decided"
    if len(modes) == 1:
        return "enforce (repairs executed)" if "enforce" in modes else "dry run (nothing executed)"
    return f"mixed: {modes['enforce']} repairs enforced, {modes['dry_run']} in dry run"


def render_html(
    events: Sequence[Event],
    *,
    summary: Summary | None = None,
    samples: Mapping[str, Series] | None = None,
    truth: Sequence[Mapping[str, Any]] = (),
    verdicts: Mapping[str, bool] | None = None,
    title: str = "selfheal report",
    notes: str = "",
    extra: str = "",
    first: str = "",
    loose: Sequence[Event] | None = None,
) -> str:
    """The whole report as one page; ``summary`` (the scorecard) only with ground truth;
    ``extra``: more sections (HTML) placed before the plots; ``first``: the incidents section,
    placed before everything, and then ``loose`` are the anomalies in no incident."""
    esc = html.escape
    anomalies = [e for e in events if e.category == "anomaly"]
    repairs = [e for e in events if e.category == "repair"]
    faults: list[FaultResult] = list(summary.faults) if summary else []
    times = [e.ts for e in events] + [f.start for f in faults]
    times += [f.end for f in faults if f.end is not None]
    t0, t_end = (min(times), max(times)) if times else (0.0, 60.0)
    by_id = {e.id: e for e in anomalies if e.id}
    groups = repair_groups(repairs, by_id, verdicts or {})
    decided = [g for g in groups if g.status != "pending_approval"]
    pending = [e for e in repairs if e.status == "pending_approval"]
    open_rows = not_cleared(summary, events, verdicts or {}, t_end)
    entities = {e.entity for e in anomalies}
    head = (
        f"<p class='meta'><b>{iso(t0)} to {iso(t_end)} UTC</b> ({fmt_s(t_end - t0)}); "
        f"mode: <b>{esc(mode_text(repairs))}</b>; {len(anomalies)} anomalies on "
        f"{len(entities)} entities, {len(repairs)} repair decisions"
        f"{'; ' + esc(notes) if notes else ''}</p>"
    )
    open_html = (
        table(["entity", "problem", "since (UTC)", "why"], open_rows, row_class="open")
        if open_rows
        else "<p class='ok'>Every problem seen was cleared.</p>"
    )
    pend_html = _pending_html(pending, by_id)
    figs = _plots_html(events, faults, samples or {}, truth, t0, t_end)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{head}",
        first,
        section("not-cleared", f"Problems not cleared ({len(open_rows)})", open_html),
        section(
            "anomalies",
            f"Anomalies by entity and kind ({len(anomalies)})"
            if loose is None
            else f"Anomalies in no incident ({len(loose)})",
            _anomalies_html(anomalies if loose is None else loose),
        ),
        section(
            "repairs",
            f"Repairs ({len(repairs) - len(pending)})",
            _repairs_html(decided, verdicts is not None),
        ),
        section("approvals", f"Awaiting approval ({len(pending)})", pend_html),
        section("scorecard", "Scorecard against the ground truth", _scorecard_html(summary))
        if summary is not None
        else "",
        extra,
        section("plots", "Plots (times UTC)", figs or "<p>Nothing to plot.</p>"),
        "</body></html>",
    ]
    return "\n".join(parts)


def _pending_html(pending: Sequence[Event], by_id: Mapping[str, Event]) -> str:
    if not pending:
        return "<p>None.</p>"
    rows = []
    for e in pending:
        reasons = e.data.get("reason") or []
        why = "; ".join(cited(by_id.get(str(r)), str(r)) for r in reasons) or "-"
        rows.append((iso(e.ts), e.entity, e.kind, why, e.id or "-"))
    head = [
        "time (UTC)",
        "entity",
        "action",
        "cited anomalies",
        "decision id (selfheal approve ID)",
    ]
    return table(head, rows)


def _plots_html(
    events: Sequence[Event],
    faults: Sequence[FaultResult],
    samples: Mapping[str, Series],
    truth: Sequence[Mapping[str, Any]],
    t0: float,
    t_end: float,
) -> str:
    """The overview, then one figure per faulty entity (or per most anomalous entity)."""
    anomalies = [e for e in events if e.category == "anomaly"]
    entities = [f.entity for f in faults] or [
        name for name, _ in Counter(e.entity for e in anomalies).most_common(MAX_PLOTS)
    ]
    figs = []
    if anomalies or faults:
        figs.append(_img("overview", overview_figure(events, t0, t_end)))
    for entity in list(dict.fromkeys(entities))[:MAX_PLOTS]:
        fs = [f for f in faults if f.entity == entity]
        png = entity_figure(entity, fs, events, samples.get(entity), t0, t_end, truth)
        figs.append(_img(entity, png))
    return "".join(figs)


def _img(name: str, png: str) -> str:
    esc = html.escape
    return (
        f'<h3>{esc(name)}</h3><img class="plot" alt="{esc(name)}" '
        f'src="data:image/png;base64,{png}">'
    )
