"""Ladders, condition-judged verification and the storm hold, through the real stage.

Samples go through ``Pipeline`` (decoder, guard, the shipped rule detectors, the default
policy) in event time, batched unevenly, as a replay would; the assertions are what an
operator reads off the repair topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine, storm_entity
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    Decision,
    DecisionStatus,
    Envelope,
    Finding,
    FleetOutcome,
    FleetRequest,
    RepairAction,
    Severity,
    Suppression,
    Verification,
)

T0 = 1_795_842_000.0
EXECUTE = DecisionStatus.EXECUTE
MEM = "container_memory_working_set_bytes"


def replay(
    records: list[dict[str, Any]], batch: int = 37, policy: dict[str, Any] | None = None
) -> tuple[list[Decision], list[Verification], Pipeline]:
    over: dict[str, Any] = {"detection": {"models_enabled": False}}
    if policy:
        over["policy"] = policy
    s = load_settings(None, over)
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    topic = s.kafka.topics.metrics
    envs = [Envelope(topic, 0, i, orjson.dumps(r)) for i, r in enumerate(records)]
    outs: list[Outputs] = [
        pipe.process(envs[k : k + batch], None) for k in range(0, len(envs), batch)
    ]
    outs.append(pipe.final_tick())
    decisions = [d for o in outs for d in o.decisions]
    return decisions, [v for o in outs for v in o.verifications], pipe


def acted(decisions: list[Decision]) -> list[tuple[float, str, str]]:
    """(seconds since T0, action, status) of every decision that is not suppressed."""
    return [
        (round(d.ts - T0, 2), d.action.value, d.status.value)
        for d in decisions
        if d.status is not DecisionStatus.SUPPRESSED
    ]


def health(entity: str, start: float, end: float, ok: Callable[[float], bool], step: float = 10.0):
    n = int((end - start) / step)
    return [
        {
            "ts": T0 + start + step * i,
            "entity": entity,
            "metric": "health_check_ok",
            "value": 1.0 if ok(start + step * i) else 0.0,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("batch", [1, 37, 1000])
def test_health_checks_failing_two_hours_climb_the_default_ladder_and_escalate_once(
    batch: int,
) -> None:
    # failing for 2 h, healthy afterwards
    records = health("web-1", 0, 3 * 3600, lambda t: t >= 2 * 3600)
    decisions, verifications, _ = replay(records, batch)
    got = acted(decisions)
    assert got[:4] == [
        (30, "restart", "execute"),  # the 4th failed check
        (330, "restart", "execute"),  # the first restart failed: the condition stayed
        (630, "rollback", "pending_approval"),  # 2 failures climb to the next rung
        (1230, "escalate", "execute"),  # nobody approved and it still fails: escalate once
    ]
    # then nothing automatic for the rest of the two hours, one resolution after recovery
    assert got[4:] == [(7190 + 300, "escalate", "execute")]
    resolution = [d for d in decisions if d.status is EXECUTE][-1]
    assert resolution.params["resolved"] is True
    escalation = next(d for d in decisions if d.action is RepairAction.ESCALATE)
    assert resolution.params["escalation_id"] == escalation.id
    held = [d for d in decisions if d.status is DecisionStatus.SUPPRESSED and d.ts > T0 + 1230]
    assert held and {d.suppressed_by for d in held} == {Suppression.DUPLICATE}
    # both restarts verified as failed (condition still flagged), none as a success; the
    # approval request produces no verification (nothing ran)
    assert [(round(v.ts - T0), v.success) for v in verifications] == [(90, False), (390, False)]
    assert all("still flagged" in v.explanation for v in verifications)


def test_a_repair_that_clears_the_condition_is_verified_after_its_whole_window() -> None:
    records = health("web-1", 0, 1200, lambda t: t >= 80)  # healthy 50 s after the restart
    decisions, verifications, _ = replay(records)
    assert acted(decisions) == [(30, "restart", "execute")]
    assert [(round(v.ts - T0), v.success) for v in verifications] == [(330, True)]
    # a relapse inside the window is a failure, even if the signal looked healthy at first
    relapse = health("web-1", 0, 1200, lambda t: 80 <= t < 250)
    _, verifications, _ = replay(relapse)
    assert [v.success for v in verifications][:1] == [False]


def loop(entity: str, seconds: float, step: float = 10.0) -> list[dict[str, Any]]:
    # each iteration takes 12 s of a 10 s interval: critically slow the whole time
    return [
        {
            "ts": T0 + step * i,
            "entity": entity,
            "metric": "loop_iteration_seconds",
            "value": 12.0,
            "limit": 10.0,
        }
        for i in range(int(seconds / step))
    ]


def test_slow_loop_back_at_the_window_edge_counts_as_failure() -> None:
    # the detector re-reports every 300 s, exactly the verification window: the demo's users-1
    decisions, verifications, _ = replay(loop("users-1", 3600))
    scale_ups = [d for d in decisions if d.action is RepairAction.SCALE_UP and d.status is EXECUTE]
    assert len(scale_ups) == 1
    assert verifications and not any(v.success for v in verifications)
    escalations = [
        d for d in decisions if d.action is RepairAction.ESCALATE and d.status is EXECUTE
    ]
    assert len(escalations) == 1 and escalations[0].params["resolved"] is False


def test_findings_at_exactly_the_window_edge_fail_without_condition_reports() -> None:
    """Kinds no detector reports a condition for: a recurrence at the deadline is a failure."""
    eng = PolicyEngine(
        PolicyConfig.model_validate(
            {
                "rules": [
                    {
                        "name": "slow",
                        "kinds": ["loop_slow"],
                        "max_attempts": 100,
                        "actions": [{"action": "scale_up"}],
                    }
                ]
            }
        )
    )
    verifications: list[Verification] = []
    for i in range(12):
        ts = T0 + 300 * i
        eng.decide(_finding(ts, "users-1", AnomalyKind.LOOP_SLOW))
        verifications += eng.tick(ts)[0]  # a tick at the deadline itself closes nothing
    verifications += eng.tick(T0 + 12 * 300)[0]
    assert len(verifications) == 11 and not any(v.success for v in verifications)


def _finding(ts: float, entity: str, kind: AnomalyKind) -> Anomaly:
    f = Finding(
        ts=ts,
        entity=entity,
        metric="m",
        detector="rule",
        kind=kind,
        severity=Severity.CRITICAL,
        score=1.2,
        threshold=1.0,
        value=12.0,
    )
    return Anomaly(id=f"{entity}/{kind.value}/{ts}", finding=f)


def memory(entities: int, start: float, end: float, ratio: Callable[[float], float]):
    out = []
    t = start
    while t < end:
        for e in range(entities):
            out.append(
                {
                    "ts": T0 + t + e * 0.01,
                    "entity": f"svc-{e:02d}",
                    "metric": MEM,
                    "value": ratio(t) * 1e9,
                    "limit": 1e9,
                }
            )
        t += 15.0
    return out


def test_storm_holds_every_entity_escalates_once_and_ends_after_clearing() -> None:
    # 50 entities at 97 % memory for 50 minutes, then back to 50 %
    records = memory(50, 0, 3600, lambda t: 0.97 if t < 3000 else 0.5)
    decisions, _, _ = replay(records, batch=500)
    firing = [
        d
        for d in decisions
        if d.action is RepairAction.ESCALATE and d.status is EXECUTE and not d.params["resolved"]
    ]
    first = [d for d in firing if not d.params.get("update")]
    assert len(first) == 1 and first[0].entity == storm_entity(RepairAction.RESTART)
    storm = first[0]
    # only the needs before the storm was known were repaired: none while it held
    restarts = [d for d in decisions if d.action is RepairAction.RESTART and d.status is EXECUTE]
    assert len(restarts) == 5 and all(d.ts < storm.ts for d in restarts)
    assert not [d for d in decisions if d.status is EXECUTE and d.action is RepairAction.SCALE_UP]
    # the one escalation is updated (same escalation id), listing the held entities
    updates = [d for d in firing if d.params.get("update")]
    assert len(updates) == 1 and updates[0].params["escalation_id"] == storm.id
    assert updates[0].params["entities"] == [f"svc-{e:02d}" for e in range(50)]
    # no per-entity escalation, one resolution once memory was clear for the storm window
    resolved = [d for d in decisions if d.status is EXECUTE and d.params.get("resolved")]
    assert [d.entity for d in resolved] == ["storm:restart"]
    assert resolved[0].params["escalation_id"] == storm.id
    last_bad = T0 + 3000 - 15 + 0.49
    assert last_bad + 300 <= resolved[0].ts <= last_bad + 300 + 15
    held = [d for d in decisions if d.suppressed_by is Suppression.STORM]
    assert len({d.entity for d in held}) == 50


def test_operator_release_resumes_repair_and_lifts_the_storm_hold() -> None:
    records = health("web-1", 0, 1500, lambda t: False)
    decisions, _, pipe = replay(records, policy={"rules": [_HC]})
    eng = pipe.stages[0].policy
    assert isinstance(eng, PolicyEngine)
    assert acted(decisions)[-1][1:] == ("escalate", "execute")
    (resolution,) = eng.release("web-1", AnomalyKind.HEALTH_CHECK_FAILED, by="alice")
    assert resolution.params["resolved"] is True and "alice" in resolution.explanation
    later = eng.decide(_finding(T0 + 1600, "web-1", AnomalyKind.HEALTH_CHECK_FAILED))
    assert [(d.action, d.status) for d in later] == [(RepairAction.RESTART, EXECUTE)]

    storm_records = memory(10, 0, 600, lambda t: 0.97)
    decisions, _, pipe = replay(storm_records, policy={"storm_threshold": 3})
    eng = pipe.stages[0].policy
    assert isinstance(eng, PolicyEngine)
    assert any(d.suppressed_by is Suppression.STORM for d in decisions)
    (ended,) = eng.release_storm(RepairAction.RESTART, by="bob")
    assert ended.params["resolved"] is True and "bob" in ended.explanation
    # released: the action runs again at the budget's rate, no new storm while it lasts
    after = [
        d
        for e in range(10)
        for d in eng.decide(_finding(T0 + 700 + e, f"svc-{e:02d}", AnomalyKind.MEMORY_HIGH))
    ]
    assert not [d for d in after if d.suppressed_by is Suppression.STORM]
    assert [d for d in after if d.status is EXECUTE]


_HC: dict[str, Any] = {
    "name": "hc",
    "kinds": ["health_check_failed"],
    "actions": [{"action": "restart"}],
}


class CountingGate:
    """A fleet gate that counts how often a verdict is waited for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[FleetRequest] = []
        self.notes: list[FleetRequest] = []

    def request(self, req: FleetRequest) -> FleetOutcome:
        self.requests.append(req)
        return self.inner.request(req)

    def note(self, req: FleetRequest) -> None:
        self.notes.append(req)
        self.inner.note(req)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_the_fleet_ledger_is_asked_only_when_a_budget_slot_is_needed() -> None:
    from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet

    cfg = PolicyConfig.model_validate({"rules": [{**_HC, "max_attempts": 100}]})
    gate = CountingGate(LocalFleet(FleetArbiter.from_policy(cfg)))
    eng = PolicyEngine(cfg, gate)  # type: ignore[arg-type]
    for i in range(10):  # every 100 s: a restart, then its cooldown (300 s) for two
        eng.decide(_finding(T0 + 100 * i, "web-1", AnomalyKind.HEALTH_CHECK_FAILED))
    assert [round(r.ts - T0) for r in gate.requests] == [0, 300, 600, 900]
    assert all(r.claim for r in gate.requests)
    assert len(gate.notes) == 6 and not any(n.claim for n in gate.notes)


