"""OTLP protobuf front end: request bytes -> the plain tuples of ``otlp_metrics``/``otlp_logs``.

Parsing is the official ``opentelemetry-proto`` classes (upb, in C); this module only reads
fields. Paths in errors use the OTLP/JSON (camelCase) names, the same as the JSON front end.
"""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from selfheal.pipeline.core.otlp_logs import LogIn, LogResourceIn
from selfheal.pipeline.core.otlp_metrics import (
    EXP_HISTOGRAM,
    GAUGE,
    HISTOGRAM,
    SUM,
    SUMMARY,
    MetricIn,
    OtlpError,
    Point,
    ResourceIn,
)
from selfheal.pipeline.kernel.schemas import MAX_LABEL_VALUE
from selfheal.pipeline.kernel.types import RejectReason

_NO_RECORDED_VALUE = 1


def plain(v: Any) -> Any:
    """An ``AnyValue`` as plain Python (for structured bodies)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def text(v: Any) -> str:
    """An ``AnyValue`` as a label value."""
    s = v.string_value
    if s:
        return s  # the common case without a oneof lookup
    kind = v.WhichOneof("value")
    if kind is None or kind == "string_value":
        return ""
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(v, kind))
    return orjson.dumps(plain(v)).decode()[:MAX_LABEL_VALUE]


def attrs(kvs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in kvs:
        v = kv.value
        s = v.string_value
        # strings without a call (most attributes are); values capped like native labels
        out[kv.key] = (s if len(s) <= MAX_LABEL_VALUE else s[:MAX_LABEL_VALUE]) if s else text(v)
    return out


def _number(p: Any) -> Point:
    if p.flags & _NO_RECORDED_VALUE:
        return None
    kind = p.WhichOneof("value")
    value = p.as_double if kind == "as_double" else (float(p.as_int) if kind else None)
    return (p.time_unix_nano, p.start_time_unix_nano, attrs(p.attributes), value)


def _histogram(p: Any) -> Point:
    if p.flags & _NO_RECORDED_VALUE:
        return None
    return (
        p.time_unix_nano,
        p.start_time_unix_nano,
        attrs(p.attributes),
        p.count,
        p.sum if p.HasField("sum") else None,
        tuple(p.explicit_bounds),
        tuple(p.bucket_counts),
        None,
        None,
    )


def _exponential(p: Any) -> Point:
    if p.flags & _NO_RECORDED_VALUE:
        return None
    return (
        p.time_unix_nano,
        p.start_time_unix_nano,
        attrs(p.attributes),
        p.count,
        p.sum if p.HasField("sum") else None,
        p.scale,
        p.zero_count,
        p.positive.offset,
        tuple(p.positive.bucket_counts),
        p.negative.offset,
        tuple(p.negative.bucket_counts),
        None,
        None,
    )


def _summary(p: Any) -> Point:
    if p.flags & _NO_RECORDED_VALUE:
        return None
    quantiles = tuple((q.quantile, q.value) for q in p.quantile_values)
    return (
        p.time_unix_nano,
        p.start_time_unix_nano,
        attrs(p.attributes),
        p.count,
        p.sum,
        quantiles,
    )


def _metric(m: Any, mpath: str) -> MetricIn:
    name = m.name
    if not name:
        raise OtlpError(f"{mpath}.name", "empty metric name")
    kind = m.WhichOneof("data")
    if kind == "gauge":
        return (mpath, name, GAUGE, 0, False, [_number(p) for p in m.gauge.data_points])
    if kind == "sum":
        s = m.sum
        points = [_number(p) for p in s.data_points]
        return (mpath, m.name, SUM, s.aggregation_temporality, s.is_monotonic, points)
    if kind == "histogram":
        h = m.histogram
        points = [_histogram(p) for p in h.data_points]
        return (mpath, m.name, HISTOGRAM, h.aggregation_temporality, False, points)
    if kind == "exponential_histogram":
        e = m.exponential_histogram
        points = [_exponential(p) for p in e.data_points]
        return (mpath, m.name, EXP_HISTOGRAM, e.aggregation_temporality, False, points)
    if kind == "summary":
        return (mpath, m.name, SUMMARY, 0, False, [_summary(p) for p in m.summary.data_points])
    raise OtlpError(mpath, "no data: needs gauge, sum, histogram, exponentialHistogram or summary")


def metrics_request(raw: bytes) -> list[ResourceIn]:
    try:
        req = ExportMetricsServiceRequest.FromString(raw)
    except DecodeError as exc:
        raise OtlpError(
            "message",
            f"not an OTLP ExportMetricsServiceRequest: {exc}",
            RejectReason.UNKNOWN_FORMAT,
        ) from None
    out: list[ResourceIn] = []
    for i, rm in enumerate(req.resource_metrics):
        rpath = f"resourceMetrics[{i}]"
        metrics = [
            _metric(m, f"{rpath}.scopeMetrics[{j}].metrics[{k}]")
            for j, sm in enumerate(rm.scope_metrics)
            for k, m in enumerate(sm.metrics)
        ]
        out.append((rpath, attrs(rm.resource.attributes), metrics))
    if not out:
        raise OtlpError("resourceMetrics", "empty request", RejectReason.UNKNOWN_FORMAT)
    return out


def _body(v: Any) -> str:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    return body_text(plain(v))


def body_text(body: Any) -> str:
    """A structured body as one message: its ``message``/``msg`` member, else compact JSON."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        for key in ("message", "msg", "log"):
            val = body.get(key)
            if isinstance(val, str):
                return val
    if body is None:
        return ""
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS).decode()


def logs_request(raw: bytes) -> list[LogResourceIn]:
    try:
        req = ExportLogsServiceRequest.FromString(raw)
    except DecodeError as exc:
        raise OtlpError(
            "message", f"not an OTLP ExportLogsServiceRequest: {exc}", RejectReason.UNKNOWN_FORMAT
        ) from None
    out: list[LogResourceIn] = []
    for i, rl in enumerate(req.resource_logs):
        rpath = f"resourceLogs[{i}]"
        records: list[LogIn] = []
        for j, sl in enumerate(rl.scope_logs):
            for k, r in enumerate(sl.log_records):
                records.append(
                    (
                        f"{rpath}.scopeLogs[{j}].logRecords[{k}]",
                        r.time_unix_nano,
                        r.observed_time_unix_nano,
                        r.severity_number,
                        r.severity_text,
                        _body(r.body),
                        attrs(r.attributes),
                    )
                )
        out.append((rpath, attrs(rl.resource.attributes), records))
    if not out:
        raise OtlpError("resourceLogs", "empty request", RejectReason.UNKNOWN_FORMAT)
    return out
