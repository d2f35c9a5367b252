"""Configuration: an explicit YAML file plus ``SELFHEAL_`` environment variables.

Nothing is read implicitly from the working directory: the YAML path is always passed in.
Precedence: explicit overrides > environment (``SELFHEAL_KAFKA__BOOTSTRAP=...``, ``__`` nests)
> YAML file > defaults. A bad value raises ``ConfigError`` naming the field; the CLI maps it to
exit code 2.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from selfheal.models.registry import DetectorsConfig
from selfheal.models.rules import DEFAULT_RULES, RuleSpec
from selfheal.pipeline.core.decode import DEFAULT_ENTITY_KEYS
from selfheal.pipeline.core.otlp_config import OtlpConfig
from selfheal.pipeline.core.policy_config import DEFAULT_POLICY_PATH, PolicyConfig
from selfheal.pipeline.kernel.types import RepairAction

_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TopicsConfig(_Section):
    metrics: str = "selfheal.metrics"
    logs: str = "selfheal.logs"
    anomalies: str = "selfheal.anomalies"
    repairs: str = "selfheal.repairs"
    deadletter: str = "selfheal.deadletter"
    audit: str = "selfheal.audit"
    state: str = "selfheal.state"
    #: one-partition log of repair needs: the fleet-wide budget and storm window
    fleet: str = "selfheal.fleet"
    #: CDEvents service events (deploys, upgrades, rollbacks), keyed by entity: an input topic
    changes: str = "selfheal.changes"
    #: incident CloudEvents (opened, updated, resolved)
    incidents: str = "selfheal.incidents"
    #: one-partition log of anomaly notes: the deployment's one incident book
    incident_log: str = "selfheal.incident_log"
    #: execution record per decision id ("started", then the outcome): at most once per id
    outcomes: str = "selfheal.repair_outcomes"
    #: one-partition log of pause / resume commands every process follows
    control: str = "selfheal.control"
    #: one-partition log of approvals and rejections of pending decisions
    approvals: str = "selfheal.approvals"


class IncidentsConfig(_Section):
    """Incidents (``core/incidents.py``) and changes (``core/changes.py``)."""

    enabled: bool = True
    #: a related anomaly joins an incident that saw an anomaly at most this long before
    join_window_seconds: float = Field(default=600.0, gt=0)
    #: an incident with no anomaly for this long is resolved
    resolve_after_seconds: float = Field(default=900.0, gt=0)
    max_open: int = Field(default=1_000, ge=1)
    #: entities listed per incident (more are counted in ``anomaly_count``, not listed)
    max_entities: int = Field(default=200, ge=1)
    #: outcomes of incident log records kept for redeliveries (a note asked for again after a
    #: crash gets its first answer while it is among the last this many)
    remember_records: int = Field(default=50_000, ge=100)
    #: a caller's repair is left to its cause only when the cause scores at least this
    min_cause_score: float = Field(default=0.5, ge=0, le=1)
    #: an anomaly this soon after a deploy on its entity may be the deploy's
    change_window_seconds: float = Field(default=1800.0, gt=0)
    #: static call graph, caller -> callees, besides what ``dependency_request_ok`` teaches
    dependencies: dict[str, list[str]] = Field(default_factory=dict)


class KafkaConfig(_Section):
    bootstrap: str = "127.0.0.1:9092"
    client_id: str = "selfheal"
    group_id: str = "selfheal"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    #: partitions for topics selfheal creates when they are missing
    partitions: int = Field(default=3, ge=1, le=1024)
    create_topics: bool = True
    max_batch: int = Field(default=5000, ge=1, le=100_000)
    fetch_timeout_ms: int = Field(default=200, ge=1, le=60_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    retry_backoff_seconds: float = Field(default=1.0, gt=0)
    retry_backoff_max_seconds: float = Field(default=30.0, gt=0)


class ValidationConfig(_Section):
    max_message_bytes: int = Field(default=1_048_576, ge=256)
    #: a dead letter's copy of the message, at most (its JSON string; ``core/deadletter.py``)
    deadletter_payload_bytes: int = Field(default=262_144, ge=0)
    max_future_seconds: float = Field(default=300.0, ge=0)
    max_past_seconds: float = Field(default=7 * 86400.0, ge=0)
    #: what "now" is for the future/past checks: the wall clock (live) or the watermark (replay)
    time_reference: Literal["clock", "watermark"] = "clock"
    max_label_sets_per_series: int = Field(default=64, ge=1)
    #: per-entity token bucket, in event time: sustained messages/s and burst size
    rate_per_second: float = Field(default=50.0, gt=0)
    burst: float = Field(default=500.0, ge=1)
    #: a record older than its entity's last is judged against the count of its interval of
    #: this many event-time seconds, over the last ``rate_intervals`` (``core/guard.py``)
    rate_interval_seconds: float = Field(default=60.0, gt=0)
    rate_intervals: int = Field(default=30, ge=1, le=1440)
    max_entities: int = Field(default=100_000, ge=1)
    #: entities not seen before admitted per event-time second and partition, after a burst:
    #: past it their records are rejected (``entity_cardinality``), so ids in entity names
    #: cannot push the established entities' models out of the bounded state
    new_entities_per_second: float = Field(default=200.0, gt=0)
    new_entities_burst: float = Field(default=20_000.0, ge=1)
    entity_label_keys: tuple[str, ...] = DEFAULT_ENTITY_KEYS
    #: validation-failure alarm: ratio of rejects over a tumbling window of messages
    failure_window_messages: int = Field(default=500, ge=10)
    failure_ratio: float = Field(default=0.10, gt=0, le=1)


class DetectionConfig(_Section):
    max_series: int = Field(default=100_000, ge=1)
    #: one entity's share of ``max_series``: its new series beyond it are rejected
    #: (``series_cardinality``), so runaway metric names cannot evict other entities' models
    max_series_per_entity: int = Field(default=2_000, ge=1)
    rules: tuple[Annotated[RuleSpec, Field(discriminator="type")], ...] = DEFAULT_RULES
    #: the online models; ``models_enabled: false`` leaves the static rules only
    models_enabled: bool = True
    models: DetectorsConfig = Field(default_factory=DetectorsConfig)
    #: how often (event-time seconds) absence checks run against the watermark
    tick_seconds: float = Field(default=5.0, gt=0)
    #: live runs: a partition silent for this many wall seconds advances its event time with
    #: the clock (absence of data is then detected from the clock); one with records still
    #: waiting in the topic or the consumer is late, not silent
    idle_grace_seconds: float = Field(default=30.0, gt=0)


class HttpConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    #: the operator console at ``/console`` (``selfheal run``'s HTTP port)
    console: bool = True
    #: the console's buttons (approve, reject, pause, resume) require this token; without
    #: one they work only while ``host`` is a loopback address
    console_token: SecretStr | None = None


class StateConfig(_Section):
    snapshot_every_seconds: float = Field(default=30.0, gt=0)
    snapshot_every_messages: int = Field(default=50_000, ge=1)
    #: sign snapshots with HMAC-SHA256 under this key; unsigned or wrongly signed snapshots
    #: are then refused (the partition starts fresh)
    hmac_key: SecretStr | None = None
    #: how long a partition's snapshot load may read the state topic
    load_timeout_seconds: float = Field(default=30.0, gt=0)


KubernetesOperation = Literal["restart", "scale", "rollback", "cordon"]
_KUBERNETES_ACTIONS: dict[RepairAction, KubernetesOperation] = {
    RepairAction.RESTART: "restart",
    RepairAction.SCALE_UP: "scale",
    RepairAction.SCALE_DOWN: "scale",
    RepairAction.ROLLBACK: "rollback",
}


class KubernetesExecutorConfig(_Section):
    """The Kubernetes executor (``selfheal.connectors.kubernetes``, needs the ``kubernetes``
    extra): rollout restart, scale, rollback and cordon of the entity's workload."""

    enabled: bool = False
    #: the pod's service account (in a cluster); else ``kubeconfig`` (or ~/.kube/config)
    in_cluster: bool = True
    kubeconfig: Path | None = None
    context: str | None = None
    #: namespace of entities that name none (``namespace/pod`` or a ``namespace`` param do)
    namespace: str = "default"
    #: restart: patch the owner's restartedAt (``kubectl rollout restart``) or delete the pod
    restart: Literal["rollout", "delete_pod"] = "rollout"
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=10, ge=1)
    #: repair action -> operation; an action not listed is left to the other executors
    actions: dict[RepairAction, KubernetesOperation] = Field(
        default_factory=lambda: dict(_KUBERNETES_ACTIONS)
    )
    timeout_seconds: float = Field(default=10.0, gt=0)