def test_condition_reports_for_unwatched_entities_are_ignored() -> None:
    eng = PolicyEngine(PolicyConfig.model_validate({"rules": [_HC]}))
    eng.observe(ConditionReport("nobody", AnomalyKind.HEALTH_CHECK_FAILED, T0, True))
    assert eng.to_state()["cases"] == [] and not eng.watched


def test_a_paused_engine_decides_as_in_dry_run_and_resumes() -> None:
    eng = PolicyEngine(PolicyConfig.model_validate({"rules": [_HC]}))
    eng.paused = True
    (d,) = eng.decide(_finding(T0, "web-1", AnomalyKind.HEALTH_CHECK_FAILED))
    assert (d.status, d.mode.value) == (DecisionStatus.DRY_RUN, "dry_run")
    assert "paused" not in str(eng.to_state())  # the control topic carries it, not the state
    eng.paused = False
    (d,) = eng.decide(_finding(T0 + 400, "web-2", AnomalyKind.HEALTH_CHECK_FAILED))
    assert (d.status, d.mode.value) == (EXECUTE, "enforce")


def test_block_source_carries_the_address_to_block() -> None:
    s = load_settings(None, {})
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    topic = s.kafka.topics.logs
    line = {
        "ts": T0,
        "entity": "web-1",
        "level": "INFO",
        "message": "GET /search?q=1' UNION SELECT password FROM users-- from 203.0.113.9",
        "labels": {},
    }
    out = pipe.process([Envelope(topic, 0, 0, orjson.dumps(line))], None)
    out.extend(pipe.final_tick())  # a lone record is judged at the end of the replay
    blocks = [d for d in out.decisions if d.action is RepairAction.BLOCK_SOURCE]
    assert [(d.status, d.params.get("address")) for d in blocks] == [
        (DecisionStatus.PENDING_APPROVAL, "203.0.113.9")
    ], out.anomalies


