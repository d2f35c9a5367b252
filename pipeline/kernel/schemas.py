"""Wire schemas (pydantic v2): what producers send and what selfheal emits.

These models live at the edges only. Inbound messages are validated here and converted into
the frozen dataclasses of ``selfheal.pipeline.kernel.types``; outbound events are CloudEvents 1.0
structured JSON whose ``data`` follows the models below (built in
``selfheal.pipeline.kernel.cloudevents``). ``selfheal schema`` prints their JSON Schema; outbound
models forbid unknown fields, so the schema is a complete description of what is emitted.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_LABELS = 32
MAX_LABEL_VALUE = 1024
MAX_MESSAGE_CHARS = 64 * 1024
#: the CDEvents types selfheal reads (any spec version of the event)
CDEVENT_TYPE_RE = re.compile(
    r"^dev\.cdevents\.service\.(deployed|upgraded|rolledback)\.\d+\.\d+\.\d+(-draft)?$"
)


def parse_ts(value: Any) -> float:
    """RFC 3339 string or epoch seconds (int/float, or a numeric string) -> epoch seconds.

    >>> parse_ts("2026-11-28T05:00:00Z")
    1795842000.0
    >>> parse_ts(1795842000)
    1795842000.0
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be RFC 3339 or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            ts = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not an RFC 3339 timestamp: {text[:64]!r}") from exc
            if parsed.tzinfo is None:
                raise ValueError("RFC 3339 timestamp needs a UTC offset") from None
            ts = parsed.timestamp()
    else:
        raise ValueError("timestamp must be RFC 3339 or epoch seconds")
    if not math.isfinite(ts) or ts < 0:
        raise ValueError("timestamp must be finite and non-negative")
    return ts


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, val in labels.items():
        if not LABEL_NAME_RE.match(key):
            raise ValueError(f"invalid label name {key[:64]!r}")
        if len(val) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key!r} value longer than {MAX_LABEL_VALUE}")
    return labels


# Epoch seconds or an RFC 3339 string with offset: validated in Rust (no Python callback on the
# hot path); ``ts_seconds`` turns either into epoch seconds.
MAX_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z: RFC 3339 cannot write later times
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
Timestamp = Annotated[
    # strict: a JSON number (never a boolean or a string) is epoch seconds
    Annotated[float, Field(ge=0, le=MAX_TS, strict=True)]
    | Annotated[AwareDatetime, Field(ge=_EPOCH, le=_LAST)],
    Field(union_mode="left_to_right"),
]


def ts_seconds(value: float | datetime) -> float:
    return value if isinstance(value, float) else value.timestamp()