class ExecutorsConfig(_Section):
    """Where repair decisions go besides the repair topic (which is always on)."""

    #: POST every executed decision here (or per action with ``webhook_urls``)
    webhook_url: str | None = None
    webhook_urls: dict[RepairAction, str] = Field(default_factory=dict)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=3, ge=1)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_recovery_seconds: float = Field(default=300.0, gt=0)
    #: action -> argv template, run without a shell (``{entity}``, ``{action}``, params...)
    commands: dict[RepairAction, list[str]] = Field(default_factory=dict)
    command_timeout_seconds: float = Field(default=60.0, gt=0)
    #: escalations go to Alertmanager's /api/v2/alerts
    alertmanager_url: str | None = None
    generator_url: str = ""
    #: decisions executed at the same time by the executor stage (outside the detection loop)
    max_concurrent: int = Field(default=4, ge=1, le=256)
    #: a pending decision can be approved for this long after it was published
    approval_expiry_seconds: float = Field(default=3600.0, gt=0)
    #: an escalation (page or resolution) whose delivery failed with a retriable error (the
    #: receiver down or overloaded) is tried again with backoff for this long; 0: never
    escalation_retry_seconds: float = Field(default=3600.0, ge=0)
    #: how far back a starting process reads the repair, outcome, control and approval logs
    history_seconds: float = Field(default=86_400.0, gt=0)
    kubernetes: KubernetesExecutorConfig = Field(default_factory=KubernetesExecutorConfig)


