"""Prometheus metrics of the pipeline. The registry is passed in: no import-time globals.

Label values are bounded: anomaly kinds, actions, reject fields (capped), topic/partition,
collection names. Entity ids never become label values.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    RejectReason,
    RepairAction,
    Severity,
    Suppression,
)

MAX_FIELD_LABELS = 64


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, default_collectors: bool = True
    ) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        if default_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.system_health_status = Gauge(
            "system_health_status", "Health score of the pipeline itself, 0 (down) to 1", registry=r
        )
        self.pipeline_ready = Gauge("pipeline_ready", "1 when connected and consuming", registry=r)
        self.repairs_attempted = Counter(
            "repairs_attempted_total", "Repair actions attempted", ["type"], registry=r
        )
        self.repairs_successful = Counter(
            "repairs_successful_total", "Repair actions verified successful", ["type"], registry=r
        )
        self.repairs_suppressed = Counter(
            "repairs_suppressed_total",
            "Repair decisions suppressed by a safety",
            ["reason"],
            registry=r,
        )
        self.repair_duration = Histogram(
            "repair_duration_seconds",
            "Time from repair to verified outcome (event time)",
            ["type"],
            buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 3600),
            registry=r,
        )
        self.repair_budget_used = Gauge(
            "repair_budget_used",
            "Automatic repairs counted against the fleet-wide budget in its current window",
            registry=r,
        )
        self.fleet_request_seconds = Histogram(
            "fleet_request_seconds",
            "Wait for a verdict of the fleet ledger (repair budget and storm window)",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.anomalies_detected = Counter(
            "anomalies_detected_total", "Anomaly events emitted", ["type"], registry=r
        )
        self.alerts_generated = Counter(
            "alerts_generated_total", "Anomaly events by severity", ["severity"], registry=r
        )
        self.validation_failures = Counter(
            "input_validation_failures_total", "Rejected input records", ["field"], registry=r
        )
        self.validation_success = Counter(
            "input_validation_success_total", "Accepted input records", registry=r
        )
        self.deadletters = Counter(
            "deadletter_messages_total",
            "Records sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.samples_processed = Counter(
            "samples_processed_total", "Records through the detectors", ["topic"], registry=r
        )
        self.breaker_state = Gauge(
            "circuit_breaker_state", "0 closed, 1 open, 2 half-open", ["source"], registry=r
        )
        self.breaker_failures = Counter(
            "circuit_breaker_failures_total",
            "Failures seen by a circuit breaker",
            ["source"],
            registry=r,
        )
        self.otlp_points = Gauge(
            "otlp_points",
            "OTLP cumulative points out of order (ignored) or resets, in owned partitions",
            ["reason"],
            registry=r,
        )
        self.collection_size = Gauge(
            "collection_size", "Entries in a bounded collection", ["name"], registry=r
        )
        self.collection_evictions = Counter(
            "collection_evictions_total",
            "LRU evictions from a bounded collection",
            ["name"],
            registry=r,
        )
        self.queue_size = Gauge(
            "queue_size", "Items waiting in an internal queue", ["name"], registry=r
        )
        self.queue_capacity = Gauge(
            "queue_capacity", "Capacity of an internal queue", ["name"], registry=r
        )
        self.iteration_duration = Histogram(
            "pipeline_iteration_duration_seconds",
            "Duration of one consume-process-produce loop",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.last_iteration = Gauge(
            "pipeline_last_iteration_timestamp",
            "Unix time of the last finished iteration",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "consumer_lag", "Messages behind the partition end", ["topic", "partition"], registry=r
        )
        self.overhead = Gauge(
            "self_healing_overhead_percent",
            "CPU share of the pipeline process (percent of one core)",
            registry=r,
        )
        self.process_rss = Gauge(
            "selfheal_resident_memory_bytes",
            "RSS checked against runtime.max_rss_bytes",
            registry=r,
        )
        self.escalations = Counter(
            "escalations_total", "Escalations to a human (Alertmanager)", ["resolved"], registry=r
        )
        self.watchdog_restarts = Counter(
            "pipeline_watchdog_timeouts_total", "Iterations cancelled by the watchdog", registry=r
        )
        self.state_snapshots = Counter(
            "state_snapshots_total", "Partition state snapshots written", registry=r
        )
        self.state_restores = Counter(
            "state_restores_total", "Partition state restores", ["outcome"], registry=r
        )
        self.restored_judges = Counter(
            "restored_judges_total",
            "Judges of restored partitions: kept (same settings), rebuilt (settings changed, "
            "learning restarts), added (newly configured), dropped (no longer configured)",
            ["outcome"],
            registry=r,
        )
        # learned repair effectiveness (selfheal.pipeline.core.effectiveness); services capped
        self.repair_success_ratio = Gauge(
            "repair_success_ratio",
            "Posterior mean success rate of a repair (Beta prior plus verified outcomes)",
            ["kind", "action", "service"],
            registry=r,
        )
        self.repair_recovery_seconds = Gauge(
            "repair_recovery_seconds",
            "Median time from a successful repair to the condition last seen (recent outcomes)",
            ["kind", "action", "service"],
            registry=r,
        )
        self.repairs_executed = Counter(
            "repairs_executed_total",
            "Decisions through the executor stage, by outcome (ok, failed, timeout, error, "
            "skipped, unknown, paused)",
            ["action", "outcome"],
            registry=r,
        )
        self.policy_paused = Gauge(
            "policy_paused", "1 while automatic repair is paused (selfheal pause)", registry=r
        )
        self.approvals = Counter(
            "approvals_total",
            "Votes on pending decisions (approved, rejected, expired, withdrawn)",
            ["verdict"],
            registry=r,
        )
        self.errors_swallowed = Counter(
            "errors_swallowed_total",
            "Exceptions handled by carrying on (each also logged)",
            ["where"],
            registry=r,
        )
        # labelled series exist from the start at 0: rate() and ratios then see the first
        # increment instead of a series appearing out of nowhere at its first value
        for a in RepairAction:
            self.repairs_attempted.labels(a.value)
            self.repairs_successful.labels(a.value)
            self.repair_duration.labels(a.value)
        for k in AnomalyKind:
            self.anomalies_detected.labels(k.value)
        for sev in Severity:
            self.alerts_generated.labels(sev.value)
        for reason in RejectReason:
            self.deadletters.labels(reason.value)
        for sup in Suppression:
            self.repairs_suppressed.labels(sup.value)
        self._fields: set[str] = set()
        self._evictions_seen: dict[str, int] = {}

    def reject_field(self, field: str) -> str:
        """Cap the label values of ``input_validation_failures_total{field}``."""
        # element prefixes like "[3]." or "metrics[12]." would make the label unbounded
        name = field.rsplit("].", 1)[-1] if "]." in field else field
        if name in self._fields:
            return name
        if len(self._fields) >= MAX_FIELD_LABELS:
            return "other"
        self._fields.add(name)
        return name

    def observe_otlp(self, counts: list[dict[str, int]]) -> None:
        """OTLP points ignored (``out_of_order``) or taken as counter resets (``reset``), summed
        over the partitions this process owns (their per-partition state keeps the totals)."""
        totals: dict[str, int] = {}
        for c in counts:
            for reason, n in c.items():
                totals[reason] = totals.get(reason, 0) + n
        for reason, n in totals.items():
            self.otlp_points.labels(reason).set(n)

    def observe_collection(self, name: str, size: int, evictions: int) -> None:
        self.collection_size.labels(name).set(size)
        seen = self._evictions_seen.get(name, 0)
        if evictions > seen:
            self.collection_evictions.labels(name).inc(evictions - seen)
        self._evictions_seen[name] = evictions
