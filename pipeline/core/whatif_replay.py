"""What-if: replay recorded anomalies through a policy and compare two policies (pure).

Recorded anomaly events carry no condition reports, so the condition is derived from the
anomaly stream: an (entity, kind) is present from each of its anomalies until a verification
window passes without another one (``DerivedConditions``). A repair whose anomaly keeps coming
back therefore fails and the ladder climbs, as it would have live; an entity whose anomalies
stop recovers one window after the last one.

>>> from selfheal.pipeline.core.policy_config import PolicyConfig
>>> from selfheal.pipeline.kernel.types import AnomalyKind, Finding, Severity
>>> cfg = PolicyConfig.model_validate({"rules": [{"name": "hc",
...     "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}]})
>>> def anomaly(ts):
...     f = Finding(ts=ts, entity="web-1", metric="ok", detector="rule",
...         kind=AnomalyKind.HEALTH_CHECK_FAILED, severity=Severity.CRITICAL, score=4,
...         threshold=3, value=0)
...     return Anomaly(id=f"a{ts:g}", finding=f)
>>> run = replay_policy(cfg, [anomaly(0.0), anomaly(120.0)])
>>> [(d.action.value, d.status.value) for d in run.decisions()]
[('restart', 'execute'), ('escalate', 'execute'), ('escalate', 'execute')]
>>> summary(run)["repairs"], summary(run)["escalations"]
({'restart': 1}, 1)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.schemas import parse_ts
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    Decision,
    DecisionStatus,
    Finding,
    Forecast,
    RepairAction,
    Severity,
    Verification,
)

#: type prefix of the anomaly CloudEvents (``io.selfheal.anomaly.<kind>``)
ANOMALY_TYPE = "io.selfheal.anomaly."
#: differing decisions listed in full
MAX_LISTED = 10


class EventError(ValueError):
    """A recorded event that is not a usable anomaly CloudEvent (``field`` names why)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def anomaly_from_event(event: Any) -> Anomaly | None:
    """The anomaly an ``io.selfheal.anomaly.*`` CloudEvent carries; None for other events."""
    if not isinstance(event, dict):
        raise EventError("event", "not a JSON object")
    kind_type = event.get("type")
    if not isinstance(kind_type, str) or not kind_type.startswith(ANOMALY_TYPE):
        return None
    data = event.get("data")
    if not isinstance(data, dict):
        raise EventError("data", "missing or not an object")
    try:
        fc = data.get("forecast")
        finding = Finding(
            ts=parse_ts(event["time"]),
            entity=str(data["entity"]),
            metric=str(data["metric"]),
            detector=str(data["detector"]),
            kind=AnomalyKind(data["kind"]),
            severity=Severity(data["severity"]),
            score=float(data["score"]),
            threshold=float(data["threshold"]),
            value=float(data["value"]),
            evidence=dict(data.get("evidence") or {}),
            forecast=None
            if fc is None
            else Forecast(
                float(fc["eta_seconds"]), float(fc["horizon_seconds"]), float(fc["confidence"])
            ),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
        )
    except KeyError as exc:
        raise EventError(f"data.{exc.args[0]}", "missing") from exc
    except (TypeError, ValueError) as exc:
        raise EventError("data", str(exc)) from exc
    return Anomaly(id=str(event.get("id") or ""), finding=finding)