Entity = Annotated[str, Field(min_length=1, max_length=256)]
# label checks as pydantic constraints, so they run in pydantic-core (the hot path)
LabelName = Annotated[str, StringConstraints(pattern=LABEL_NAME_RE.pattern, max_length=128)]
LabelValue = Annotated[str, StringConstraints(max_length=MAX_LABEL_VALUE)]
Labels = Annotated[dict[LabelName, LabelValue], Field(default_factory=dict, max_length=MAX_LABELS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MetricSampleIn(_Strict):
    """One metric point (the native format on the metrics topic)."""

    ts: Timestamp
    entity: Entity
    metric: str = Field(min_length=1, max_length=256, pattern=METRIC_NAME_RE.pattern)
    # strict: a JSON number; ``true`` or ``"1.5"`` are producer bugs worth a dead letter
    value: float = Field(strict=True)
    labels: Labels
    limit: float | None = Field(default=None, gt=0)


class LogRecordIn(_Strict):
    """One log record (the native format on the logs topic)."""

    ts: Timestamp
    entity: Entity
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"]
    message: str = Field(max_length=MAX_MESSAGE_CHARS)
    labels: Labels

    @field_validator("level", mode="before")
    @classmethod
    def _normalise_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            up = value.strip().upper()
            return {"WARN": "WARNING", "ERR": "ERROR", "CRIT": "CRITICAL"}.get(up, up)
        return value


class TelegrafMetricIn(BaseModel):
    """Telegraf's JSON serializer output: one sample per numeric field."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200)
    fields: dict[str, float | bool] = Field(min_length=1)
    tags: Labels
    timestamp: Timestamp


class PromAdapterMetricIn(BaseModel):
    """prometheus-kafka-adapter JSON: value is a string as Prometheus renders it."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    name: str = Field(alias="name", min_length=1, max_length=256, pattern=METRIC_NAME_RE.pattern)
    value: float
    labels: Labels
    timestamp: Timestamp

    @field_validator("labels")
    @classmethod
    def _drop_name(cls, labels: dict[str, str]) -> dict[str, str]:
        return _check_labels({k: v for k, v in labels.items() if k != "__name__"})


# -- outbound -------------------------------------------------------------------------------


class _CDContext(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=1024)
    type: str = Field(pattern=CDEVENT_TYPE_RE.pattern)
    timestamp: AwareDatetime
    version: str = Field(min_length=1, max_length=32)


class _CDContent(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    artifactId: str = Field(min_length=1, max_length=1024)  # the spec spells it so


class _CDSubject(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Entity
    content: _CDContent


class CDEventIn(BaseModel):
    """A CDEvents (v0.4) service event: ``dev.cdevents.service.{deployed,upgraded,rolledback}``.

    The entity is ``subject.id``, the version ``subject.content.artifactId``; fields selfheal does
    not read (``chainId``, ``links``, ``environment`` ...) are accepted and ignored.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    context: _CDContext
    subject: _CDSubject


class _Out(BaseModel):
    """Outbound: the JSON Schema says ``additionalProperties: false``."""

    model_config = ConfigDict(extra="forbid")


class ForecastOut(_Out):
    eta_seconds: float
    horizon_seconds: float
    confidence: float = Field(ge=0, le=1)


class AnomalyData(_Out):
    entity: str
    metric: str
    detector: str
    kind: str
    severity: Literal["info", "warning", "critical"]
    score: float
    threshold: float
    value: float
    evidence: dict[str, Any]
    forecast: ForecastOut | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class RepairData(_Out):
    action: str
    entity: str
    mode: Literal["enforce", "dry_run"]
    predictive: bool
    reason: list[str]
    params: dict[str, Any]
    status: Literal["execute", "dry_run", "pending_approval"]
    rule: str
    explanation: str


class RepairOutcomeData(_Out):
    """``io.selfheal.repair.outcome`` (and ``.started``) on the repair-outcome topic; also
    ``io.selfheal.approval.settled`` (outcome ``settled``, the vote's verdict in ``detail``):
    a vote on the pending decision ``decision_id`` was audited, nothing was executed; and
    ``io.selfheal.repair.verified`` (outcome ``verified``, ``success``): the policy's verdict on
    the repair ``decision_id``."""

    decision_id: str
    action: str
    entity: str
    rule: str
    outcome: Literal[
        "started",
        "ok",
        "failed",
        "timeout",
        "error",
        "skipped",
        "unknown",
        "paused",
        "settled",
        "verified",
    ]
    executor: str
    detail: str
    duration_seconds: float
    approved_decision_id: str | None = None
    approved_by: str | None = None
    #: ``started`` of a repair (not a page or an approval request): the event time it was
    #: decided at (epoch seconds); a restarted executor stage paces from it
    decided_at: float | None = None
    #: ``verified``: whether the repair worked (the condition stayed clear for its window)
    success: bool | None = None


class DeadLetterData(_Out):
    topic: str
    partition: int
    offset: int
    reason: str
    field: str
    error: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    payload_bytes: int
    #: the payload is the message's first ``validation.deadletter_payload_bytes``
    payload_truncated: bool
    #: another element of a message whose first dead letter carries the payload
    payload_omitted: bool
    #: more rejects of this message, not written (at most 100 dead letters a message)
    unlisted_rejects: int = Field(ge=0)


class CauseOut(_Out):
    entity: str
    score: float = Field(ge=0, le=1)
    evidence: list[str]


class IncidentData(_Out):
    incident_id: str
    state: Literal["opened", "updated", "resolved"]
    #: increases with every event of the incident (consumers keep the highest)
    revision: int = Field(ge=1)
    entities: list[str]
    #: anomaly ids (the first ones; ``anomaly_count`` counts them all)
    anomalies: list[str]
    anomaly_count: int = Field(ge=0)
    causes: list[CauseOut]
    started: float
    resolved: float | None
    #: set when the incident was merged into another one
    merged_into: str | None = None


class CloudEvent(BaseModel):
    """CloudEvents 1.0, structured JSON mode."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str
    subject: str | None = None
    time: str
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]


class AnomalyEvent(CloudEvent):
    """``io.selfheal.anomaly.<kind>`` on the anomalies topic."""

    model_config = ConfigDict(extra="forbid")
    type: Annotated[str, Field(pattern=r"^io\.selfheal\.anomaly\.[a-z_]+$")]
    data: AnomalyData  # type: ignore[assignment]


class RepairEvent(CloudEvent):
    """``io.selfheal.repair.<action>`` on the repairs topic and in webhook bodies."""

    model_config = ConfigDict(extra="forbid")
    type: Annotated[str, Field(pattern=r"^io\.selfheal\.repair\.[a-z_]+$")]
    data: RepairData  # type: ignore[assignment]


class IncidentEvent(CloudEvent):
    """``io.selfheal.incident.<state>`` on the incidents topic; ``subject`` is the incident id."""

    model_config = ConfigDict(extra="forbid")
    type: Annotated[str, Field(pattern=r"^io\.selfheal\.incident\.(opened|updated|resolved)$")]
    data: IncidentData  # type: ignore[assignment]


class AuditResultOut(BaseModel):
    executor: str
    ok: bool
    detail: str
    retriable: bool
    duration_seconds: float


class AuditRecordOut(BaseModel):
    """One line of the audit trail (``selfheal.audit`` topic and audit file).

    Every record has ``record``, ``id`` (the decision id), ``time``, ``ts``, ``entity`` and
    ``action``; the other fields depend on ``record`` (decision, execution, verification,
    approval: ``by`` who approved or rejected).
    """

    model_config = ConfigDict(extra="allow")

    record: Literal["decision", "execution", "verification", "approval"]
    id: str
    time: str
    ts: float
    entity: str
    action: str
    status: str | None = None
    suppressed_by: str | None = None
    mode: Literal["enforce", "dry_run"] | None = None
    predictive: bool | None = None
    rule: str | None = None
    reason: list[str] | None = None
    anomaly_ids: list[str] | None = None
    params: dict[str, Any] | None = None
    explanation: str | None = None
    results: list[AuditResultOut] | None = None
    executor: str | None = None
    ok: bool | None = None
    detail: str | None = None
    retriable: bool | None = None
    duration_seconds: float | None = None
    success: bool | None = None
    by: str | None = None


def epoch_to_rfc3339(ts: float) -> str:
    """Epoch seconds -> RFC 3339 UTC with millisecond precision (stable text for ids)."""
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def json_schemas() -> dict[str, Any]:
    """All wire schemas, keyed by name (what ``selfheal schema`` prints)."""
    return {
        "inbound": {
            "MetricSample": MetricSampleIn.model_json_schema(),
            "LogRecord": LogRecordIn.model_json_schema(),
            "TelegrafMetric": TelegrafMetricIn.model_json_schema(),
            "PromAdapterMetric": PromAdapterMetricIn.model_json_schema(),
            "CDEvent": CDEventIn.model_json_schema(),
        },
        "outbound": {
            "CloudEvent": CloudEvent.model_json_schema(),
            "AnomalyEvent": AnomalyEvent.model_json_schema(),
            "RepairEvent": RepairEvent.model_json_schema(),
            "IncidentEvent": IncidentEvent.model_json_schema(),
            "AnomalyData": AnomalyData.model_json_schema(),
            "RepairData": RepairData.model_json_schema(),
            "DeadLetterData": DeadLetterData.model_json_schema(),
            "RepairOutcomeData": RepairOutcomeData.model_json_schema(),
            "AuditRecord": AuditRecordOut.model_json_schema(),
        },
    }
