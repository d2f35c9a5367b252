"""``order: learned`` keeps the ladder's safety: a step that asks a person, or a protective
action, stays where it was configured; only automatic repairs are ranked.

A step that requires approval is never learned (only what ran on its own is, and an approved
repair is not), so it would stay "not tried" for ever and be put ahead of every ranked step:
each new incident would wait on a person for a rollback while the restart that works every
time waits behind it. A protective action (circuit break...) ranked behind a repair would be
out of reach of a caller left to its cause (it may take protective actions only).
"""

from __future__ import annotations

from typing import Any

from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    Decision,
    DecisionStatus,
    Finding,
    Severity,
)

KIND = AnomalyKind.QUEUE_HIGH


def _engine(actions: list[dict[str, Any]]) -> PolicyEngine:
    rule = {"name": "queue", "kinds": ["queue_high"], "order": "learned", "min_tries": 2}
    return PolicyEngine(PolicyConfig.model_validate({"rules": [{**rule, "actions": actions}]}))


def _anomaly(entity: str, ts: float) -> Anomaly:
    f = Finding(ts=ts, entity=entity, metric="queue_depth", detector="rule", kind=KIND,
                severity=Severity.WARNING, score=0.9, threshold=0.8, value=900)  # fmt: skip
    return Anomaly(id=f"{entity}@{ts:g}", finding=f)


def _first(eng: PolicyEngine, entity: str, t: float) -> Decision:
    """An incident's first decision; whatever runs clears the backlog at once."""
    (first, *_) = eng.decide(_anomaly(entity, t))
    if first.status is DecisionStatus.EXECUTE:
        eng.observe(ConditionReport(entity, KIND, t + 15, False))
    eng.tick(t + 2000)
    return first


def test_an_approval_step_is_not_promoted_ahead_of_a_restart_that_works() -> None:
    eng = _engine([{"action": "restart"}, {"action": "rollback", "requires_approval": True}])
    firsts = [_first(eng, "orders-1", 10_000.0 * (i + 1)) for i in range(6)]
    rec = eng.learning.get("queue_high", "restart", "orders")
    assert rec is not None and rec.successes >= 2  # restart ranked: it worked every time
    assert [(d.action.value, d.status.value) for d in firsts] == [("restart", "execute")] * 6


def test_a_protective_step_keeps_its_configured_place() -> None:
    eng = _engine([{"action": "circuit_break"}, {"action": "restart"}])
    for i in range(6):  # the breaker never clears the condition, the restart always does
        t = 10_000.0 * (i + 1)
        for k in range(2):
            ds = eng.decide(_anomaly("orders-1", t + 400 * k))
            acted = [d for d in ds if d.status is DecisionStatus.EXECUTE]
            for d in acted:
                ok = d.action.value == "restart"
                eng.observe(ConditionReport("orders-1", KIND, t + 400 * k + 15, not ok))
            if ds and ds[0].action.value == "restart":
                break
        eng.tick(t + 3000)
    last = eng.decide(_anomaly("orders-1", 100_000.0))
    assert last[0].action.value == "circuit_break"


def test_a_ladder_of_pinned_steps_only_says_so() -> None:
    eng = _engine([{"action": "circuit_break"}, {"action": "restart", "requires_approval": True}])
    (first, *_) = eng.decide(_anomaly("orders-1", 10_000.0))
    assert first.action.value == "circuit_break"
    assert first.explanation.endswith(
        "learned order: circuit_break, restart kept in place (approval or protective)"
    )
