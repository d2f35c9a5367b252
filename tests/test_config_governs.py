"""Restored state under a CHANGED configuration: the running process's config governs.

A process restarted with other policy or validation settings restores its partitions'
snapshots. What the snapshot holds is what happened (when a repair ran, how often a rung
failed); how long a window lasts, how many attempts a rung gets and how large a bound is
come from the running configuration only.
"""

from __future__ import annotations

import json
from typing import Any

from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Decision,
    RepairAction,
)

from tests.test_policy import T0, anomaly

HC = AnomalyKind.HEALTH_CHECK_FAILED
RESTART_ACTION = RepairAction.RESTART


def _engine(rules: list[dict[str, Any]], **glob: Any) -> PolicyEngine:
    return PolicyEngine(PolicyConfig.model_validate({"rules": rules, **glob}))


def _restarted(old: PolicyEngine, rules: list[dict[str, Any]], **glob: Any) -> PolicyEngine:
    """A new process under other settings that restores ``old``'s state (via JSON)."""
    new = _engine(rules, **glob)
    new.load_state(json.loads(json.dumps(old.to_state())))
    return new


def _brief(ds: list[Decision]) -> list[tuple[str, str, str | None]]:
    return [
        (d.action.value, d.status.value, d.suppressed_by.value if d.suppressed_by else None)
        for d in ds
    ]


RESTART = [{"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}]


def test_a_shorter_verification_window_judges_a_restored_repair() -> None:
    old = _engine(RESTART, verification_window_seconds=600)
    assert _brief(old.decide(anomaly(T0))) == [("restart", "execute", None)]
    old.observe(ConditionReport("checkout-1", HC, T0 + 10, False))
    new = _restarted(old, RESTART, verification_window_seconds=120)
    verifications, _ = new.tick(T0 + 200)
    # judged at the running window's end (T0 + 120), not the snapshot's (T0 + 600)
    assert [(v.success, v.ts, v.duration_seconds) for v in verifications] == [
        (True, T0 + 120, 120.0)
    ]


def test_a_shorter_cooldown_governs_a_restored_cooldown() -> None:
    old = _engine(RESTART, default_cooldown_seconds=3600)
    old.decide(anomaly(T0))
    old.observe(ConditionReport("checkout-1", HC, T0 + 10, False))
    new = _restarted(old, RESTART, default_cooldown_seconds=60)
    # the repair worked (T0 + 300); the entity fails again later: 60 s of cooldown are over
    assert _brief(new.decide(anomaly(T0 + 400))) == [("restart", "execute", None)]
    # and a longer one holds for its full length
    longer = _restarted(old, RESTART, default_cooldown_seconds=7200)
    assert _brief(longer.decide(anomaly(T0 + 4000))) == [("restart", "suppressed", "cooldown")]
    # a snapshot written before cooldowns kept their start and rule keeps its deadline
    legacy = _engine(RESTART, default_cooldown_seconds=60)
    legacy.load_state({**old.to_state(), "cooldowns": [["checkout-1", "restart", T0 + 3600]]})
    assert legacy._state.cooldowns.until("checkout-1", RESTART_ACTION, T0 + 400) == T0 + 3600


def test_fewer_attempts_per_rung_climb_a_restored_ladder() -> None:
    def ladder(attempts: int) -> list[dict[str, Any]]:
        steps = [{"action": "restart"}, {"action": "scale_up"}]
        return [{**RESTART[0], "actions": steps, "max_attempts": attempts}]

    old = _engine(ladder(3))
    old.decide(anomaly(T0))
    # the condition recurs: the first restart failed, the rung has two attempts left
    assert _brief(old.decide(anomaly(T0 + 100))) == [("restart", "suppressed", "cooldown")]
    new = _restarted(old, ladder(1))
    # one attempt per rung now: the failed restart used it, the ladder goes on
    assert _brief(new.decide(anomaly(T0 + 200))) == [("scale_up", "execute", None)]
