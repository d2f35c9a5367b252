"""Internal, frozen value types that flow between the stages.

Pydantic models live only at the edges (``selfheal.pipeline.kernel.schemas``); inside the
pipeline every record is one of these small frozen dataclasses (or, for ``Envelope``, a named
tuple), cheap to build and safe to share.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class AnomalyKind(enum.StrEnum):
    """Every kind of anomaly the detectors and rules can report (``io.selfheal.anomaly.<kind>``)."""

    # river models (models/)
    MEMORY_LEAK = "memory_leak"
    ERROR_RATE_DRIFT = "error_rate_drift"
    ERROR_BURST = "error_burst"
    LATENCY_ANOMALY = "latency_anomaly"
    LOG_PATTERN = "log_pattern"
    SECURITY = "security"
    #: a resource other than memory (disk, descriptors, pools, queue) forecast to hit its limit
    RESOURCE_EXHAUSTION = "resource_exhaustion"
    # static threshold rules (models/rules)
    MEMORY_HIGH = "memory_high"
    QUEUE_HIGH = "queue_high"
    BREAKER_OPEN = "breaker_open"
    HEALTH_CHECK_FAILED = "health_check_failed"
    VALIDATION_FAILURES = "validation_failures"
    LOOP_SLOW = "loop_slow"
    LOOP_STUCK = "loop_stuck"
    HEARTBEAT_MISSING = "heartbeat_missing"
    RATE_LIMITED = "rate_limited"
    THRESHOLD = "threshold"


class RepairAction(enum.StrEnum):
    RESTART = "restart"
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    ROLLBACK = "rollback"
    CIRCUIT_BREAK = "circuit_break"
    DEGRADE = "degrade"
    EVICT_CACHE = "evict_cache"
    RATE_LIMIT = "rate_limit"
    BLOCK_SOURCE = "block_source"
    ESCALATE = "escalate"


class LogLevel(enum.IntEnum):
    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50
    FATAL = 60


@dataclass(frozen=True, slots=True)
class Sample:
    """One metric point. ``ts`` is event time in epoch seconds (UTC)."""

    ts: float
    entity: str
    metric: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    limit: float | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    """One log record. ``ts`` is event time in epoch seconds (UTC)."""

    ts: float
    entity: str
    level: LogLevel
    message: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Forecast:
    """A predicted breach: ``eta_seconds`` from the triggering sample's time."""

    eta_seconds: float
    horizon_seconds: float
    confidence: float


