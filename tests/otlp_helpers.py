"""Build OTLP requests with the official protos (``opentelemetry-proto``), in both encodings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

DELTA = m.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = m.AGGREGATION_TEMPORALITY_CUMULATIVE
NS = 1_000_000_000


def any_value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(kvs(v))
        return out
    return AnyValue(string_value=str(v))


def kvs(attrs: dict[str, Any] | None) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in (attrs or {}).items()]


def ns(ts: float) -> int:
    return round(ts * NS)


def gauge(name: str, points: Iterable[tuple[float, float, dict[str, Any] | None]]) -> m.Metric:
    met = m.Metric(name=name)
    for ts, value, attrs in points:
        met.gauge.data_points.add(time_unix_nano=ns(ts), as_double=value, attributes=kvs(attrs))
    return met


def sum_metric(
    name: str,
    points: Iterable[tuple[float, float, float, dict[str, Any] | None]],
    *,
    temporality: int = CUMULATIVE,
    monotonic: bool = True,
) -> m.Metric:
    """points: (start, ts, value, attrs)."""
    met = m.Metric(name=name)
    met.sum.aggregation_temporality = temporality
    met.sum.is_monotonic = monotonic
    for start, ts, value, attrs in points:
        met.sum.data_points.add(
            start_time_unix_nano=ns(start),
            time_unix_nano=ns(ts),
            as_int=int(value),
            attributes=kvs(attrs),
        )
    return met


def histogram(
    name: str,
    points: Iterable[tuple[float, float, Sequence[float], Sequence[int], float, dict[str, Any]]],
    *,
    temporality: int = CUMULATIVE,
) -> m.Metric:
    """points: (start, ts, bounds, counts, sum, attrs)."""
    met = m.Metric(name=name)
    met.histogram.aggregation_temporality = temporality
    for start, ts, bounds, counts, total, attrs in points:
        met.histogram.data_points.add(
            start_time_unix_nano=ns(start),
            time_unix_nano=ns(ts),
            count=sum(counts),
            sum=total,
            explicit_bounds=list(bounds),
            bucket_counts=list(counts),
            attributes=kvs(attrs),
        )
    return met


def exp_histogram(
    name: str,
    points: Iterable[tuple[float, float, int, int, Sequence[int], float, dict[str, Any]]],
    *,
    temporality: int = DELTA,
) -> m.Metric:
    """points: (start, ts, scale, offset, positive counts, sum, attrs)."""
    met = m.Metric(name=name)
    met.exponential_histogram.aggregation_temporality = temporality
    for start, ts, scale, offset, counts, total, attrs in points:
        p = met.exponential_histogram.data_points.add(
            start_time_unix_nano=ns(start),
            time_unix_nano=ns(ts),
            count=sum(counts),
            sum=total,
            scale=scale,
            attributes=kvs(attrs),
        )
        p.positive.offset = offset
        p.positive.bucket_counts.extend(counts)
    return met


def summary(
    name: str,
    points: Iterable[tuple[float, float, int, float, dict[float, float], dict[str, Any]]],
) -> m.Metric:
    """points: (start, ts, count, sum, {quantile: value}, attrs)."""
    met = m.Metric(name=name)
    for start, ts, count, total, qs, attrs in points:
        p = met.summary.data_points.add(
            start_time_unix_nano=ns(start),
            time_unix_nano=ns(ts),
            count=count,
            sum=total,
            attributes=kvs(attrs),
        )
        for q, v in qs.items():
            p.quantile_values.add(quantile=q, value=v)
    return met


def metrics_request(
    resources: Iterable[tuple[dict[str, Any], Sequence[m.Metric]]],
) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for attrs, metrics in resources:
        rm = req.resource_metrics.add()
        rm.resource.attributes.extend(kvs(attrs))
        rm.scope_metrics.add().metrics.extend(metrics)
    return req


def log_record(
    ts: float, body: Any, *, severity: int = 0, text: str = "", attrs: dict[str, Any] | None = None
) -> logs_pb2.LogRecord:
    return logs_pb2.LogRecord(
        time_unix_nano=ns(ts),
        severity_number=severity,  # type: ignore[arg-type]
        severity_text=text,
        body=any_value(body),
        attributes=kvs(attrs),
    )


def logs_request(
    resources: Iterable[tuple[dict[str, Any], Sequence[logs_pb2.LogRecord]]],
) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for attrs, records in resources:
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(kvs(attrs))
        rl.scope_logs.add().log_records.extend(records)
    return req


def encode(req: Any, encoding: str) -> bytes:
    """``otlp_proto`` or ``otlp_json`` (the Collector's JSON: enums as integers)."""
    if encoding == "otlp_proto":
        return bytes(req.SerializeToString())
    return json_format.MessageToJson(req, use_integers_for_enums=True, indent=None).encode()
