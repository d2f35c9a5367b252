"""What one batch's outputs become: Kafka records, audit records and metric updates.

Shared by the Kafka runner and the file replay, so both report alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import attrgetter

from selfheal.connectors.kafka import OutRecord
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.core.audit import AuditRecord, decision_record, verification_record
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.deadletter import deadletter_records
from selfheal.pipeline.core.events import anomaly_event, dumps, repair_event
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.stage import Outputs
from selfheal.pipeline.kernel.cloudevents import incident_event
from selfheal.pipeline.kernel.types import Batch, DecisionStatus, Envelope, RepairAction

_TOPIC = attrgetter("topic")


def audit_records(out: Outputs) -> list[AuditRecord]:
    """Every decision (executed or suppressed) and every verification, for the audit trail."""
    return [decision_record(d) for d in out.decisions] + [
        verification_record(v) for v in out.verifications
    ]


def encode_outputs(out: Outputs, settings: Settings) -> list[OutRecord]:
    """Kafka records for one batch's outputs, in a stable order."""
    t = settings.kafka.topics
    src = settings.runtime.source
    records: list[OutRecord] = []
    for a in out.anomalies:
        records.append((t.anomalies, a.finding.entity.encode(), dumps(anomaly_event(a, src))))
    for d in out.decisions:
        if d.status is not DecisionStatus.SUPPRESSED:
            records.append((t.repairs, d.entity.encode(), dumps(repair_event(d, src))))
        elif (withdrawn := oc.withdrawn_event(d, src)) is not None:
            key = str(withdrawn["data"]["decision_id"]).encode()
            records.append((t.outcomes, key, dumps(withdrawn)))
    for v in out.verifications:  # ends an approved repair's wait (``entity_hold``)
        records.append((t.outcomes, v.decision_id.encode(), dumps(oc.verified_event(v, src))))
    for e in out.incidents:
        body = dumps(incident_event(e.id, e.state, e.ts, e.data, src))
        records.append((t.incidents, e.data["incident_id"].encode(), body))
    for rec in audit_records(out):
        records.append((t.audit, rec.entity.encode(), rec.to_json().rstrip(b"\n")))
    cap = settings.validation.deadletter_payload_bytes
    for r, dead in deadletter_records(out.rejects, cap):
        records.append((t.deadletter, r.envelope.key, dumps(dead)))
    return records


def observe_outputs(
    m: Metrics, out: Outputs, batch: Sequence[Envelope], settings: Settings
) -> None:
    """Update the counters for one batch (shared by the Kafka and file runners)."""
    if out.accepted:
        m.validation_success.inc(out.accepted)
    for a in out.anomalies:
        m.anomalies_detected.labels(a.finding.kind.value).inc()
        m.alerts_generated.labels(a.finding.severity.value).inc()
    for r in out.rejects:
        m.validation_failures.labels(m.reject_field(r.field)).inc()
        m.deadletters.labels(r.reason.value).inc()
    for d in out.decisions:
        if d.status is DecisionStatus.EXECUTE and d.action is RepairAction.ESCALATE:
            # paging a human is not a repair: it is never verified, so it would read as a
            # failed repair in the success ratio
            m.escalations.labels(str(bool(d.params.get("resolved"))).lower()).inc()
        elif d.status is DecisionStatus.EXECUTE:
            m.repairs_attempted.labels(d.action.value).inc()
        elif d.suppressed_by is not None:
            m.repairs_suppressed.labels(d.suppressed_by.value).inc()
    for v in out.verifications:
        if v.success:
            m.repairs_successful.labels(v.action.value).inc()
        m.repair_duration.labels(v.action.value).observe(v.duration_seconds)
    if batch:
        # a Kafka batch comes counted; else counted in C, not per message in Python
        counts = batch.topic_counts if isinstance(batch, Batch) else Counter(map(_TOPIC, batch))
        for topic, n in counts.items():
            m.samples_processed.labels(topic).inc(n)


def observe_breakers(m: Metrics, executors: Sequence[object], seen: dict[str, int]) -> None:
    """``circuit_breaker_state`` and ``_failures_total`` of the executors' targets; ``seen``
    holds the failures already counted per target (the caller keeps it between calls)."""
    for ex in executors:
        states = getattr(ex, "breakers", None)
        if not isinstance(states, dict):
            continue
        for target, br in states.items():
            m.breaker_state.labels(target).set(int(br.state))
            before = seen.get(target, 0)
            if br.failures_total > before:
                m.breaker_failures.labels(target).inc(br.failures_total - before)
                seen[target] = br.failures_total
