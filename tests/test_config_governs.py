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
)

from tests.test_policy import T0, anomaly

HC = AnomalyKind.HEALTH_CHECK_FAILED


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