class RuntimeConfig(_Section):
    #: CloudEvents ``source`` attribute
    source: str = "selfheal"
    audit_path: Path | None = None
    #: watchdog: an iteration taking longer than this is cancelled and the loop continues
    iteration_timeout_seconds: float = Field(default=30.0, gt=0)
    #: backpressure: pause fetching while this many outputs wait for broker acks
    max_pending_outputs: int = Field(default=50_000, ge=100)
    #: memory cap (RSS bytes) above which the consumer pauses and state is trimmed
    max_rss_bytes: int | None = None


class Settings(BaseSettings):
    """All of selfheal's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="SELFHEAL_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    policy: PolicyConfig = Field(
        default_factory=lambda: PolicyConfig.model_validate(_default_policy())
    )
    executors: ExecutorsConfig = Field(default_factory=ExecutorsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    #: OpenTelemetry input: entity attribute order, metric-name table (docs/conventions.md)
    otlp: OtlpConfig = Field(default_factory=OtlpConfig)
    #: incidents, their probable causes, and deploys (CDEvents) in the picture
    incidents: IncidentsConfig = Field(default_factory=IncidentsConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # no dotenv / secrets dir: nothing is read implicitly from the working directory
        return (init_settings, env_settings)


class ConfigError(Exception):
    """A configuration problem; ``field`` names the offending key (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@functools.cache
def _default_policy_text() -> str:
    return DEFAULT_POLICY_PATH.read_text(encoding="utf-8")


def _default_policy() -> dict[str, Any]:
    # parsed each time (callers merge into it), read from disk once
    data = yaml.load(_default_policy_text(), Loader=_YamlLoader)
    return data if isinstance(data, dict) else {}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load YAML ``path`` (optional), apply environment and ``overrides``; raise ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from exc
        except (ValueError, OverflowError, RecursionError) as exc:
            # invalid UTF-8, out-of-range escapes (PyYAML calls chr() on them), deep nesting
            raise ConfigError("--config", f"{path} is not valid YAML/UTF-8: {exc}") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError("--config", f"{path} must hold a mapping at the top level")
        bad = [k for k in raw if not isinstance(k, str)]
        if bad:
            raise ConfigError(repr(bad[0]), "top-level keys must be strings")
        data = raw
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        # YAML values enter as init kwargs, which outrank the environment in pydantic-settings;
        # to keep "environment beats file", we read the environment-only view and merge it on top.
        env_only = Settings().model_dump(exclude_unset=True)
        merged = _deep_merge(data, env_only) if env_only else data
        if overrides:
            merged = _deep_merge(merged, overrides)
        # a partial policy section (say, just dry_run) keeps the shipped rules
        policy = merged.get("policy")
        if isinstance(policy, dict):
            merged = {**merged, "policy": _deep_merge(_default_policy(), policy)}
        return Settings(**merged)
    except RecursionError as exc:
        raise ConfigError("--config", "nested too deeply") from exc
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = ".".join(_loc_part(p) for p in first["loc"]) or "config"
        raise ConfigError(loc, first["msg"]) from err


def _loc_part(part: object) -> str:
    """A key as the error names it: quoted when blank, padded or unprintable ("\\r"), so the
    message says which key it is rather than printing an invisible one."""
    text = str(part)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


# -- environment variable names -------------------------------------------------------------
def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    # only unions look inside: a list or mapping of models is one value (JSON in a variable)
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def setting_paths(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, str]:
    """Every settings path (``kafka.topics.metrics``) -> "section", "mapping" or "value".

    >>> paths = setting_paths()
    >>> paths["policy.dry_run"], paths["kafka.topics"], paths["executors.webhook_urls"]
    ('value', 'section', 'mapping')
    """
    out: dict[str, str] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _model_of(info.annotation)
        if sub is not None:
            out[path] = "section"
            out.update(setting_paths(sub, f"{path}."))
        else:
            mapping = typing.get_origin(info.annotation) in (dict, Mapping)
            out[path] = "mapping" if mapping else "value"
    return out


@functools.cache
def _env_names() -> tuple[frozenset[str], tuple[str, ...]]:
    paths = setting_paths()
    names = {"SELFHEAL_" + p.replace(".", "__").upper(): kind for p, kind in paths.items()}
    # a mapping (``executors.webhook_urls``) takes its keys as nested names below it
    open_prefixes = tuple(n + "__" for n, kind in names.items() if kind == "mapping")
    return frozenset(names), open_prefixes


def check_environment(environ: Mapping[str, str]) -> None:
    """Raise ``ConfigError`` for a ``SELFHEAL_`` variable that names no setting.

    A misspelled variable would otherwise be ignored without a word (a typo in
    ``SELFHEAL_POLICY__DRY_RUN`` leaves automatic repair on).

    >>> check_environment({"SELFHEAL_POLICY__DRY_RUN": "true", "HOME": "/root"})
    >>> try:
    ...     check_environment({"SELFHEAL_POLCY__DRY_RUN": "true"})
    ... except ConfigError as exc:
    ...     print(exc.message)
    unknown environment variable (did you mean SELFHEAL_POLICY__DRY_RUN?)
    """
    known, open_prefixes = _env_names()
    for var in sorted(environ):
        name = var.upper()
        if not name.startswith("SELFHEAL_"):
            continue
        if name in known or name.startswith(open_prefixes):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else " (selfheal schema lists the settings)"
        raise ConfigError(var, f"unknown environment variable{hint}")
