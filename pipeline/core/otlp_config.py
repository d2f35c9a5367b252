"""Configuration of the OpenTelemetry input: entity attributes and the metric-name table.

The table maps OpenTelemetry semantic-convention metric names to the names our detectors route
on (``selfheal.models.registry``); ``docs/conventions.md`` shows the defaults. A metric not in
the table keeps its OpenTelemetry name.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class MetricMap(BaseModel):
    """How one OpenTelemetry metric becomes samples."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: the metric name of the samples (what the detectors route on)
    target: str = Field(min_length=1, max_length=200)
    #: histograms: also count requests and errors per entity (``requests_total``/``errors_total``)
    error_rate: bool = False
    #: another metric of the same resource whose latest value is this one's ``limit``
    limit_metric: str | None = None
    #: a fixed ``limit`` (e.g. 1.0 for a utilization ratio)
    limit: float | None = Field(default=None, gt=0)
    #: split metrics (``system.filesystem.usage``): the attribute naming the state ...
    state_attribute: str | None = None
    #: ... and the states counted as used; without a fixed limit, the limit is the sum of all
    used_states: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _states(self) -> MetricMap:
        if self.state_attribute and not self.used_states:
            raise ValueError("state_attribute needs used_states")
        return self


DEFAULT_METRIC_MAP: dict[str, MetricMap] = {
    "http.server.request.duration": MetricMap(
        target="http.server.request.duration", error_rate=True
    ),
    "rpc.server.duration": MetricMap(target="rpc.server.duration", error_rate=True),
    "db.client.operation.duration": MetricMap(target="db.client.operation.duration"),
    "process.memory.usage": MetricMap(target="process_memory_bytes"),
    "container.memory.working_set": MetricMap(
        target="container_memory_working_set_bytes", limit_metric="k8s.container.memory_limit"
    ),
    "k8s.container.memory.working_set": MetricMap(
        target="container_memory_working_set_bytes", limit_metric="k8s.container.memory_limit"
    ),
    "jvm.memory.used": MetricMap(target="jvm_memory_used_bytes", limit_metric="jvm.memory.limit"),
    "system.filesystem.usage": MetricMap(
        target="filesystem_usage_bytes",
        state_attribute="system.filesystem.state",
        used_states=("used",),
    ),
    "system.filesystem.utilization": MetricMap(
        target="filesystem_utilization",
        limit=1.0,
        state_attribute="system.filesystem.state",
        used_states=("used",),
    ),
}


class OtlpConfig(BaseModel):
    """``otlp:`` section: OpenTelemetry (OTLP) metrics and logs on the input topics."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: resource attributes naming the entity, first present wins
    entity_attributes: tuple[str, ...] = Field(
        default=("service.instance.id", "k8s.pod.name", "host.name", "service.name"),
        min_length=1,
    )
    #: resource attributes kept as labels on every sample and log line
    label_attributes: tuple[str, ...] = (
        "service.name",
        "service.namespace",
        "k8s.namespace.name",
        "k8s.deployment.name",
        "k8s.container.name",
    )
    #: OpenTelemetry metric name -> how it becomes samples (replaces the default table)
    metrics: dict[str, MetricMap] = Field(default_factory=lambda: dict(DEFAULT_METRIC_MAP))
    #: quantiles computed from histograms, per interval (``<name>:p50`` ...)
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    #: a status code at or above this counts as an error (``http.response.status_code``)
    error_status_from: int = Field(default=500, ge=100, le=599)

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < q < 1.0 for q in value):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        return value
