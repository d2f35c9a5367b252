"""The demo's live view: counters, a row per service, the latest events with dates, an ETA.

:class:`DemoState` folds what a downstream consumer sees (anomaly and repair CloudEvents, audit
verification records) into one state per service; :func:`live_view` draws it for a terminal
and :func:`progress_line` prints it as one plain line when output is not a terminal (a log
file or CI gets progress, not a frozen frame).

>>> s = DemoState(["web-1", "db-1"], start=0.0, span=3600.0)
>>> s.add({"id": "a1", "type": "io.selfheal.anomaly.loop_stuck", "time": "2026-12-01T10:00:00Z",
...        "subject": "web-1", "data": {"kind": "loop_stuck", "entity": "web-1"}})
True
>>> s.service("web-1"), s.service("db-1")
('faulty', 'healthy')
>>> s.add({"id": "d1", "type": "io.selfheal.repair.restart", "time": "2026-12-01T10:01:00Z",
...        "subject": "web-1", "data": {"action": "restart", "status": "execute"}})
True
>>> s.service("web-1")
'repairing'
>>> s.add_audit({"record": "verification", "id": "d1", "success": True})
>>> s.service("web-1"), s.outcomes["ok"]
('healthy', 1)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from selfheal.pipeline.app.report_incidents import (
    IncidentView,
    entity_rows,
    place,
    read_incidents,
)
from selfheal.pipeline.kernel.cloudevents import INCIDENT_PREFIX
from selfheal.pipeline.kernel.schemas import parse_ts

STATES = ("faulty", "repairing", "awaiting approval", "healthy")
_STYLE = {
    "faulty": "red",
    "repairing": "yellow",
    "awaiting approval": "magenta",
    "healthy": "green",
}
#: what each dead-letter reason means in the demo (the summary explains what it counts)
DEADLETTER_MEANING: dict[str, str] = {
    "rate_limited": "an entity sent faster than validation.rate_per_second (the abusive client)",
    "timestamp_future": "timestamps ahead of the watermark by more than max_future_seconds",
    "timestamp_past": "timestamps behind the watermark by more than max_past_seconds",
    "label_cardinality": "too many label sets on one series",
    "series_cardinality": "new series of an entity past detection.max_series_per_entity",
    "entity_cardinality": "new entities past validation.new_entities_per_second",
    "schema": "records that fail the input schema",
    "invalid_json": "bytes that are not JSON",
    "unknown_format": "JSON in no known format",
    "too_large": "messages above validation.max_message_bytes",
    "no_entity": "records without an entity",
}


def utc(ts: float, seconds: bool = True) -> str:
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


@dataclass
class _Service:
    last_anomaly: float | None = None
    anomaly_kind: str = ""
    last_repair: float | None = None
    repair_id: str = ""
    repair_action: str = ""
    pending: bool = False
    anomalies: int = 0
    repairs: int = 0


@dataclass
class DemoState:
    """Everything the live view and the final summary count, from one source."""

    services: Sequence[str]
    start: float
    span: float
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    anomalies: int = 0
    watermark: float = 0.0
    incident_events: list[dict[str, Any]] = field(default_factory=list)
    _svc: dict[str, _Service] = field(default_factory=dict)

    def add(self, ev: Mapping[str, Any]) -> bool:
        """One CloudEvent; False for a duplicate (at-least-once delivery) or a foreign type."""
        ident, typ = str(ev.get("id", "")), str(ev.get("type", ""))
        if not ident or ident in self.events or not typ.startswith("io.selfheal."):
            return False
        self.events[ident] = dict(ev)
        raw = ev.get("data")
        data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        if typ.startswith(INCIDENT_PREFIX):
            self.incident_events.append(dict(ev))  # its subject is the incident, no service
            return True
        entity = str(ev.get("subject") or data.get("entity") or "")
        try:
            ts = parse_ts(ev.get("time"))
        except ValueError:
            ts = self.watermark
        self.watermark = max(self.watermark, ts)
        svc = self._svc.setdefault(entity, _Service())
        if typ.startswith("io.selfheal.anomaly."):
            self.anomalies += 1
            svc.anomalies += 1
            svc.last_anomaly, svc.anomaly_kind = ts, str(data.get("kind", ""))
        elif typ.startswith("io.selfheal.repair."):
            status = str(data.get("status", "execute"))
            self.statuses[status] += 1
            if status == "pending_approval":
                svc.pending = True
            elif status == "execute":
                svc.pending = False
                svc.repairs += 1
                svc.last_repair, svc.repair_id = ts, ident
                svc.repair_action = str(data.get("action", ""))
        return True

    def add_audit(self, rec: Mapping[str, Any]) -> None:
        """An audit record: verifications give repair outcomes (ok / failed)."""
        if rec.get("record") != "verification" or str(rec.get("id")) in self.verdicts:
            return
        ok = bool(rec.get("success"))
        self.verdicts[str(rec["id"])] = ok
        self.outcomes["ok" if ok else "failed"] += 1

    def service(self, name: str) -> str:
        svc = self._svc.get(name)
        if svc is None:
            return "healthy"
        if svc.pending:
            return "awaiting approval"
        if svc.last_repair is not None and (
            svc.last_anomaly is None or svc.last_repair >= svc.last_anomaly
        ):
            return "repairing" if svc.repair_id not in self.verdicts else "healthy"
        # an anomaly recently with no repair after it
        if svc.last_anomaly is not None and self.watermark - svc.last_anomaly < 900:
            return "faulty"
        return "healthy"

    def by_state(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {s: [] for s in STATES}
        names = list(self.services) + sorted(set(self._svc) - set(self.services) - {""})
        for name in names:
            out[self.service(name)].append(name)
        return out

    def fraction(self) -> float:
        return min(1.0, max(0.0, (self.watermark - self.start) / self.span)) if self.span else 1.0

    def incidents(self) -> list[IncidentView]:
        """The incidents so far (latest revision each), their anomalies placed under them;
        open ones first, then the most recent."""
        from selfheal.pipeline.app.report import normalize_event

        views = read_incidents(self.incident_events)
        evs = [e for e in map(normalize_event, self.events.values()) if e is not None]
        place(views, sorted(evs, key=lambda e: e.ts))
        return sorted(views, key=lambda i: (i.state == "resolved", -i.started, i.id))

    def recent(self, n: int = 10) -> list[dict[str, Any]]:
        """The latest anomalies and repairs (incidents have their own table)."""
        evs = (e for e in self.events.values() if not e["type"].startswith(INCIDENT_PREFIX))
        return sorted(evs, key=lambda e: (e.get("time", ""), e["id"]))[-n:]


def eta(state: DemoState, started: float, now: float | None = None) -> str:
    frac = state.fraction()
    if frac <= 0.01:
        return "estimating"
    left = (time.monotonic() if now is None else now) - started
    left = left / frac * (1 - frac)
    return f"{int(left // 60)}:{int(left % 60):02d}"


def counters_line(state: DemoState, messages: int, deadletters: int) -> str:
    st = state.statuses
    return (
        f"{messages:,} messages, {deadletters:,} dead letters | {state.anomalies} anomalies | "
        f"repairs {st['execute']} executed ({state.outcomes['ok']} verified ok, "
        f"{state.outcomes['failed']} failed), {st['dry_run']} dry run, "
        f"{st['pending_approval']} awaiting approval"
    )


def progress_line(state: DemoState, started: float, messages: int, deadletters: int) -> str:
    """One plain line for logs and CI."""
    groups = state.by_state()
    trouble = "; ".join(f"{s}: {', '.join(groups[s])}" for s in STATES[:3] if groups[s])
    return (
        f"[{100 * state.fraction():3.0f}%] {utc(state.watermark or state.start, False)} UTC | "
        f"{counters_line(state, messages, deadletters)} | {incidents_text(state.incidents())} | "
        f"{trouble or 'all services healthy'} | ETA {eta(state, started)}"
    )


def incidents_text(incidents: Sequence[IncidentView]) -> str:
    """``incidents 3 (1 open): 92499e34 orders-1 4 entities`` : the open ones with a cause."""
    live = [i for i in incidents if i.state != "resolved"]
    text = f"incidents {len(incidents)} ({len(live)} open)"
    named = [
        f"{i.id[:8]} {i.causes[0].get('entity')} {len(i.entities)} entities"
        for i in live
        if i.causes and len(i.entities) > 1
    ]
    return text + (": " + ", ".join(named) if named else "")


def _event_row(ev: Mapping[str, Any]) -> tuple[str, str, str, str]:
    d = ev.get("data", {})
    kind = str(ev.get("type", "")).removeprefix("io.selfheal.")
    if kind.startswith("anomaly."):
        detail = f"{d.get('severity')} {d.get('metric', '')} score {d.get('score', 0):.3g}"
        if d.get("forecast"):
            detail += f", breach in {d['forecast']['eta_seconds'] / 60:.0f} min"
        kind = f"[yellow]{kind}[/]"
    else:
        detail = f"{d.get('status')}{' predictive' if d.get('predictive') else ''}"
        kind = f"[green]{kind}[/]"
    try:
        when = utc(parse_ts(ev.get("time")))
    except ValueError:
        when = "-"
    return when, str(ev.get("subject", "")), kind, detail


def incident_table(incidents: Sequence[IncidentView], rows: int = 6, wrap: bool = False) -> Table:
    """One row per incident (several entities first, then open ones, then the most anomalies),
    its anomalies under it: per entity, the kinds counted (cut at the table's width unless
    ``wrap``)."""
    shown = sorted(
        incidents, key=lambda i: (len(i.entities) < 2, i.state == "resolved", -len(i.anomalies))
    )
    t = Table(title=f"incidents ({len(incidents)}), anomalies under each", expand=True)
    for name in ("incident", "state", "since (UTC)", "entities", "top cause"):
        t.add_column(name, no_wrap=True)
    # the list of anomalies takes what the other columns leave
    t.add_column("anomalies", no_wrap=not wrap, overflow="fold" if wrap else "ellipsis", ratio=1)
    for inc in shown[:rows]:
        top = inc.causes[0] if inc.causes else {}
        cause = f"{top.get('entity', '-')} ({float(top.get('score') or 0):.2f})" if top else "-"
        style = "red" if inc.state != "resolved" else "green"
        t.add_row(inc.id[:8], f"[{style}]{inc.state}[/]", utc(inc.started)[5:],
                  str(len(inc.entities)), cause, str(len(inc.anomalies)))  # fmt: skip
        under = "; ".join(f"{e}: {k}" for e, k, *_ in entity_rows(inc.anomalies))
        if under:
            t.add_row("", "", "", "", "", f"[dim]{under}[/]")
    if len(shown) > rows:
        t.add_row(f"+{len(shown) - rows}", "", "", "", "", "[dim]more incidents[/]")
    return t


def live_view(
    state: DemoState, started: float, messages: int, deadletters: int, rows: int = 10
) -> Group:
    head = Table.grid(expand=True)
    head.add_row(
        f"[bold]event time[/] {utc(state.watermark or state.start)} UTC  "
        f"[bold]{100 * state.fraction():.0f}%[/]  ETA {eta(state, started)}"
    )
    head.add_row(counters_line(state, messages, deadletters))
    services = Table(title="services", expand=True, show_edge=False)
    services.add_column("state")
    services.add_column("services")
    for name, members in state.by_state().items():
        if members:
            shown = ", ".join(members) if name != "healthy" else f"{len(members)} services"
            services.add_row(f"[{_STYLE[name]}]{name}[/]", shown)
    latest = Table(title="latest anomalies and repairs (oldest first)", expand=True)
    for name in ("time (UTC)", "entity", "event", "detail"):
        latest.add_column(name)
    for ev in state.recent(rows):
        latest.add_row(*_event_row(ev))
    return Group(head, incident_table(state.incidents()), services, latest)


def deadletter_text(by_reason: Mapping[str, float]) -> Iterable[str]:
    for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1]):
        if n:
            meaning = DEADLETTER_MEANING.get(reason, "rejected input")
            yield f"{n:,.0f} {reason}: {meaning}"
