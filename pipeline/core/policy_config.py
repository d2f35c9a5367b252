"""Policy configuration: pydantic v2 models loaded from YAML (the edge of the policy layer).

The engine (``selfheal.pipeline.core.policy``) only reads these validated models; invalid input
raises
``pydantic.ValidationError`` naming the offending field (the CLI maps it to exit code 2).

>>> cfg = PolicyConfig.model_validate({"rules": [{"name": "leak", "kinds": ["memory_leak"],
...     "predictive": True, "forecast": {"eta_below_seconds": 1800},
...     "actions": [{"action": "restart"}, {"action": "scale_up", "params": {"replicas": 1}}]}]})
>>> [step.action.value for step in cfg.rules[0].actions]
['restart', 'scale_up']
>>> cfg.budget.max_repairs, cfg.budget.window_seconds, cfg.verification_window_seconds
(10, 600.0, 300.0)
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from selfheal.pipeline.kernel.types import Anomaly, AnomalyKind, RepairAction, Severity

#: the rules shipped with the package (``pipeline/default_policy.yaml``)
DEFAULT_POLICY_PATH = Path(__file__).resolve().parent / "default_policy.yaml"

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ActionStep(BaseModel):
    """One rung of a rule's ladder: an action, its parameters and per-action overrides."""

    model_config = _STRICT

    action: RepairAction
    params: dict[str, Any] = Field(default_factory=dict)
    #: ``None`` inherits the rule's ``requires_approval``
    requires_approval: bool | None = None
    #: ``None`` inherits the rule's ``max_attempts``
    max_attempts: int | None = Field(default=None, ge=1)
    #: ``None`` inherits the rule's ``cooldown_seconds``
    cooldown_seconds: float | None = Field(default=None, ge=0)

    @field_validator("action")
    @classmethod
    def _no_explicit_escalate(cls, value: RepairAction) -> RepairAction:
        # escalation is what happens after the last rung (controlled by Rule.escalate), so an
        # explicit escalate rung would be escalated twice
        if value is RepairAction.ESCALATE:
            raise ValueError("escalate is implicit after the last rung; set rule.escalate instead")
        return value


class ForecastCondition(BaseModel):
    """Match only findings carrying a forecast whose breach is nearer than ``eta_below_seconds``."""

    model_config = _STRICT

    eta_below_seconds: float = Field(gt=0)


class Rule(BaseModel):
    """Anomalies matching every condition get this rule's ladder of actions."""

    model_config = _STRICT

    name: str = Field(min_length=1)
    kinds: list[AnomalyKind] = Field(min_length=1, validation_alias=AliasChoices("kinds", "kind"))
    min_severity: Severity = Field(
        default=Severity.INFO, validation_alias=AliasChoices("min_severity", "severity")
    )
    #: shell-style glob on the entity name (``fnmatch.fnmatchcase``)
    entity: str = "*"
    #: equality on ``finding.labels`` (all must match)
    labels: dict[str, str] = Field(default_factory=dict)
    forecast: ForecastCondition | None = None
    #: predictive rules fire on forecasts (they only match findings that carry one)
    predictive: bool = False
    #: only anomalies attributed to a deploy on the entity (``core/changes.py``: it began soon
    #: after the change and the unchanged replicas do not show it); a rollback rung then names
    #: the previous version and the change
    after_change: bool = False
    actions: list[ActionStep] = Field(min_length=1)
    #: after the last rung failed: escalate (True) or give up silently (False, still audited)
    escalate: bool = True
    dry_run: bool = False
    requires_approval: bool = False
    cooldown_seconds: float | None = Field(default=None, ge=0)
    dedup_seconds: float | None = Field(default=None, ge=0)
    max_attempts: int = Field(default=1, ge=1)
    #: keep evaluating later rules after this one matched
    continue_matching: bool = False
    #: ``learned``: try the ladder's actions best-first by learned success
    #: (``selfheal.pipeline.core.effectiveness``); ``configured``: as listed
    order: Literal["configured", "learned"] = "configured"
    #: with ``order: learned``, outcomes an action needs before it can be demoted
    min_tries: int = Field(default=3, ge=1)

    @field_validator("kinds", mode="before")
    @classmethod
    def _one_kind_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class BudgetConfig(BaseModel):
    """Fleet-wide cap on automatic repairs in a sliding event-time window."""

    model_config = _STRICT

    max_repairs: int = Field(default=10, ge=0)
    window_seconds: float = Field(default=600.0, gt=0)