def test_an_entity_stays_watched_while_any_of_its_cases_is_open() -> None:
    # the memory case is a request for approval: two executed repairs of one entity never
    # overlap (test_policy_entity_lock), but a request and a repair do
    mem = {
        "name": "mem",
        "kinds": ["memory_high"],
        "requires_approval": True,
        "actions": [{"action": "evict_cache"}],
    }
    eng = PolicyEngine(PolicyConfig.model_validate({"rules": [_HC, mem]}))
    (ask,) = eng.decide(_finding(T0, "web-1", AnomalyKind.MEMORY_HIGH))
    assert ask.status is DecisionStatus.PENDING_APPROVAL
    (restart,) = eng.decide(_finding(T0 + 100, "web-1", AnomalyKind.HEALTH_CHECK_FAILED))
    assert restart.status is DecisionStatus.EXECUTE
    assert eng.watched == {"web-1"}
    # memory back to normal: the request's window closes (nothing ran, so no verification);
    # the health-check repair is still being watched
    eng.observe(ConditionReport("web-1", AnomalyKind.MEMORY_HIGH, T0 + 70, False))
    assert eng.tick(T0 + 302)[0] == []
    eng.observe(ConditionReport("web-1", AnomalyKind.MEMORY_HIGH, T0 + 303, False))
    assert eng.watched == {"web-1"}
    eng.observe(ConditionReport("web-1", AnomalyKind.HEALTH_CHECK_FAILED, T0 + 304, True))
    (failed,) = eng.tick(T0 + 305)[0]
    assert not failed.success and "still flagged" in failed.explanation
