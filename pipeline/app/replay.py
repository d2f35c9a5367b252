"""The same pipeline over files: event time only (watermark), outputs as JSON lines.

Several inputs are merged by event time (``connectors.files``), so a replay sees what a live
run over the same topics would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from selfheal.connectors.audit_file import AuditFileSink
from selfheal.connectors.files import FileSource, JsonlSink
from selfheal.pipeline.app.fleet_progress import log_storm_ends
from selfheal.pipeline.app.gcpause import collector_paused
from selfheal.pipeline.app.outputs import audit_records, observe_outputs
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.deadletter import deadletter_records
from selfheal.pipeline.core.effectiveness import observe_effectiveness
from selfheal.pipeline.core.events import anomaly_event, repair_event
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.stage import Outputs, Pipeline, PolicyLike
from selfheal.pipeline.kernel.cloudevents import incident_event
from selfheal.pipeline.kernel.types import DecisionStatus


@dataclass
class ReplayResult:
    events: int
    anomalies: int
    repairs: int
    rejects: int
    messages: int


def replay(
    settings: Settings,
    policy_factory: Callable[[], PolicyLike],
    inputs: Sequence[Path],
    out_path: Path,
    *,
    metrics: Metrics | None = None,
    deadletter_path: Path | None = None,
) -> ReplayResult:
    """The same pipeline over files: event time only (watermark), outputs as JSON lines."""
    pipe = Pipeline(settings, policy_factory, live=False)
    t = settings.kafka.topics
    src = settings.runtime.source
    source = FileSource(
        list(inputs),
        t.metrics,
        t.logs,
        batch_size=settings.kafka.max_batch,
        changes_topic=t.changes,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(b"")
    sink = JsonlSink(out_path)
    dl_sink = JsonlSink(deadletter_path) if deadletter_path else None
    audit = AuditFileSink(settings.runtime.audit_path) if settings.runtime.audit_path else None
    res = ReplayResult(0, 0, 0, 0, 0)
    m = metrics

    def emit(out: Outputs) -> None:
        events = [anomaly_event(a, src) for a in out.anomalies]
        events += [
            repair_event(d, src) for d in out.decisions if d.status is not DecisionStatus.SUPPRESSED
        ]
        events += [incident_event(e.id, e.state, e.ts, e.data, src) for e in out.incidents]
        sink.write_batch(events)
        res.events += len(events)
        res.anomalies += len(out.anomalies)
        res.repairs += sum(1 for d in out.decisions if d.status is not DecisionStatus.SUPPRESSED)
        res.rejects += len(out.rejects)
        if dl_sink is not None:
            cap = settings.validation.deadletter_payload_bytes
            dl_sink.write_batch([d for _, d in deadletter_records(out.rejects, cap)])
        if audit is not None:
            audit.write_sync(audit_records(out))
        log_storm_ends(pipe)  # (written: orphaned storms resolved in it end on the fleet log)

    try:
        for batch in source.batches():
            res.messages += len(batch)
            with collector_paused():
                out = pipe.process(batch, None)
            emit(out)
            if m is not None:
                observe_outputs(m, out, batch, settings)
        emit(pipe.final_tick())
        if m is not None:
            observe_effectiveness(m, [st.policy for st in pipe.stages.values()])
    finally:
        sink.close()
        if dl_sink is not None:
            dl_sink.close()
        if audit is not None:
            audit.close()
    return res