@dataclass(frozen=True, slots=True)
class Finding:
    """What a detector or rule reports; the runner turns it into an anomaly CloudEvent.

    ``ts`` is the event time of the triggering sample (or, for absence checks, the deadline
    that passed), so the same input always yields the same finding and the same event id.
    ``evidence`` holds JSON-serialisable values a human needs to trust the finding.
    """

    ts: float
    entity: str
    metric: str
    detector: str
    kind: AnomalyKind
    severity: Severity
    score: float
    threshold: float
    value: float
    evidence: Mapping[str, Any] = field(default_factory=dict)
    forecast: Forecast | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A finding with its deterministic CloudEvent id (what the policy stage consumes)."""

    id: str
    finding: Finding


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    DRY_RUN = "dry_run"


class DecisionStatus(enum.StrEnum):
    """What happens to a decision: only EXECUTE reaches executors other than the repair topic."""

    EXECUTE = "execute"
    DRY_RUN = "dry_run"
    PENDING_APPROVAL = "pending_approval"
    SUPPRESSED = "suppressed"


class Suppression(enum.StrEnum):
    COOLDOWN = "cooldown"
    DUPLICATE = "duplicate"
    BUDGET = "budget"
    STORM = "storm"
    MAX_ATTEMPTS = "max_attempts"
    BREAKER_OPEN = "breaker_open"
    #: the entity's only problem is a dependency that is being repaired (incidents)
    SYMPTOM = "symptom"
    #: another rule's executed repair of the entity is under verification: one at a time
    REPAIR_IN_PROGRESS = "repair_in_progress"
    #: an open approval request the running configuration would not make (at state load):
    #: ``params["withdrawn_decision_id"]``, see ``policy_state.withdrawal``
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, slots=True)
class Decision:
    """A repair decision, executed or not; every one is audited.

    ``id`` is deterministic (derived from action, entity and the anomaly ids behind it), so an
    executor can be idempotent on it and consumers can drop at-least-once duplicates.
    """

    id: str
    ts: float
    action: RepairAction
    entity: str
    mode: Mode
    predictive: bool
    reason: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    rule: str = ""
    status: DecisionStatus = DecisionStatus.EXECUTE
    suppressed_by: Suppression | None = None
    explanation: str = ""


@dataclass(frozen=True, slots=True)
class Verification:
    """Outcome of watching an entity after a repair (feeds repairs_successful_total etc.)."""

    decision_id: str
    ts: float
    action: RepairAction
    entity: str
    success: bool
    duration_seconds: float
    explanation: str = ""


class Envelope(NamedTuple):
    """A raw message as a source delivered it (payload plus where it came from).

    Immutable like the dataclasses here, but a named tuple: one is built per input message,
    and a tuple builds in a third of a frozen dataclass's time.
    """

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None


class Batch(list[Envelope]):
    """A source's batch plus what the source learnt for free while building it.

    ``next_offsets`` (per topic and partition) and ``topic_counts`` spare the runner a pass
    over every message to derive them again; code given a plain list derives them itself.
    """

    __slots__ = ("next_offsets", "topic_counts")

    def __init__(self) -> None:
        super().__init__()
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.topic_counts: dict[str, int] = {}


class RejectReason(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    UNKNOWN_FORMAT = "unknown_format"
    SCHEMA = "schema"
    TOO_LARGE = "too_large"
    NO_ENTITY = "no_entity"
    TIMESTAMP_FUTURE = "timestamp_future"
    TIMESTAMP_PAST = "timestamp_past"
    LABEL_CARDINALITY = "label_cardinality"
    SERIES_CARDINALITY = "series_cardinality"
    ENTITY_CARDINALITY = "entity_cardinality"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class Reject:
    """A message (or one element of a batch message) that did not pass the edge."""

    envelope: Envelope
    reason: RejectReason
    field: str
    error: str


# -- fleet-wide arbitration (budget and storms): what a FleetGate is asked and answers --


class Verdict(enum.Enum):
    GRANTED = "granted"  # execute: a budget slot is taken
    BUDGET = "budget"  # the fleet budget is exhausted
    STORM = "storm"  # an active storm covers this need
    STORM_STARTED = "storm_started"  # this need started a storm: its proposer escalates once
    NOTED = "noted"  # counted for storm detection; no budget asked (cooldown, approval)


@dataclass(frozen=True, slots=True)
class FleetRequest:
    """One entity needing one repair action at event time ``ts``."""

    id: str
    ts: float
    entity: str
    action: RepairAction
    #: asks for a budget slot (False when the entity is cooling down or awaits approval)
    claim: bool
    #: the id the storm escalation gets if this request starts a storm. A note never starts
    #: one: its ``storm_id`` is "", or, for a held entity still flagged, the storm holding it
    #: (a reader whose log starts after that storm's start learns of the storm from it)
    storm_id: str
    #: a storm-held entity's condition: True still flagged, False cleared (None: a plain need).
    #: A storm does not end while an entity it holds is flagged, whichever process holds it.
    held: bool | None = None
    #: the incident that explains this need (a protective action for a symptom of its cause):
    #: the needs of one incident count once towards a storm, the incident is one problem
    incident: str = ""
    #: a need that may start a storm: its anomaly kind and rule, the labels of the storm's
    #: escalation, so any process can resolve the storm if its escalating engine does not
    kind: str = ""
    rule: str = ""
    #: the input partition whose engine logged it (None: unknown, an older version's record):
    #: a storm ends once each partition it had needs from was quiet for the storm window in
    #: its own event time (``ts`` is that time), whatever the other partitions' clocks say
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class FleetOutcome:
    verdict: Verdict
    storm_id: str = ""
    #: distinct entities needing the action in the storm window (when a storm started)
    count: int = 0
    entities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FleetProgress:
    """How far input partition ``partition`` (of ``of``) is processed, in event time: no need
    before ``ts`` can come from it any more (``math.inf``: nothing left to read in it).

    While a storm runs, every process logs its partitions' progress, so a storm ends in event
    time only once every partition has passed the end, however far apart they are: a
    partition the storm had needs from in its own time (``FleetRequest.partition``)."""

    partition: int
    of: int
    ts: float
    #: wall time it was logged at (epoch seconds; None: a record of an older version). A live
    #: process logs its partitions' standing again every second while a storm runs: one whose
    #: reports stopped (``fleet.SILENT_SECONDS``) is not taken at its word any more
    at: float | None = None


@dataclass(frozen=True, slots=True)
class StormEnd:
    """The proposer of a storm resolved it: later needs count towards a new storm."""

    storm_id: str
    action: RepairAction
    ts: float
    #: an operator released the hold (no new storm on the action until its needs stop)
    released: bool = False
    #: who released it (``selfheal approve --by``), for the resolution every engine reports
    by: str = ""


# -- changes (deploys) and incidents ---------------------------------------------------------


class ChangeKind(enum.StrEnum):
    """CDEvents service predicates selfheal reads (``dev.cdevents.service.<kind>``)."""

    DEPLOYED = "deployed"
    UPGRADED = "upgraded"
    ROLLEDBACK = "rolledback"


@dataclass(frozen=True, slots=True)
class Change:
    """A new version running on an entity (from a CDEvent on ``selfheal.changes``)."""

    id: str
    ts: float
    entity: str
    kind: ChangeKind
    #: ``subject.content.artifactId`` as sent (a package URL, e.g. ``pkg:oci/api@v2``)
    artifact: str
    source: str = ""

    @property
    def version(self) -> str:
        """The readable version: what follows ``@`` in the artifact id (else the whole id)."""
        from urllib.parse import unquote

        return unquote(self.artifact.rsplit("@", 1)[-1])
