"""Log shippers' default JSON on the logs topic: Fluent Bit's and Vector's Kafka outputs.

Fluent Bit (``format json``): ``{"@timestamp": 1795842000.123, "log": "...", "stream": ...,
"kubernetes": {"pod_name", "namespace_name", "container_name", "host", ...}}`` (the timestamp
key and format follow ``timestamp_key``/``timestamp_format``). Vector (``encoding.codec:
json``): ``{"timestamp": "2026-...Z", "message": "...", "kubernetes": {"pod_name",
"pod_namespace", "container_name", "pod_node_name", ...}, "host": ...}``.

The entity is the pod, else the host; namespace and container are kept as labels (with the
OpenTelemetry names, so OTLP and shipper logs of one pod group together). The level comes from
a ``level``/``severity`` field, else from a level word near the start of the line, else INFO.

>>> line = shipper_line({"@timestamp": 1795842000.5, "log": "ERROR db timeout",
...     "kubernetes": {"pod_name": "web-1", "namespace_name": "shop"}})
>>> line.entity, line.level.name, line.labels
('web-1', 'ERROR', {'k8s.namespace.name': 'shop'})
"""

from __future__ import annotations

import re
from typing import Any

from selfheal.pipeline.core.otlp_logs import level_of
from selfheal.pipeline.core.otlp_metrics import OtlpError
from selfheal.pipeline.kernel.schemas import MAX_MESSAGE_CHARS, parse_ts
from selfheal.pipeline.kernel.types import LogLevel, LogLine, RejectReason

MESSAGE_KEYS = ("log", "message")
TIMESTAMP_KEYS = ("@timestamp", "timestamp", "time", "date")
LEVEL_KEYS = ("level", "severity", "log.level", "levelname", "lvl")
SOURCE_KEYS = ("client.address", "source.address", "remote_addr", "client_ip", "source_ip")
_LEVEL_WORD = re.compile(
    r"\b(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRIT|CRITICAL|FATAL|ALERT|EMERG)\b"
    r"|\blevel=\"?([A-Za-z]+)",
)


def is_shipper_record(obj: dict[str, Any]) -> bool:
    """A shipper's record, not a native LogRecord (which names its ``entity``)."""
    return "entity" not in obj and any(k in obj for k in MESSAGE_KEYS)


def _first(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any]:
    for key in keys:
        if obj.get(key) is not None:
            return key, obj[key]
    return "", None


def _level(obj: dict[str, Any], message: str) -> LogLevel:
    _key, val = _first(obj, LEVEL_KEYS)
    if isinstance(val, str) and val:
        return level_of(0, val)
    m = _LEVEL_WORD.search(message[:120])
    if m is not None:
        return level_of(0, m.group(1) or m.group(2))
    return LogLevel.INFO


def shipper_line(obj: dict[str, Any], prefix: str = "") -> LogLine:
    """One Fluent Bit / Vector record as a log line; ``OtlpError`` names the bad field."""
    mkey, message = _first(obj, MESSAGE_KEYS)
    if not isinstance(message, str):
        raise OtlpError(f"{prefix}{mkey or 'log'}", "must be a string")
    tkey, raw_ts = _first(obj, TIMESTAMP_KEYS)
    if raw_ts is None:
        raise OtlpError(f"{prefix}@timestamp", f"no timestamp (one of {list(TIMESTAMP_KEYS)})")
    try:
        ts = parse_ts(raw_ts)
    except ValueError as exc:
        raise OtlpError(f"{prefix}{tkey}", str(exc)) from None
    k8s = obj.get("kubernetes")
    k8s = k8s if isinstance(k8s, dict) else {}
    labels: dict[str, str] = {}
    namespace = k8s.get("namespace_name") or k8s.get("pod_namespace")
    if isinstance(namespace, str) and namespace:
        labels["k8s.namespace.name"] = namespace[:256]
    container = k8s.get("container_name")
    if isinstance(container, str) and container:
        labels["k8s.container.name"] = container[:256]
    entity = k8s.get("pod_name")
    if not isinstance(entity, str) or not entity:
        _hkey, entity = _first(obj, ("host", "hostname"))
    if not isinstance(entity, str) or not entity:
        entity = k8s.get("host") or k8s.get("pod_node_name")
    if not isinstance(entity, str) or not entity:
        raise OtlpError(
            f"{prefix}kubernetes.pod_name",
            "no entity: neither kubernetes.pod_name nor host",
            RejectReason.NO_ENTITY,
        )
    _skey, source = _first(obj, SOURCE_KEYS)
    if isinstance(source, str) and source:
        labels["source_ip"] = source[:256]
    return LogLine(ts, entity[:256], _level(obj, message), message[:MAX_MESSAGE_CHARS], labels)