class LearningConfig(BaseModel):
    """The Beta prior of learned repair effectiveness (pseudo-counts of outcomes), and how
    many outcomes of one entity count toward its service and the fleet."""

    model_config = _STRICT

    prior_successes: float = Field(default=1.0, gt=0)
    prior_failures: float = Field(default=1.0, gt=0)
    #: per (kind, action): an entity's newest this many outcomes count (a busy or flapping
    #: replica does not speak for its whole service)
    max_outcomes_per_entity: int = Field(default=5, ge=1, le=1000)


class PolicyConfig(BaseModel):
    """Global policy settings and the ordered rule list (first match wins per anomaly)."""

    model_config = _STRICT

    #: shadow mode: decide and audit everything, execute nothing
    dry_run: bool = False
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    #: more than this many distinct entities needing the same action within the window is a storm
    storm_threshold: int = Field(default=5, ge=1)
    storm_window_seconds: float = Field(default=300.0, gt=0)
    verification_window_seconds: float = Field(default=300.0, gt=0)
    default_cooldown_seconds: float = Field(default=300.0, ge=0)
    #: recurrences this soon after a repair are the same finding (the repair has not acted yet)
    default_dedup_seconds: float = Field(default=60.0, ge=0)
    #: bounds on the engine state (LRU eviction beyond)
    max_tracked_entities: int = Field(default=10_000, ge=1)
    max_seen_anomalies: int = Field(default=50_000, ge=1)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        names = [rule.name for rule in self.rules]
        dupes = sorted({name for name in names if names.count(name) > 1})
        if dupes:
            raise ValueError(f"rules: duplicate rule names {dupes}")
        for rule in self.rules:
            dedup = (
                rule.dedup_seconds if rule.dedup_seconds is not None else self.default_dedup_seconds
            )
            if dedup >= self.verification_window_seconds:
                raise ValueError(
                    f"rules.{rule.name}.dedup_seconds ({dedup}) must be shorter than "
                    f"verification_window_seconds ({self.verification_window_seconds})"
                )
        return self

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def cooldown_seconds(config: PolicyConfig, rule: Rule | None, step: ActionStep | None) -> float:
    """How long ``rule``'s ``step`` holds its (entity, action) after it acted: the step's
    cooldown, else the rule's, else the policy default (also for a rule no longer configured)."""
    if step is not None and step.cooldown_seconds is not None:
        return step.cooldown_seconds
    if rule is not None and rule.cooldown_seconds is not None:
        return rule.cooldown_seconds
    return config.default_cooldown_seconds


def approval_required(rule: Rule, action: RepairAction, rung: int) -> bool:
    """Whether ``rule`` asks a human before ``action`` tried at ``rung``: the rung's own
    setting (its step, else the first step of that action), else the rule's."""
    steps = rule.actions
    step = steps[rung] if rung < len(steps) and steps[rung].action is action else None
    step = step or next((s for s in steps if s.action is action), None)
    if step is not None and step.requires_approval is not None:
        return step.requires_approval
    return rule.requires_approval


def load_policy(source: str | Path | None = None) -> PolicyConfig:
    """Load and validate a policy YAML file (``None`` = the shipped default policy).

    Raises ``pydantic.ValidationError`` for invalid content and ``OSError`` when unreadable.
    """
    path = Path(source) if source is not None else DEFAULT_POLICY_PATH
    return parse_policy(path.read_text(encoding="utf-8"))


def parse_policy(text: str) -> PolicyConfig:
    """Validate policy YAML text (an empty document is the empty policy)."""
    data = yaml.safe_load(text)
    return PolicyConfig.model_validate({} if data is None else data)


def rule_matches(rule: Rule, anomaly: Anomaly, after_change: bool = False) -> bool:
    """Kind, minimum severity, entity glob, label equality, the forecast condition, and for an
    ``after_change`` rule, that the anomaly followed a deploy (``after_change``)."""
    f = anomaly.finding
    if f.kind not in rule.kinds or f.severity.rank < rule.min_severity.rank:
        return False
    if rule.after_change and not after_change:
        return False
    if not fnmatch.fnmatchcase(f.entity, rule.entity):
        return False
    if any(f.labels.get(key) != value for key, value in rule.labels.items()):
        return False
    if rule.predictive and f.forecast is None:
        return False
    forecast = rule.forecast
    return forecast is None or (
        f.forecast is not None and f.forecast.eta_seconds < forecast.eta_below_seconds
    )
