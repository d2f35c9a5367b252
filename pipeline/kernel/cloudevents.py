"""The CloudEvents selfheal emits, built in one place for every path that sends them.

The repair topic, the webhook executor and replays all publish exactly these shapes; the JSON
Schemas ``selfheal schema`` prints (``selfheal.pipeline.kernel.schemas``) describe them, and a test
validates every event of a demo run against those schemas.

>>> from selfheal.pipeline.kernel.types import Decision, Mode, RepairAction
>>> d = Decision("id-1", 0.0, RepairAction.RESTART, "api-1", Mode.DRY_RUN, False, ("a-1",))
>>> ev = repair_event(d, "selfheal")
>>> ev["type"], ev["time"], ev["data"]["mode"]
('io.selfheal.repair.restart', '1970-01-01T00:00:00.000Z', 'dry_run')
"""

from __future__ import annotations

from typing import Any

from selfheal.pipeline.kernel.schemas import epoch_to_rfc3339
from selfheal.pipeline.kernel.types import Anomaly, Decision

ANOMALY_PREFIX = "io.selfheal.anomaly."
REPAIR_PREFIX = "io.selfheal.repair."
INCIDENT_PREFIX = "io.selfheal.incident."


def cloudevent(
    event_id: str, source: str, type_: str, subject: str, ts: float, data: dict[str, Any]
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode body."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": type_,
        "subject": subject,
        "time": epoch_to_rfc3339(ts),
        "datacontenttype": "application/json",
        "data": data,
    }


def anomaly_event(a: Anomaly, source: str) -> dict[str, Any]:
    f = a.finding
    data: dict[str, Any] = {
        "entity": f.entity,
        "metric": f.metric,
        "detector": f.detector,
        "kind": f.kind.value,
        "severity": f.severity.value,
        "score": f.score,
        "threshold": f.threshold,
        "value": f.value,
        "evidence": dict(f.evidence),
    }
    if f.forecast is not None:
        data["forecast"] = {
            "eta_seconds": f.forecast.eta_seconds,
            "horizon_seconds": f.forecast.horizon_seconds,
            "confidence": f.forecast.confidence,
        }
    if f.labels:
        data["labels"] = dict(f.labels)
    return cloudevent(a.id, source, ANOMALY_PREFIX + f.kind.value, f.entity, f.ts, data)


def repair_event(d: Decision, source: str) -> dict[str, Any]:
    """``io.selfheal.repair.<action>``: a decision, executed, dry run or awaiting approval."""
    data = {
        "action": d.action.value,
        "entity": d.entity,
        "mode": d.mode.value,
        "predictive": d.predictive,
        "reason": list(d.reason),
        "params": dict(d.params),
        "status": d.status.value,
        "rule": d.rule,
        "explanation": d.explanation,
    }
    return cloudevent(d.id, source, REPAIR_PREFIX + d.action.value, d.entity, d.ts, data)


def incident_event(
    event_id: str, state: str, ts: float, data: dict[str, Any], source: str
) -> dict[str, Any]:
    """``io.selfheal.incident.<opened|updated|resolved>``; ``subject`` is the incident id."""
    return cloudevent(event_id, source, INCIDENT_PREFIX + state, data["incident_id"], ts, data)
