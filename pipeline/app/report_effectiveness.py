"""The report's "Repair effectiveness" section: verified outcomes per (kind, action, service).

The verdicts come from the audit trail (``runtime.audit_path``: its ``verification``
records), joined with their ``decision`` records (entity, the anomalies behind the repair)
and with the anomaly events of the report's input (their kind). The counts are kept exactly
as the policy learns them (``selfheal.pipeline.core.effectiveness``); the success ratio is
the posterior mean under the shipped prior.

>>> events = [{"type": "io.selfheal.anomaly.queue_high", "id": "a1"}]
>>> audit = [{"record": "decision", "id": "d1", "entity": "orders-1", "action": "restart",
...           "reason": ["a1"], "rule": "q"},
...          {"record": "verification", "id": "d1", "action": "restart", "success": False}]
>>> [(r.kind, r.action, r.service, r.successes, r.failures) for r in effectiveness_rows(
...     events, audit)]
[('queue_high', 'restart', 'orders', 0, 1)]
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from selfheal.pipeline.core.effectiveness import Effectiveness, service_of
from selfheal.pipeline.core.policy_config import LearningConfig

ANOMALY_PREFIX = "io.selfheal.anomaly."


@dataclass(frozen=True, slots=True)
class Row:
    kind: str
    action: str
    service: str
    successes: int
    failures: int
    ratio: float


def effectiveness_rows(
    events: Iterable[Mapping[str, Any]], audit: Iterable[Mapping[str, Any]]
) -> list[Row]:
    """One row per (kind, action, service) with a verified outcome, most repaired first."""
    kinds = {
        str(e.get("id")): str(e["type"])[len(ANOMALY_PREFIX) :]
        for e in events
        if str(e.get("type", "")).startswith(ANOMALY_PREFIX)
    }
    decisions: dict[str, Mapping[str, Any]] = {}
    verdicts: list[Mapping[str, Any]] = []
    for rec in audit:
        if rec.get("record") == "decision":
            decisions[str(rec.get("id"))] = rec
        elif rec.get("record") == "verification":
            verdicts.append(rec)
    book = Effectiveness()
    for v in verdicts:
        d = decisions.get(str(v.get("id")))
        if d is None:
            continue  # its decision is outside the audit excerpt
        reason = [str(x) for x in d.get("reason") or []]
        kind = next((kinds[a] for a in reason if a in kinds), f"rule {d.get('rule', '?')}")
        entity = str(d.get("entity", ""))
        book.record(kind, str(v.get("action")), service_of(entity), bool(v.get("success")), None)
    prior = LearningConfig()
    rows = [
        Row(kind, action, service, r.successes, r.failures,
            r.mean(prior.prior_successes, prior.prior_failures))
        for (kind, action, service), r in book.records.items()
        if service != "*"
    ]  # fmt: skip
    return sorted(rows, key=lambda r: (-(r.successes + r.failures), r.kind, r.action, r.service))


def section_html(rows: list[Row]) -> str:
    """The report section (``report_html.section`` layout)."""
    head = '<section id="effectiveness"><h2>Repair effectiveness</h2>'
    if not rows:
        return head + "<p>no verified repair in the audit trail</p></section>"
    cells = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(c))}</td>"
            for c in (r.kind, r.action, r.service, r.successes, r.failures, f"{r.ratio:.2f}")
        )
        + "</tr>"
        for r in rows
    )
    cols = "".join(
        f"<th>{c}</th>"
        for c in ("kind", "action", "service", "successes", "failures", "success ratio")
    )
    note = "<p>success ratio: posterior mean, Beta(1, 1) prior plus the verified outcomes</p>"
    return f"{head}{note}<table><tr>{cols}</tr>{cells}</table></section>"
