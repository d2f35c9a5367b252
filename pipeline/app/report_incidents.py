"""The report's incidents: each incident first, its causes, its repair plan and its anomalies.

Incident CloudEvents (``io.selfheal.incident.<state>``) repeat the whole incident at every
revision, so the report keeps the latest revision of each; an incident merged into another
(``merged_into``) is shown as part of the survivor. Anomalies and repairs are placed under the
incident that lists them (anomaly ids, ``params.incident_id``), else under the incident that
had their entity at their time; the rest are listed after the incidents. The audit trail adds
the repairs the plan left to the probable cause (decisions suppressed as ``symptom``).

>>> inc = {"type": "io.selfheal.incident.updated", "time": "2026-11-28T05:00:00Z",
...        "data": {"incident_id": "i1", "state": "updated", "revision": 2,
...                 "entities": ["db-1", "web-1"], "anomalies": [], "anomaly_count": 2,
...                 "causes": [{"entity": "db-1", "score": 0.85, "evidence": ["broke first"]}],
...                 "started": 1795842000.0, "resolved": None}}
>>> [(i.id, i.state, i.entities, i.causes[0]["entity"]) for i in read_incidents([inc])]
[('i1', 'updated', ['db-1', 'web-1'], 'db-1')]
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from selfheal.pipeline.app.report_html import (
    Raw,
    RepairGroup,
    fmt_s,
    iso,
    repair_groups,
    section,
    table,
)
from selfheal.pipeline.kernel.cloudevents import INCIDENT_PREFIX
from selfheal.pipeline.kernel.schemas import parse_ts

if TYPE_CHECKING:
    from selfheal.pipeline.app.report import Event

#: causes shown per incident (the ranking goes on, the reader needs the first few)
MAX_CAUSES = 3
_INCIDENT_IN_TEXT = re.compile(r"incident ([0-9a-f-]{36})")


@dataclass
class IncidentView:
    """One incident as its latest revision describes it, with what the report placed under it."""

    id: str
    state: str
    revision: int
    started: float
    resolved: float | None
    entities: list[str]
    causes: list[Mapping[str, Any]]
    anomaly_ids: set[str]
    anomaly_count: int
    merged: list[str] = field(default_factory=list)  #: incidents merged into this one
    anomalies: list[Event] = field(default_factory=list)
    repairs: list[Event] = field(default_factory=list)
    #: action -> entities whose repair the plan left to the probable cause (from the audit)
    left_to_cause: dict[str, Counter[str]] = field(default_factory=dict)

    def covers(self, entity: str, ts: float) -> bool:
        end = math.inf if self.resolved is None else self.resolved
        return entity in self.entities and self.started <= ts <= end


def _rank(ev: Mapping[str, Any]) -> tuple[int, bool]:
    data = ev["data"]
    return int(data.get("revision") or 0), data.get("state") == "resolved"


def read_incidents(raw: Iterable[Mapping[str, Any]]) -> list[IncidentView]:
    """The incidents of a list of CloudEvents (latest revision each), merged ones folded in."""
    latest: dict[str, Mapping[str, Any]] = {}
    for ev in raw:
        data = ev.get("data")
        if not str(ev.get("type", "")).startswith(INCIDENT_PREFIX) or not isinstance(data, dict):
            continue
        ident = str(data.get("incident_id") or ev.get("subject") or "")
        if ident and (ident not in latest or _rank(ev) >= _rank(latest[ident])):
            latest[ident] = ev
    views: dict[str, IncidentView] = {}
    for ident, ev in latest.items():
        d = ev["data"]
        views[ident] = IncidentView(
            ident,
            str(d.get("state", "")),
            int(d.get("revision") or 0),
            float(d.get("started") or parse_ts(ev.get("time"))),
            None if d.get("resolved") is None else float(d["resolved"]),
            [str(e) for e in d.get("entities") or []],
            [c for c in d.get("causes") or [] if isinstance(c, Mapping)],
            {str(a) for a in d.get("anomalies") or []},
            int(d.get("anomaly_count") or 0),
        )
    for ident in latest:
        into = survivor(latest, ident)
        if into != ident:  # the survivor's last revision may predate the merge
            keep, gone = views[into], views[ident]
            keep.merged.append(ident)
            keep.anomaly_ids |= gone.anomaly_ids
            keep.entities += [e for e in gone.entities if e not in keep.entities]
            keep.started = min(keep.started, gone.started)
    kept = [v for k, v in views.items() if survivor(latest, k) == k]
    return sorted(kept, key=lambda v: (v.started, v.id))


def survivor(latest: Mapping[str, Mapping[str, Any]], ident: str) -> str:
    """The incident ``ident`` ended up in (following ``merged_into`` links)."""
    seen = {ident}
    while True:
        into = latest[ident]["data"].get("merged_into")
        if not into or into not in latest or into in seen:
            return ident
        seen.add(into)
        ident = str(into)


def place(
    incidents: Sequence[IncidentView],
    events: Sequence[Event],
    decisions: Iterable[Mapping[str, Any]] = (),
) -> list[Event]:
    """Put anomalies, repairs and suppressed symptom decisions under their incidents; the
    anomalies that belong to none are returned."""
    by_id = {i.id: i for i in incidents}
    for alias in (m for i in incidents for m in i.merged):
        by_id[alias] = next(i for i in incidents if alias in i.merged)
    loose: list[Event] = []
    for e in events:
        ids = [str(r) for r in e.data.get("reason") or []] if e.category == "repair" else [e.id]
        params = e.data.get("params")
        named = params.get("incident_id") if isinstance(params, Mapping) else None
        inc = by_id.get(str(named)) if named else None
        # a repair cites anomalies of its own entity; a storm's escalation (``storm:restart``)
        # cites many incidents' and belongs to none of them unless it names one
        inc = inc or next(
            (i for i in incidents if i.anomaly_ids.intersection(ids) and e.entity in i.entities),
            None,
        )
        inc = inc or next((i for i in incidents if i.covers(e.entity, e.ts)), None)
        if inc is not None:
            (inc.anomalies if e.category == "anomaly" else inc.repairs).append(e)
        elif e.category == "anomaly":
            loose.append(e)
    for d in decisions:
        if d.get("record") != "decision" or d.get("suppressed_by") != "symptom":
            continue
        m = _INCIDENT_IN_TEXT.search(str(d.get("explanation", "")))
        entity, ts = str(d.get("entity", "")), float(d.get("ts") or 0.0)
        inc = by_id.get(m.group(1)) if m else None
        inc = inc or next((i for i in incidents if i.covers(entity, ts)), None)
        if inc is not None:
            inc.left_to_cause.setdefault(str(d.get("action")), Counter())[entity] += 1
    return loose


def _cause_text(c: Mapping[str, Any]) -> str:
    evidence = "; ".join(str(x) for x in c.get("evidence") or [])
    return f"{c.get('entity')} ({float(c.get('score') or 0):.2f}: {evidence})"


def _when(inc: IncidentView) -> str:
    if inc.resolved is None:
        return f"{iso(inc.started)} UTC, still open"
    return f"{iso(inc.started)} to {iso(inc.resolved)[11:]} UTC"


def entity_rows(anomalies: Sequence[Event]) -> list[tuple[str, str, int, float, float]]:
    """(entity, its kinds with counts, count, first, last): one row per entity, in order of
    first anomaly."""
    kinds: dict[str, Counter[str]] = {}
    times: dict[str, list[float]] = {}
    for a in sorted(anomalies, key=lambda a: (a.ts, a.entity)):
        kinds.setdefault(a.entity, Counter())[a.kind] += 1
        times.setdefault(a.entity, []).append(a.ts)
    return [
        (e, ", ".join(f"{k} x{n}" for k, n in c.most_common()), c.total(), times[e][0],
         times[e][-1])
        for e, c in kinds.items()
    ]  # fmt: skip


def _status(g: RepairGroup) -> str:
    return "executed" if g.status == "execute" else g.status.replace("_", " ")


def _repair_summary(inc: IncidentView) -> list[str]:
    parts = [
        f"{g.entity} {g.action}" + (f" x{g.count}" if g.count > 1 else "") + f" ({_status(g)})"
        for g in repair_groups(inc.repairs, {}, {})
    ]
    for action, who in sorted(inc.left_to_cause.items()):
        parts.append(f"{action} x{who.total()} on {_names(who)} left to the cause")
    return parts


def _names(entities: Iterable[str], most: int = 5) -> str:
    names = sorted(entities)
    shown = ", ".join(names[:most]) + (" ..." if len(names) > most else "")
    return f"{len(names)} entities ({shown})" if len(names) > 1 else shown


def incident_lines(
    incidents: Sequence[IncidentView], loose: Sequence[Event], have_audit: bool
) -> list[str]:
    """The incidents in plain text (the terminal's version of the report's first section)."""
    states = Counter(i.state for i in incidents)
    lines = [
        f"incidents {len(incidents)} ("
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + f"); anomalies in no incident {len(loose)}"
    ]
    multi = [i for i in incidents if len(i.entities) > 1]
    for inc in multi:
        lines.append(
            f"incident {inc.id[:8]} {inc.state}, {_when(inc)}: {len(inc.entities)} entities, "
            f"{len(inc.anomalies)} anomalies"
        )
        for rank, c in enumerate(inc.causes[:MAX_CAUSES], 1):
            lines.append(f"  cause {rank}: {_cause_text(c)}")
        repairs = _repair_summary(inc)
        if not have_audit and inc.repairs:
            repairs.append("repairs left to the cause: see --audit")
        lines.append("  repairs: " + ("; ".join(repairs) or "none"))
        for entity, kinds, n, first, last in entity_rows(inc.anomalies):
            span = iso(first)[11:] + ("" if n == 1 else f" to {iso(last)[11:]}")
            lines.append(f"    {entity:<16} {span:<20}  {kinds}")
    single = [i for i in incidents if len(i.entities) <= 1]
    if single:
        lines.append(f"incidents of one entity: {len(single)}")
    for inc in single:
        what = "; ".join(k for _, k, *_ in entity_rows(inc.anomalies)) or "-"
        done = "; ".join(_repair_summary(inc)) or "no repair"
        lines.append(f"  {inc.id[:8]} {inc.state:<8} {_when(inc)}  {_entity(inc)}: {what}; {done}")
    return lines


def _entity(inc: IncidentView) -> str:
    return inc.entities[0] if inc.entities else "-"


def _causes_table(inc: IncidentView) -> str:
    rows = []
    for rank, c in enumerate(inc.causes[:MAX_CAUSES], 1):
        items = "".join(f"<li>{html.escape(str(x))}</li>" for x in c.get("evidence") or [])
        score = f"{float(c.get('score') or 0):.2f}"
        rows.append((rank, str(c.get("entity", "")), score, Raw(f"<ul>{items}</ul>")))
    more = len(inc.causes) - MAX_CAUSES
    tail = f"<p class='muted'>... and {more} more candidates, less likely</p>" if more > 0 else ""
    return table(["rank", "probable cause", "score", "evidence"], rows) + tail


def _plan_html(inc: IncidentView, have_audit: bool) -> str:
    groups = repair_groups(inc.repairs, {}, {})
    rows = [
        (g.entity, g.action + (f" x{g.count}" if g.count > 1 else ""), _status(g),
         iso(g.first)[11:] if g.count == 1 else f"{iso(g.first)[11:]} to {iso(g.last)[11:]}")
        for g in groups
    ]  # fmt: skip
    for action, who in sorted(inc.left_to_cause.items()):
        rows.append((_names(who), f"{action} x{who.total()}", "left to the probable cause", "-"))
    body = table(["entity", "repair", "status", "time (UTC)"], rows) if rows else ""
    body = body or "<p>No repair was decided for this incident.</p>"
    if not have_audit:
        body += "<p class='muted'>repairs left to the cause: pass --audit to count them</p>"
    return body


def incidents_html(incidents: Sequence[IncidentView], have_audit: bool) -> str:
    """The report's first section: a block per incident of several entities, oldest first,
    then one row per incident of one entity."""
    esc = html.escape
    blocks = []
    for inc in (i for i in incidents if len(i.entities) > 1):
        merged = f"; merged {len(inc.merged)} incidents" if inc.merged else ""
        top = inc.causes[0].get("entity") if inc.causes else None
        blocks.append(
            f'<h3 id="incident-{esc(inc.id)}">incident {esc(inc.id[:8])}: {esc(inc.state)}'
            + (f", probable cause {esc(str(top))}" if top else "")
            + f"</h3><p class='meta'>{esc(_when(inc))} ({fmt_s(_span(inc))}); "
            f"{len(inc.entities)} entities: {esc(', '.join(inc.entities[:12]))}"
            + (" ..." if len(inc.entities) > 12 else "")
            + f"; {len(inc.anomalies)} anomalies{merged}; id {esc(inc.id)}</p>"
            + _causes_table(inc)
            + "<h4>Repair plan taken</h4>"
            + _plan_html(inc, have_audit)
            + f"<h4>Anomalies under it ({len(inc.anomalies)})</h4>"
            + _anomalies_html(inc)
        )
    single = [i for i in incidents if len(i.entities) <= 1]
    if single:
        rows = [
            (inc.id[:8], inc.state, _when(inc), _entity(inc),
             "; ".join(k for _, k, *_ in entity_rows(inc.anomalies)) or "-",
             "; ".join(_repair_summary(inc)) or "-")
            for inc in single
        ]  # fmt: skip
        head = ["incident", "state", "time", "entity", "anomalies", "repairs"]
        blocks.append(f"<h3>Incidents of one entity ({len(single)})</h3>" + table(head, rows))
    return section("incidents", f"Incidents ({len(incidents)})", "".join(blocks))


def _anomalies_html(inc: IncidentView) -> str:
    """One row per entity (its kinds counted), the probable causes' rank beside them."""
    rank = {str(c.get("entity")): n for n, c in enumerate(inc.causes[:MAX_CAUSES], 1)}
    rows = [
        (entity, f"cause {rank[entity]}" if entity in rank else "-", kinds, n, iso(first),
         iso(last))
        for entity, kinds, n, first, last in entity_rows(inc.anomalies)
    ]  # fmt: skip
    head = ["entity", "ranked", "kinds", "count", "first (UTC)", "last (UTC)"]
    return table(head, rows) if rows else "<p>No anomalies in this file.</p>"


def _span(inc: IncidentView) -> float:
    ends = [a.ts for a in inc.anomalies] + [inc.resolved or inc.started]
    return max(ends) - inc.started
