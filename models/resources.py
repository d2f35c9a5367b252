"""Resources with a limit: which metrics measure them and where their limit comes from.

One table, read by the static rules (``memory_high``), the router and the time-to-limit
forecast (``selfheal.models.forecast``). A usage sample gets its limit from its ``limit``
field or, failing that, from the latest sample of the paired limit metric of the same entity
and labels (``limit_metrics``; e.g. Prometheus' ``process_open_fds`` / ``process_max_fds``,
OpenTelemetry's ``db.client.connection.count`` / ``db.client.connection.max``). Some
OpenTelemetry usage metrics split one quantity by a label (``state`` = used / idle / free):
``usage_labels`` names the values that count as usage; that label is not part of the pairing.

>>> RESOURCES["file_descriptors"].limit_metric("process_open_fds")
'process_max_fds'
>>> resource_of("db.client.connection.count").name
'connection_pool'
>>> resource_of("db.client.connection.count").counts({"state": "idle", "pool.name": "main"})
False
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from selfheal.pipeline.kernel.types import AnomalyKind


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource that runs out: its usage metrics, paired limit metrics and anomaly kind."""

    name: str
    kind: AnomalyKind
    #: usage metric -> the metric carrying its limit ("" when only the ``limit`` field can)
    metrics: Mapping[str, str]
    unit: str
    #: label -> values that count as usage (samples with another value are ignored)
    usage_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def limit_metric(self, metric: str) -> str:
        return self.metrics.get(metric, "")

    def counts(self, labels: Mapping[str, str]) -> bool:
        """Whether a sample with these labels measures usage (not idle/free capacity)."""
        return all(labels.get(k, vals[0]) in vals for k, vals in self.usage_labels.items())

    def pairing(self, labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The labels a usage series and its limit series share."""
        return tuple(sorted((k, v) for k, v in labels.items() if k not in self.usage_labels))


_STATE_USED = {"state": ("used",)}

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource(
            "memory",
            AnomalyKind.MEMORY_LEAK,
            # memory series are judged one by one (limit from the ``limit`` field)
            dict.fromkeys(
                (
                    "container_memory_working_set_bytes",
                    "process_resident_memory_bytes",
                    "jvm_memory_used_bytes",
                    "process_memory_bytes",
                    "process.memory.usage",
                    "jvm.memory.used",
                ),
                "",
            ),
            "bytes",
        ),
        Resource(
            "disk",
            AnomalyKind.RESOURCE_EXHAUSTION,
            {
                "system.filesystem.usage": "",
                # what the OTLP decoder makes of system.filesystem.usage (limit = all states)
                "filesystem_usage_bytes": "",
                "container_fs_usage_bytes": "container_fs_limit_bytes",
                "kubelet_volume_stats_used_bytes": "kubelet_volume_stats_capacity_bytes",
                "disk_used_bytes": "disk_total_bytes",
            },
            "bytes",
            _STATE_USED,
        ),
        Resource(
            "file_descriptors",
            AnomalyKind.RESOURCE_EXHAUSTION,
            {
                "process_open_fds": "process_max_fds",
                "process.open_file_descriptor.count": "",
            },
            "descriptors",
        ),
        Resource(
            "connection_pool",
            AnomalyKind.RESOURCE_EXHAUSTION,
            {
                "db.client.connection.count": "db.client.connection.max",
                "db.client.connections.usage": "db.client.connections.max",
                "hikaricp_connections_active": "hikaricp_connections_max",
                "pool_connections_in_use": "pool_connections_max",
            },
            "connections",
            _STATE_USED,
        ),
        Resource(
            "thread_pool",
            AnomalyKind.RESOURCE_EXHAUSTION,
            {
                "jvm.thread.count": "",
                "executor_pool_size_threads": "executor_pool_max_threads",
                "thread_pool_active_threads": "thread_pool_max_threads",
            },
            "threads",
        ),
        Resource(
            "queue",
            AnomalyKind.RESOURCE_EXHAUSTION,
            {"queue_depth": "queue_capacity"},
            "items",
        ),
    )
}

#: the memory metrics: the ``memory_high`` rule and the memory-leak forecast
MEMORY_METRICS: tuple[str, ...] = tuple(RESOURCES["memory"].metrics)

_BY_METRIC = {m: r for r in RESOURCES.values() for m in r.metrics}
_BY_LIMIT = {lim: r for r in RESOURCES.values() for lim in r.metrics.values() if lim}


def resource_of(metric: str) -> Resource | None:
    """The resource a usage metric measures."""
    return _BY_METRIC.get(metric)


def resource_of_limit(metric: str) -> Resource | None:
    """The resource whose limit a metric carries."""
    return _BY_LIMIT.get(metric)
