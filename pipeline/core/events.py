"""Outbound records: CloudEvents 1.0 (structured JSON) with deterministic ids.

Ids are UUIDv5 over the content that defines an event (kind, detector, entity, metric, labels,
event time), never over offsets or wall-clock time: the same input yields the same ids whether
it comes from Kafka or a file, before or after a crash, so consumers can drop the duplicates of
at-least-once delivery. Encoding uses orjson; the event bodies are built in
``selfheal.pipeline.kernel.cloudevents``.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from selfheal.pipeline.kernel.cloudevents import anomaly_event, repair_event
from selfheal.pipeline.kernel.types import Anomaly, Finding

__all__ = ["anomaly_event", "anomaly_id", "dumps", "repair_event"]

_NS = uuid.UUID("6f1c3f2e-5b7a-4e0c-9d35-2f6c1b8a7e41")


def anomaly_id(f: Finding) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(f.labels.items())) if f.labels else ""
    key = f"anomaly|{f.kind.value}|{f.detector}|{f.entity}|{f.metric}|{labels}|{f.ts:.3f}"
    return str(uuid.uuid5(_NS, key))


def to_anomaly(f: Finding) -> Anomaly:
    return Anomaly(anomaly_id(f), f)


def _jsonable(value: Any) -> Any:
    # orjson serialises dataclasses, enums and mappings natively; only odd types land here
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_jsonable, option=orjson.OPT_NON_STR_KEYS)
