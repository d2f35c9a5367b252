"""OTLP/JSON front end: a parsed (orjson) request -> the tuples of ``otlp_metrics``/``otlp_logs``.

The OTLP/JSON rules as the Collector writes them: lowerCamelCase keys, 64-bit integers as
decimal strings (numbers accepted too), enums as integers (their names accepted too), bytes
as hex (trace and span ids, which selfheal does not read), unknown fields ignored. Reading
the parsed dicts directly costs about a third of ``google.protobuf.json_format.ParseDict``
per point (``benchmarks/otlp_decode.py``), and paths in errors come for free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber
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
from selfheal.pipeline.core.otlp_proto import body_text
from selfheal.pipeline.kernel.schemas import MAX_LABEL_VALUE

_T = TypeVar("_T")

_TEMPORALITY = {
    "AGGREGATION_TEMPORALITY_UNSPECIFIED": 0,
    "AGGREGATION_TEMPORALITY_DELTA": 1,
    "AGGREGATION_TEMPORALITY_CUMULATIVE": 2,
}
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _int(v: Any, path: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    raise OtlpError(path, "must be an integer (a JSON number or a decimal string)")


def _float(v: Any, path: str) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        special = _SPECIAL.get(v)
        if special is not None:
            return special
        try:
            return float(v)
        except ValueError:
            pass
    raise OtlpError(path, "must be a number")


def _list(obj: dict[str, Any], key: str, path: str) -> list[Any]:
    v = obj.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise OtlpError(f"{path}.{key}" if path else key, "must be an array")
    return v


def _obj(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise OtlpError(path, "must be an object")
    return v


def plain(v: Any, path: str) -> Any:
    """An OTLP/JSON ``AnyValue`` as plain Python."""
    v = _obj(v, path)
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return _int(v["intValue"], f"{path}.intValue")
    if "doubleValue" in v:
        return _float(v["doubleValue"], f"{path}.doubleValue")
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        values = _list(_obj(v["arrayValue"], f"{path}.arrayValue"), "values", f"{path}.arrayValue")
        return [plain(x, f"{path}.arrayValue.values[{i}]") for i, x in enumerate(values)]
    if "kvlistValue" in v:
        kv = _obj(v["kvlistValue"], f"{path}.kvlistValue")
        return attrs_plain(_list(kv, "values", f"{path}.kvlistValue"), f"{path}.kvlistValue.values")
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def attrs_plain(kvs: list[Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, kv in enumerate(kvs):
        kv = _obj(kv, f"{path}[{i}]")
        key = kv.get("key")
        if not isinstance(key, str):
            raise OtlpError(f"{path}[{i}].key", "must be a string")
        out[key] = plain(kv.get("value", {}), f"{path}[{i}].value")
    return out


def attrs(kvs: list[Any], path: str) -> dict[str, str]:
    if not kvs:
        return {}
    out: dict[str, str] = {}
    for key, val in attrs_plain(kvs, path).items():
        if isinstance(val, str):
            out[key] = val[:MAX_LABEL_VALUE]  # capped like native label values
        elif isinstance(val, bool):
            out[key] = "true" if val else "false"
        elif val is None:
            out[key] = ""
        elif isinstance(val, int | float):
            out[key] = str(val)
        else:
            out[key] = body_text(val)[:MAX_LABEL_VALUE]
    return out


def _common(p: dict[str, Any], path: str) -> tuple[int, int, dict[str, str]]:
    return (
        _int(p.get("timeUnixNano", 0), f"{path}.timeUnixNano"),
        _int(p.get("startTimeUnixNano", 0), f"{path}.startTimeUnixNano"),
        attrs(_list(p, "attributes", path), f"{path}.attributes"),
    )


def _flagged(p: dict[str, Any], path: str) -> bool:
    return bool(_int(p.get("flags", 0), f"{path}.flags") & 1)


def _number(p: Any, path: str) -> Point:
    p = _obj(p, path)
    if _flagged(p, path):
        return None
    if "asDouble" in p:
        value: float | None = _float(p["asDouble"], f"{path}.asDouble")
    elif "asInt" in p:
        value = float(_int(p["asInt"], f"{path}.asInt"))
    else:
        value = None
    return (*_common(p, path), value)


def _opt_float(p: dict[str, Any], key: str, path: str) -> float | None:
    return _float(p[key], f"{path}.{key}") if key in p else None


def _histogram(p: Any, path: str) -> Point:
    p = _obj(p, path)
    if _flagged(p, path):
        return None
    bounds = _list(p, "explicitBounds", path)
    counts = _list(p, "bucketCounts", path)
    return (
        *_common(p, path),
        _int(p.get("count", 0), f"{path}.count"),
        _opt_float(p, "sum", path),
        tuple(_float(b, f"{path}.explicitBounds[{i}]") for i, b in enumerate(bounds)),
        tuple(_int(c, f"{path}.bucketCounts[{i}]") for i, c in enumerate(counts)),
        None,
        None,
    )


def _buckets(p: dict[str, Any], key: str, path: str) -> tuple[int, tuple[int, ...]]:
    b = _obj(p.get(key, {}), f"{path}.{key}")
    counts = _list(b, "bucketCounts", f"{path}.{key}")
    return (
        _int(b.get("offset", 0), f"{path}.{key}.offset"),
        tuple(_int(c, f"{path}.{key}.bucketCounts[{i}]") for i, c in enumerate(counts)),
    )


def _exponential(p: Any, path: str) -> Point:
    p = _obj(p, path)
    if _flagged(p, path):
        return None
    return (
        *_common(p, path),
        _int(p.get("count", 0), f"{path}.count"),
        _opt_float(p, "sum", path),
        _int(p.get("scale", 0), f"{path}.scale"),
        _int(p.get("zeroCount", 0), f"{path}.zeroCount"),
        *_buckets(p, "positive", path),
        *_buckets(p, "negative", path),
        None,
        None,
    )


def _summary(p: Any, path: str) -> Point:
    p = _obj(p, path)
    if _flagged(p, path):
        return None
    qs = []
    for i, q in enumerate(_list(p, "quantileValues", path)):
        qpath = f"{path}.quantileValues[{i}]"
        q = _obj(q, qpath)
        qs.append(
            (_float(q.get("quantile", 0), f"{qpath}.quantile"), _float(q.get("value", 0), qpath))
        )
    return (
        *_common(p, path),
        _int(p.get("count", 0), f"{path}.count"),
        _float(p.get("sum", 0), f"{path}.sum"),
        tuple(qs),
    )


_KINDS = (
    ("gauge", GAUGE, _number),
    ("sum", SUM, _number),
    ("histogram", HISTOGRAM, _histogram),
    ("exponentialHistogram", EXP_HISTOGRAM, _exponential),
    ("summary", SUMMARY, _summary),
)


def _temporality(data: dict[str, Any], path: str) -> int:
    v = data.get("aggregationTemporality", 0)
    if isinstance(v, str) and v in _TEMPORALITY:
        return _TEMPORALITY[v]
    return _int(v, f"{path}.aggregationTemporality")


def _metric(m: Any, mpath: str) -> MetricIn:
    m = _obj(m, mpath)
    name = m.get("name")
    if not isinstance(name, str) or not name:
        raise OtlpError(f"{mpath}.name", "missing or empty metric name")
    for key, kind, point in _KINDS:
        data = m.get(key)
        if data is None:
            continue
        dpath = f"{mpath}.{key}"
        data = _obj(data, dpath)
        points = [
            point(p, f"{dpath}.dataPoints[{i}]")
            for i, p in enumerate(_list(data, "dataPoints", dpath))
        ]
        temporality = _temporality(data, dpath) if kind != GAUGE and kind != SUMMARY else 0
        return (mpath, name, kind, temporality, bool(data.get("isMonotonic", False)), points)
    raise OtlpError(mpath, "no data: needs gauge, sum, histogram, exponentialHistogram or summary")


def _resource_attrs(r: dict[str, Any], rpath: str) -> dict[str, str]:
    res = _obj(r.get("resource", {}), f"{rpath}.resource")
    return attrs(_list(res, "attributes", f"{rpath}.resource"), f"{rpath}.resource.attributes")


def _resources(
    obj: dict[str, Any], kind: str, scope: str, items: str, parse: Callable[[Any, str], _T]
) -> list[tuple[str, dict[str, str], Sequence[_T]]]:
    """``kind[i].scope[j].items[k]`` parsed, per resource with its attributes and path."""
    out: list[tuple[str, dict[str, str], Sequence[_T]]] = []
    for i, r in enumerate(_list(obj, kind, "")):
        rpath = f"{kind}[{i}]"
        r = _obj(r, rpath)
        parsed: list[_T] = []
        for j, sc in enumerate(_list(r, scope, rpath)):
            spath = f"{rpath}.{scope}[{j}]"
            for k, x in enumerate(_list(_obj(sc, spath), items, spath)):
                parsed.append(parse(x, f"{spath}.{items}[{k}]"))
        out.append((rpath, _resource_attrs(r, rpath), parsed))
    if not out:
        raise OtlpError(kind, "empty request")
    return out


def metrics_request(obj: dict[str, Any]) -> list[ResourceIn]:
    return _resources(obj, "resourceMetrics", "scopeMetrics", "metrics", _metric)


def _severity(v: Any, path: str) -> int:
    if isinstance(v, str) and v.startswith("SEVERITY_NUMBER_"):
        try:
            return int(SeverityNumber.Value(v))
        except ValueError:
            raise OtlpError(path, f"unknown severity {v[:64]!r}") from None
    return _int(v, path)


def _record(r: Any, path: str) -> LogIn:
    r = _obj(r, path)
    text = r.get("severityText", "")
    if not isinstance(text, str):
        raise OtlpError(f"{path}.severityText", "must be a string")
    body = plain(r["body"], f"{path}.body") if "body" in r else None
    return (
        path,
        _int(r.get("timeUnixNano", 0), f"{path}.timeUnixNano"),
        _int(r.get("observedTimeUnixNano", 0), f"{path}.observedTimeUnixNano"),
        _severity(r.get("severityNumber", 0), f"{path}.severityNumber"),
        text,
        body_text(body),
        attrs(_list(r, "attributes", path), f"{path}.attributes"),
    )


def logs_request(obj: dict[str, Any]) -> list[LogResourceIn]:
    return _resources(obj, "resourceLogs", "scopeLogs", "logRecords", _record)
