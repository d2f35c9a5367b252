"""Restored state under a CHANGED configuration: the running process's config governs.

A process restarted with other policy or validation settings restores its partitions'
snapshots. What the snapshot holds is what happened (when a repair ran, how often a rung
failed); how long a window lasts, how many attempts a rung gets and how large a bound is
come from the running configuration only.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Decision,
    Envelope,
    RejectReason,
    RepairAction,
)

from tests.spine_helpers import settings_for
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


def _ladder(*actions: str, attempts: int = 1) -> list[dict[str, Any]]:
    steps = [{"action": a} for a in actions]
    return [{**RESTART[0], "actions": steps, "max_attempts": attempts}]


def test_a_failed_action_removed_from_the_ladder_does_not_use_up_the_new_rung() -> None:
    old = _engine(_ladder("restart", "scale_up"))
    assert _brief(old.decide(anomaly(T0))) == [("restart", "execute", None)]
    new = _restarted(old, _ladder("scale_up"))
    # the restart failed; the running ladder's only rung, scale_up, was never tried
    assert _brief(new.decide(anomaly(T0 + 100))) == [("scale_up", "execute", None)]


def test_a_reordered_ladder_tries_its_rung_not_the_failed_action_again() -> None:
    old = _engine(_ladder("restart", "scale_up", attempts=2))
    old.decide(anomaly(T0))
    assert _brief(old.decide(anomaly(T0 + 100))) == [("restart", "suppressed", "cooldown")]
    new = _restarted(old, _ladder("scale_up", "restart", attempts=2))
    # the restart's failure counts for restart, not for the scale_up now first: two tries
    assert _brief(new.decide(anomaly(T0 + 200))) == [("scale_up", "execute", None)]
    assert _brief(new.decide(anomaly(T0 + 300))) == [("scale_up", "suppressed", "cooldown")]


def test_a_learned_order_follows_actions_not_positions_of_a_changed_ladder() -> None:
    def learned(*actions: str) -> list[dict[str, Any]]:
        return [{**_ladder(*actions)[0], "order": "learned", "min_tries": 1}]

    old = _engine(learned("restart", "scale_up"))
    for ok in (True, True, True):  # scale_up worked for this service, restart did not
        old.learning.record("health_check_failed", "scale_up", "checkout", ok, 10.0)
        old.learning.record("health_check_failed", "restart", "checkout", not ok, None)
    assert _brief(old.decide(anomaly(T0))) == [("scale_up", "execute", None)]
    new = _restarted(old, learned("scale_up", "restart"))
    # scale_up failed: the incident's order (scale_up, then restart) goes on with restart
    assert _brief(new.decide(anomaly(T0 + 100))) == [("restart", "execute", None)]
    # and when the restart fails too, the ladder is done (scale_up was tried first)
    assert [d.action.value for d in new.decide(anomaly(T0 + 300))] == ["escalate"]


def test_a_removed_rule_leaves_no_lock_on_its_entity() -> None:
    latency = {"name": "lat", "kinds": ["latency_anomaly"], "actions": [{"action": "scale_up"}]}
    old = _engine([*RESTART, latency])
    assert _brief(old.decide(anomaly(T0))) == [("restart", "execute", None)]
    slow = AnomalyKind.LATENCY_ANOMALY
    held = [("scale_up", "suppressed", "repair_in_progress")]
    assert _brief(old.decide(anomaly(T0 + 10, kind=slow))) == held
    # the restart's rule is gone: its open verification no longer holds the entity
    new = _restarted(old, [latency])
    assert _brief(new.decide(anomaly(T0 + 20, kind=slow))) == [("scale_up", "execute", None)]


def _pipe(**validation: Any) -> Pipeline:
    s = settings_for("cg", "unused:9092", partitions=1, validation=validation)
    return Pipeline(s, lambda: PolicyEngine(s.policy), live=False)


def _feed(pipe: Pipeline, records: list[dict[str, Any]]) -> list[RejectReason]:
    envs = [Envelope("cg.metrics", 0, i, orjson.dumps(r), None) for i, r in enumerate(records)]
    # a replay pipeline holds records until event time confirms them: flushed here
    rejects = pipe.process(envs, None).rejects + pipe.final_tick().rejects
    return [r.reason for r in rejects]


def _restart(old: Pipeline, new: Pipeline) -> None:
    _, state = snapshots.decode(snapshots.encode(old.stages[0], {}))
    snapshots.restore(new.stage(0), state)


def _sample(ts: float, pod: int) -> dict[str, Any]:
    return {"ts": ts, "entity": "api", "metric": "queue_depth", "value": 1.0,
            "labels": {"pod": f"p{pod}"}}  # fmt: skip


def test_a_lower_label_set_cap_bounds_restored_series() -> None:
    old = _pipe(max_label_sets_per_series=8)
    assert _feed(old, [_sample(T0, pod) for pod in range(8)]) == []
    new = _pipe(max_label_sets_per_series=2)
    _restart(old, new)
    rejects = _feed(new, [_sample(T0 + 1, pod) for pod in range(8)])
    assert rejects.count(RejectReason.LABEL_CARDINALITY) == 6


def test_a_smaller_burst_bounds_restored_rate_buckets() -> None:
    old = _pipe(burst=100, rate_per_second=1)
    assert _feed(old, [{"ts": T0, "entity": "api", "metric": "m", "value": 1.0}]) == []
    new = _pipe(burst=5, rate_per_second=1)
    _restart(old, new)
    # a burst at the snapshot's last event time: no refill, the running burst is the cap
    rejects = _feed(new, [{"ts": T0, "entity": "api", "metric": "m", "value": 1.0}] * 20)
    assert rejects.count(RejectReason.RATE_LIMITED) == 15


def _approval(required: bool) -> list[dict[str, Any]]:
    steps = [{"action": "restart"}, {"action": "scale_up"}]
    return [{**RESTART[0], "requires_approval": required, "actions": steps}]


def test_an_open_approval_request_is_an_untried_rung_once_approval_is_off() -> None:
    old = _engine(_approval(True))
    (ask,) = old.decide(anomaly(T0))
    assert _brief([ask]) == [("restart", "pending_approval", None)]
    new = _restarted(old, _approval(False))
    # nothing ran and the running config needs no approval: the restart runs now, on its own
    # rung (not cooling down from the request, not climbed past when the window ends), after
    # the request's withdrawal (test_withdrawn_approval.py)
    withdrawn, run = new.decide(anomaly(T0 + 100))
    assert _brief([withdrawn, run]) == [
        ("restart", "suppressed", "withdrawn"),
        ("restart", "execute", None),
    ]
    assert "rung 1/2, attempt 1" in run.explanation
    assert list(new.learning.open) == [run.id]
    # the restart fails: only then does the ladder climb
    new.observe(ConditionReport("checkout-1", HC, T0 + 170, True))
    assert [v.success for v in new.drain()[0]] == [False]
    (scale,) = new.decide(anomaly(T0 + 200))
    assert _brief([scale]) == [("scale_up", "execute", None)]
    # still required after the restart: the request stays open (one request per attempt)
    same = _restarted(old, _approval(True))
    assert _brief(same.decide(anomaly(T0 + 100))) == [("restart", "suppressed", "duplicate")]


def test_a_rungs_own_approval_switched_off_leaves_its_request_untried() -> None:
    def rules(required: bool) -> list[dict[str, Any]]:
        steps = [{"action": "restart", "requires_approval": required}, {"action": "scale_up"}]
        return [{**RESTART[0], "actions": steps}]

    old = _engine(rules(True))
    assert _brief(old.decide(anomaly(T0))) == [("restart", "pending_approval", None)]
    new = _restarted(old, rules(False))
    assert _brief(new.decide(anomaly(T0 + 100)))[1:] == [("restart", "execute", None)]


def _silent(escalate: bool) -> list[dict[str, Any]]:
    return [{**RESTART[0], "escalate": escalate}]


def test_a_case_given_up_silently_pages_once_escalation_is_enabled() -> None:
    old = _engine(_silent(False))
    assert _brief(old.decide(anomaly(T0))) == [("restart", "execute", None)]
    # the restart failed; the ladder is exhausted and escalation is off: silent
    assert _brief(old.decide(anomaly(T0 + 100))) == [("restart", "suppressed", "max_attempts")]
    new = _restarted(old, _silent(True))
    # still failing under a config that escalates: one page, then duplicates
    (page,) = new.decide(anomaly(T0 + 200))
    assert _brief([page]) == [("escalate", "execute", None)]
    assert page.params["tried"] == ["restart"] and page.params["resolved"] is False
    assert [row["id"] for row in new.open_escalations()] == [page.id]
    assert _brief(new.decide(anomaly(T0 + 300))) == [("escalate", "suppressed", "duplicate")]
    # released by an operator, the ladder starts over
    assert [d.params["resolved"] for d in new.release_escalation(page.id, "sre") or []] == [True]
    # a snapshot from before silent give-ups were marked pages as well
    legacy_state = old.to_state()
    for case in legacy_state["cases"]:
        del case["silent"]
    legacy = _engine(_silent(True))
    legacy.load_state(json.loads(json.dumps(legacy_state)))
    assert _brief(legacy.decide(anomaly(T0 + 200))) == [("escalate", "execute", None)]
    # unchanged config: the case stays silent
    quiet = _restarted(old, _silent(False))
    assert _brief(quiet.decide(anomaly(T0 + 200))) == [("restart", "suppressed", "max_attempts")]
