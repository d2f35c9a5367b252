"""OpenTelemetry (OTLP) input: what the decoder calls for OTLP metrics and logs.

Both encodings the Collector's Kafka exporter writes are taken, told apart per message:
``otlp_proto`` (a protobuf ``Export*ServiceRequest``, whose first byte is field 1's tag,
``0x0a``) and ``otlp_json`` (a JSON object with ``resourceMetrics``/``resourceLogs``). One
request -> many samples or log lines in one pass; a malformed request raises ``OtlpError``
naming the field path, and the decoder dead-letters it whole.

>>> from selfheal.pipeline.core.otlp_config import OtlpConfig
>>> otlp = Otlp(OtlpConfig())
>>> req = {"resourceMetrics": [{"resource": {"attributes": [
...     {"key": "host.name", "value": {"stringValue": "web-1"}}]},
...     "scopeMetrics": [{"metrics": [{"name": "process.memory.usage", "sum": {
...         "aggregationTemporality": 2, "dataPoints": [
...             {"timeUnixNano": "1795842000000000000", "asInt": "1048576"}]}}]}]}]}
>>> [(s.entity, s.metric, s.value) for s in otlp.metrics_json(req, otlp.fallback)]
[('web-1', 'process_memory_bytes', 1048576.0)]
"""

from __future__ import annotations

from typing import Any

from selfheal.pipeline.core import otlp_json, otlp_proto
from selfheal.pipeline.core.otlp_config import OtlpConfig
from selfheal.pipeline.core.otlp_logs import convert_logs
from selfheal.pipeline.core.otlp_metrics import MetricsConverter, OtlpError, OtlpState
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import LogLine, Sample

__all__ = ["PROTO_FIRST_BYTE", "Otlp", "OtlpError", "OtlpState", "ensure_state"]

#: field 1 (resourceMetrics / resourceLogs), wire type 2: how every non-empty request begins
PROTO_FIRST_BYTE = b"\n"


class _Holder:
    """State for decoding outside a partition stage (``Decoder`` used on its own)."""

    def __init__(self, max_series: int) -> None:
        self.otlp_series: LRU[tuple[Any, ...], tuple[Any, ...]] = LRU("otlp_series", max_series)
        self.otlp_counts: dict[str, int] = {}


def ensure_state(holder: Any, max_series: int) -> OtlpState:
    """The holder's OTLP state, created when missing (a stage restored from an older snapshot)."""
    if getattr(holder, "otlp_series", None) is None:
        holder.otlp_series = LRU("otlp_series", max_series)
    if getattr(holder, "otlp_counts", None) is None:
        holder.otlp_counts = {}
    return holder


class Otlp:
    """The OTLP converters of one deployment (stateless: series state comes from the caller)."""

    def __init__(
        self,
        config: OtlpConfig,
        *,
        requests_metric: str = "requests_total",
        errors_metric: str = "errors_total",
        max_series: int = 100_000,
    ) -> None:
        self.config = config
        self.max_series = max_series
        self.converter = MetricsConverter(config, requests_metric, errors_metric)
        self.fallback: OtlpState = _Holder(max_series)

    def metrics_proto(self, raw: bytes, state: OtlpState) -> list[Sample]:
        return self.converter.convert(otlp_proto.metrics_request(raw), state)

    def metrics_json(self, obj: dict[str, Any], state: OtlpState) -> list[Sample]:
        return self.converter.convert(otlp_json.metrics_request(obj), state)

    def logs_proto(self, raw: bytes) -> list[LogLine]:
        return convert_logs(otlp_proto.logs_request(raw), self.config)

    def logs_json(self, obj: dict[str, Any]) -> list[LogLine]:
        return convert_logs(otlp_json.logs_request(obj), self.config)
