"""Decoding at the edge: raw bytes -> validated ``Sample``/``LogLine`` or a ``Reject``.

Errors travel as data (bytewax's oks/errs): ``decode`` never raises on any input, and every
reject names the field that failed so the dead-letter record tells the producer what to fix.
Formats accepted on the metrics topic: native MetricSample, Telegraf JSON (single metric or
``{"metrics": [...]}`` batches), prometheus-kafka-adapter JSON, a JSON array of any of them, and
OTLP requests (protobuf or JSON, ``selfheal.pipeline.core.otlp``). On the logs topic: native
LogRecords, OTLP log requests, and Fluent Bit's / Vector's JSON (``shippers``). An OTLP/JSON
request is taken on either topic by its top-level key (replayed files hold both kinds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice, repeat
from operator import attrgetter
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs
from selfheal.pipeline.core.otlp import PROTO_FIRST_BYTE, Otlp, OtlpError, OtlpState, ensure_state
from selfheal.pipeline.core.otlp_config import OtlpConfig
from selfheal.pipeline.core.shippers import is_shipper_record, shipper_line
from selfheal.pipeline.kernel.schemas import (
    CDEventIn,
    LogRecordIn,
    MetricSampleIn,
    PromAdapterMetricIn,
    TelegrafMetricIn,
    ts_seconds,
)
from selfheal.pipeline.kernel.types import (
    Change,
    ChangeKind,
    Envelope,
    LogLevel,
    LogLine,
    Reject,
    RejectReason,
    Sample,
)

_NON_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
DEFAULT_ENTITY_KEYS: tuple[str, ...] = (
    "entity",
    "service",
    "app",
    "job",
    "host",
    "instance",
    "pod",
)


@dataclass(slots=True)
class Decoded:
    """Result of decoding a batch: the good records and the rejects, in input order."""

    samples: list[tuple[Envelope, Sample]] = field(default_factory=list)
    logs: list[tuple[Envelope, LogLine]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


_TS_FIELDS = ("ts", "timestamp")
_VALUE = attrgetter("value")
#: what ``_load`` returns for a message that did not parse (JSON ``null`` is a value)
_FAILED: Any = object()


def sample_of(m: MetricSampleIn) -> Sample:
    """The internal ``Sample`` of a validated native wire sample."""
    return Sample(ts_seconds(m.ts), m.entity, m.metric, m.value, m.labels, m.limit)


def _sample_validator() -> Callable[[bytes], Sample]:
    """``MetricSampleIn``'s validation, building the internal ``Sample`` directly.

    The field schemas and config are taken from the wire model's own core schema (not
    restated), so acceptance is the same by construction (``tests/test_decode_fast.py``
    checks it); pydantic-core then builds the frozen ``Sample`` itself, which saves a model
    instance and a Python-level constructor per message. Only acceptance comes from here: a
    message it refuses takes the general path, whose reject comes from ``MetricSampleIn``.
    """
    model: Any = MetricSampleIn.__pydantic_core_schema__
    names = [f.name for f in dataclasses.fields(Sample)]
    inner = model.get("schema", {}) if model.get("type") == "model" else {}
    fields = inner.get("fields", {}) if inner.get("type") == "model-fields" else {}
    if sorted(fields) != sorted(names):  # another pydantic's schema layout: the plain way
        validate = MetricSampleIn.model_validate_json

        def slow(value: bytes) -> Sample:
            return sample_of(validate(value))

        return slow

    def as_seconds(schema: Any) -> Any:
        # ``ts_seconds`` inside the schema: a datetime member becomes epoch seconds (a
        # Python call only for RFC 3339 strings; epoch numbers stay in Rust)
        if schema.get("type") == "datetime":
            return cs.no_info_after_validator_function(datetime.timestamp, schema)
        if schema.get("type") == "union":
            return {**schema, "choices": [as_seconds(c) for c in schema["choices"]]}
        return schema

    schemas = {n: fields[n]["schema"] for n in names}
    schemas["ts"] = as_seconds(schemas["ts"])
    args = cs.dataclass_args_schema("Sample", [cs.dataclass_field(n, schemas[n]) for n in names])
    config = {k: v for k, v in model.get("config", {}).items() if k != "title"}
    schema = cs.dataclass_schema(
        Sample, args, names, slots=True, frozen=True, config=cs.CoreConfig(**config)
    )
    return SchemaValidator(schema).validate_json


#: bytes -> ``Sample`` under the wire contract of ``MetricSampleIn``; raises ValidationError
validate_sample = _sample_validator()


def _loc(err: ValidationError, prefix: str = "") -> tuple[str, str]:
    first = err.errors(include_url=False)[0]
    parts = [str(p) for p in first["loc"]]
    if parts and parts[0] in _TS_FIELDS:
        # the timestamp is a union (epoch seconds | RFC 3339): name the field, not the member
        parts = parts[:1]
        msg = "must be epoch seconds (>= 0) or an RFC 3339 timestamp with offset"
    else:
        msg = first["msg"]
    # a field name comes from the producer: make it printable, non-blank and short
    parts = [_printable(p) for p in parts]
    loc = ".".join(parts) or "message"
    return (f"{prefix}{loc}" if prefix else loc), msg


def _printable(part: str) -> str:
    if part.isprintable() and part.strip():
        return part[:128]
    return (part.encode("unicode_escape").decode("ascii") or '""')[:128]


class Decoder:
    """Stateless decoder for one deployment's formats (entity label keys are configurable).

    >>> d = Decoder(max_message_bytes=1024)
    >>> body = b'{"ts": 1, "entity": "a", "metric": "m", "value": 2}'
    >>> env = Envelope("selfheal.metrics", 0, 7, body)
    >>> out = d.decode_metrics([env])
    >>> out.samples[0][1].value, out.rejects
    (2.0, [])
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = 1_048_576,
        entity_label_keys: Sequence[str] = DEFAULT_ENTITY_KEYS,
        otlp: OtlpConfig | None = None,
        counters: tuple[str, str] = ("requests_total", "errors_total"),
        max_series: int = 100_000,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.entity_label_keys = tuple(entity_label_keys)
        self.otlp = Otlp(
            otlp or OtlpConfig(),
            requests_metric=counters[0],
            errors_metric=counters[1],
            max_series=max_series,
        )

    # -- public ---------------------------------------------------------------------------

    def decode_metrics(self, batch: Sequence[Envelope], state: object | None = None) -> Decoded:
        """``state``: the partition's stage, which keeps OTLP cumulative series (plain data)."""
        out = Decoded()
        validate = validate_sample
        append = out.samples.append
        cap = self.max_message_bytes
        start = self._native_run(batch, out)
        for env in islice(batch, start, None):
            value = env.value
            # ``find`` rather than ``in``: the same test at half the cost (bytes' ``in``
            # takes a buffer of its operand first)
            if len(value) <= cap and value[:1] == b"{" and value.find(b'"metric"') >= 0:
                # fast path: a native sample validated straight from bytes in pydantic-core;
                # anything odd falls through to the general path for a precise reject
                try:
                    append((env, validate(value)))
                    continue
                except ValidationError:
                    pass
            elif value[:1] == PROTO_FIRST_BYTE:
                self._otlp(env, None, state, out, metrics=True)
                continue
            obj = self._load(env, out)
            if obj is _FAILED:
                continue
            if isinstance(obj, dict) and ("resourceMetrics" in obj or "resourceLogs" in obj):
                self._otlp(env, obj, state, out, metrics="resourceMetrics" in obj)
            elif isinstance(obj, list):
                if not obj:
                    out.rejects.append(
                        Reject(env, RejectReason.UNKNOWN_FORMAT, "message", "empty array")
                    )
                for i, item in enumerate(obj):
                    self._metric_obj(env, item, out, f"[{i}].")
            else:
                self._metric_obj(env, obj, out, "")
        return out

    def _native_run(self, batch: Sequence[Envelope], out: Decoded) -> int:
        """Decode the batch's leading native samples into ``out``; returns how many it took.

        A batch of which every message passes the fast path's checks (no larger than the cap,
        a JSON object, ``"metric"`` in it) is validated with no Python loop: the checks and
        the validation run over the batch in C. Up to the first message that fails
        validation, the outcome is the per-message loop's; that message and the rest are
        left to the loop (``tests/test_hot_fastpaths.py`` compares the two).
        """
        values = list(map(_VALUE, batch))
        try:
            if not values or max(map(len, values)) > self.max_message_bytes:
                return 0
            if not all(map(bytes.startswith, values, repeat(b"{"))):
                return 0
            if not all(map(bytes.count, values, repeat(b'"metric"'))):
                return 0
        except TypeError:  # a value that is not ``bytes``: the loop handles it
            return 0
        samples = out.samples
        # on a ValidationError, the samples before it are in: the loop goes on from the one
        # that failed (and from the first, were a list to drop what an extend had added)
        with contextlib.suppress(ValidationError):
            samples.extend(zip(batch, map(validate_sample, values), strict=True))
        return len(samples)

    def decode_logs(self, batch: Sequence[Envelope], state: object | None = None) -> Decoded:
        out = Decoded()
        for env in batch:
            if env.value[:1] == PROTO_FIRST_BYTE:
                self._otlp(env, None, state, out, metrics=False)
                continue
            obj = self._load(env, out)
            if obj is _FAILED:
                continue
            if isinstance(obj, dict) and ("resourceMetrics" in obj or "resourceLogs" in obj):
                self._otlp(env, obj, state, out, metrics="resourceMetrics" in obj)
                continue
            if obj == []:
                out.rejects.append(
                    Reject(env, RejectReason.UNKNOWN_FORMAT, "message", "empty array")
                )
                continue
            items = obj if isinstance(obj, list) else [obj]
            for i, item in enumerate(items):
                prefix = f"[{i}]." if isinstance(obj, list) else ""
                if not isinstance(item, dict):
                    out.rejects.append(
                        Reject(
                            env,
                            RejectReason.UNKNOWN_FORMAT,
                            prefix + "message",
                            "not a JSON object",
                        )
                    )
                    continue
                if is_shipper_record(item):
                    try:
                        out.logs.append((env, shipper_line(item, prefix)))
                    except OtlpError as err:
                        out.rejects.append(Reject(env, err.reason, err.path, err.message))
                    continue
                try:
                    rec = LogRecordIn.model_validate(item)
                except ValidationError as err:
                    loc, msg = _loc(err, prefix)
                    out.rejects.append(Reject(env, RejectReason.SCHEMA, loc, msg))
                    continue
                out.logs.append(
                    (
                        env,
                        LogLine(
                            ts_seconds(rec.ts),
                            rec.entity,
                            LogLevel[rec.level],
                            rec.message,
                            rec.labels,
                        ),
                    )
                )
        return out

    # -- internals ------------------------------------------------------------------------

    def _otlp(
        self, env: Envelope, obj: Any, state: object | None, out: Decoded, *, metrics: bool
    ) -> None:
        """One OTLP request (``obj`` parsed JSON, or None for protobuf): all of it or a reject."""
        value = env.value
        if len(value) > self.max_message_bytes:
            out.rejects.append(
                Reject(
                    env,
                    RejectReason.TOO_LARGE,
                    "message",
                    f"{len(value)} bytes > cap {self.max_message_bytes}",
                )
            )
            return
        otlp = self.otlp
        try:
            if metrics:
                st: OtlpState = (
                    otlp.fallback if state is None else ensure_state(state, otlp.max_series)
                )
                if obj is None:
                    samples = otlp.metrics_proto(value, st)
                else:
                    samples = otlp.metrics_json(obj, st)
                out.samples.extend([(env, s) for s in samples])
            else:
                lines = otlp.logs_proto(value) if obj is None else otlp.logs_json(obj)
                out.logs.extend([(env, line) for line in lines])
        except OtlpError as err:
            out.rejects.append(Reject(env, err.reason, err.path, err.message))
        except RecursionError:
            out.rejects.append(Reject(env, RejectReason.SCHEMA, "message", "nested too deeply"))
        except (ArithmeticError, ValueError, LookupError, TypeError) as exc:
            # numbers beyond float range (a 400-digit timestamp): errors as data, never raised
            out.rejects.append(Reject(env, RejectReason.SCHEMA, "message", str(exc)[:200]))

    def decode_changes(
        self, batch: Sequence[Envelope], now: float | None = None, max_future: float = 300.0
    ) -> tuple[list[Change], list[Reject]]:
        """CDEvents service events (``selfheal.changes``): each entity's new versions; one
        dated over ``max_future`` seconds after ``now`` (the wall clock, live) is refused:
        kept, it would be its entity's newest change for as long, pushing real ones out."""
        changes: list[Change] = []
        out = Decoded()
        for env in batch:
            obj = self._load(env, out)
            if obj is _FAILED:
                continue
            try:
                ev = CDEventIn.model_validate(obj)
            except ValidationError as err:
                loc, msg = _loc(err)
                out.rejects.append(Reject(env, RejectReason.SCHEMA, loc, msg))
                continue
            kind = ChangeKind(ev.context.type.split(".")[3])
            ts = ev.context.timestamp.timestamp()
            if now is not None and ts > now + max_future:
                ahead = f"{ts - now:.0f} s in the future (max {max_future:.0f})"
                reason = RejectReason.TIMESTAMP_FUTURE
                out.rejects.append(Reject(env, reason, "context.timestamp", ahead))
                continue
            artifact = ev.subject.content.artifactId
            changes.append(
                Change(ev.context.id, ts, ev.subject.id, kind, artifact, ev.context.source)
            )
        return changes, out.rejects

    def _load(self, env: Envelope, out: Decoded) -> Any:
        if len(env.value) > self.max_message_bytes:
            out.rejects.append(
                Reject(
                    env,
                    RejectReason.TOO_LARGE,
                    "message",
                    f"{len(env.value)} bytes > cap {self.max_message_bytes}",
                )
            )
            return _FAILED
        try:
            return orjson.loads(env.value)
        except orjson.JSONDecodeError as exc:
            # orjson refuses NaN/Infinity literals; the stdlib parser accepts them, which lets
            # the schema name the offending field instead of a bare "invalid JSON". Not for
            # nesting beyond orjson's limit: the stdlib's answer would depend on stack depth.
            if "depth" not in str(exc):
                try:
                    return json.loads(env.value.decode("utf-8"))
                except (ValueError, RecursionError):
                    pass
            out.rejects.append(Reject(env, RejectReason.INVALID_JSON, "message", str(exc)[:200]))
            return _FAILED

    def _entity(self, labels: dict[str, str]) -> str | None:
        for key in self.entity_label_keys:
            val = labels.get(key)
            if val:
                return val[:256]
        return None

    def _metric_obj(self, env: Envelope, obj: Any, out: Decoded, prefix: str) -> None:
        if not isinstance(obj, dict):
            out.rejects.append(
                Reject(env, RejectReason.UNKNOWN_FORMAT, prefix + "message", "not a JSON object")
            )
            return
        if "metrics" in obj and isinstance(obj["metrics"], list) and not prefix:
            if not obj["metrics"]:
                out.rejects.append(
                    Reject(env, RejectReason.SCHEMA, "metrics", "empty metrics batch")
                )
            for i, item in enumerate(obj["metrics"]):
                self._metric_obj(env, item, out, f"metrics[{i}].")
            return
        try:
            if "metric" in obj:
                out.samples.append((env, sample_of(MetricSampleIn.model_validate(obj))))
            elif "fields" in obj and "name" in obj:
                self._telegraf(env, obj, out, prefix)
            elif "name" in obj and "value" in obj:
                p = PromAdapterMetricIn.model_validate(obj)
                entity = self._entity(p.labels)
                if entity is None:
                    out.rejects.append(
                        Reject(
                            env,
                            RejectReason.NO_ENTITY,
                            prefix + "labels",
                            f"none of the entity label keys {list(self.entity_label_keys)}",
                        )
                    )
                    return
                if not math.isfinite(p.value):
                    out.rejects.append(
                        Reject(env, RejectReason.SCHEMA, prefix + "value", "value must be finite")
                    )
                    return
                out.samples.append(
                    (env, Sample(ts_seconds(p.timestamp), entity, p.name, p.value, p.labels))
                )
            else:
                out.rejects.append(
                    Reject(
                        env,
                        RejectReason.UNKNOWN_FORMAT,
                        prefix + "message",
                        "not a MetricSample, Telegraf or prometheus-kafka-adapter object",
                    )
                )
        except ValidationError as err:
            loc, msg = _loc(err, prefix)
            out.rejects.append(Reject(env, RejectReason.SCHEMA, loc, msg))

    def _telegraf(self, env: Envelope, obj: dict[str, Any], out: Decoded, prefix: str) -> None:
        fields = obj.get("fields")
        if isinstance(fields, dict):
            # Telegraf also emits string fields; they are not samples, so drop them up front
            obj = {**obj, "fields": {k: v for k, v in fields.items() if not isinstance(v, str)}}
        t = TelegrafMetricIn.model_validate(obj)
        entity = self._entity(t.tags)
        if entity is None:
            out.rejects.append(
                Reject(
                    env,
                    RejectReason.NO_ENTITY,
                    prefix + "tags",
                    f"none of the entity label keys {list(self.entity_label_keys)}",
                )
            )
            return
        base = _NON_METRIC_CHARS.sub("_", t.name)
        for fname, fval in t.fields.items():
            value = float(fval)
            metric = f"{base}_{_NON_METRIC_CHARS.sub('_', fname)}"
            if metric[0].isdigit():
                metric = "_" + metric
            if len(metric) > 256:
                out.rejects.append(
                    Reject(
                        env,
                        RejectReason.SCHEMA,
                        f"{prefix}fields.{fname[:64]}",
                        "metric name longer than 256 characters",
                    )
                )
                continue
            out.samples.append(
                (env, Sample(ts_seconds(t.timestamp), entity, metric, value, t.tags))
            )