class DerivedConditions:
    """Condition presence from the anomaly stream alone (no detector state was recorded).

    An (entity, kind) is present from each anomaly until ``window`` seconds pass without
    another one; it is then reported clear at the end of that quiet window.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._last: dict[tuple[str, AnomalyKind], float] = {}

    def seen(self, anomaly: Anomaly) -> ConditionReport:
        f = anomaly.finding
        self._last[(f.entity, f.kind)] = f.ts
        return ConditionReport(f.entity, f.kind, f.ts, True)

    def cleared_before(self, ts: float) -> list[ConditionReport]:
        """Clear reports for every condition quiet for a whole window before ``ts``."""
        due = sorted(
            (last + self.window, entity, kind)
            for (entity, kind), last in self._last.items()
            if last + self.window < ts
        )
        for _, entity, kind in due:
            del self._last[(entity, kind)]
        return [ConditionReport(entity, kind, at, False) for at, entity, kind in due]


@dataclass
class Step:
    """What one anomaly led to (decisions it caused and closures that fell due before it)."""

    anomaly_id: str
    decisions: list[Decision] = field(default_factory=list)


@dataclass
class Run:
    steps: list[Step] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)
    tail: list[Decision] = field(default_factory=list)  #: closures after the last anomaly

    def decisions(self) -> list[Decision]:
        return [d for s in self.steps for d in s.decisions] + self.tail


def order_anomalies(anomalies: Iterable[Anomaly]) -> list[Anomaly]:
    """Event-time order, duplicates (same id, at-least-once delivery) dropped."""
    unique = {a.id: a for a in anomalies}
    return sorted(unique.values(), key=lambda a: (a.finding.ts, a.id))


def replay_policy(
    config: PolicyConfig, anomalies: Sequence[Anomaly], engine: PolicyEngine | None = None
) -> Run:
    """Decide ``anomalies`` (in event-time order) with a fresh engine of ``config``."""
    eng = engine if engine is not None else PolicyEngine(config)
    cond = DerivedConditions(config.verification_window_seconds)
    run = Run()
    for a in order_anomalies(anomalies):
        step = Step(a.id)
        for report in cond.cleared_before(a.finding.ts):
            _observe(eng, report, run, step)
        verifications, decisions = eng.tick(a.finding.ts)
        run.verifications.extend(verifications)
        step.decisions.extend(decisions)
        step.decisions.extend(eng.decide(a))
        _observe(eng, cond.seen(a), run, step)
        run.steps.append(step)
    end = (
        max((a.finding.ts for a in anomalies), default=0.0) + 2 * config.verification_window_seconds
    )
    tail = Step("")
    for report in cond.cleared_before(end):
        _observe(eng, report, run, tail)
    verifications, decisions = eng.tick(end + max(config.storm_window_seconds, 1.0))
    run.verifications.extend(verifications)
    run.tail = tail.decisions + decisions
    return run


def _observe(eng: PolicyEngine, report: ConditionReport, run: Run, step: Step) -> None:
    if report.entity not in eng.watched:
        return
    eng.observe(report)
    verifications, decisions = eng.drain()
    run.verifications.extend(verifications)
    step.decisions.extend(decisions)


def is_repair(d: Decision) -> bool:
    return d.action is not RepairAction.ESCALATE and d.status in (
        DecisionStatus.EXECUTE,
        DecisionStatus.DRY_RUN,
    )


def is_new_escalation(d: Decision) -> bool:
    """A page to a human (not its update or resolution, not a suppressed one)."""
    p = d.params
    return (
        d.action is RepairAction.ESCALATE
        and d.status is not DecisionStatus.SUPPRESSED
        and not p.get("resolved")
        and not p.get("update")
    )


def summary(run: Run) -> dict[str, Any]:
    """Counts a reviewer compares: repairs by action and rule, escalations, storms, holds."""
    ds = run.decisions()
    repairs = Counter(d.action.value for d in ds if is_repair(d))
    by_rule = Counter(f"{d.rule}:{d.action.value}" for d in ds if is_repair(d))
    suppressed = Counter(
        d.suppressed_by.value for d in ds if d.suppressed_by is not None and d.rule
    )
    escalations = [d for d in ds if is_new_escalation(d)]
    return {
        "repairs": dict(sorted(repairs.items())),
        "repairs_by_rule": dict(sorted(by_rule.items())),
        "escalations": sum(1 for d in escalations if not d.params.get("storm")),
        "storms": sum(1 for d in escalations if d.params.get("storm")),
        "held": suppressed.get("storm", 0),
        "pending_approval": sum(1 for d in ds if d.status is DecisionStatus.PENDING_APPROVAL),
        "suppressed": dict(sorted(suppressed.items())),
        "verified": {
            "success": sum(1 for v in run.verifications if v.success),
            "failure": sum(1 for v in run.verifications if not v.success),
        },
    }


def signature(d: Decision) -> str:
    """A decision as a reviewer reads it in a diff."""
    text = f"{d.rule or '-'}: {d.action.value} {d.status.value}"
    return text + (f" ({d.suppressed_by.value})" if d.suppressed_by is not None else "")


@dataclass
class Difference:
    anomaly_id: str
    ts: float
    entity: str
    baseline: list[str]
    candidate: list[str]


def differences(base: Run, cand: Run, anomalies: Sequence[Anomaly]) -> list[Difference]:
    """Anomalies whose decisions differ between the two runs, in event-time order."""
    by_id = {a.id: a for a in anomalies}
    out: list[Difference] = []
    for b, c in zip(base.steps, cand.steps, strict=True):
        bs, cs = [signature(d) for d in b.decisions], [signature(d) for d in c.decisions]
        if bs != cs:
            f = by_id[b.anomaly_id].finding
            out.append(Difference(b.anomaly_id, f.ts, f.entity, bs, cs))
    return out
