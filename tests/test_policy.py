"""Policy engine on generated anomaly sequences (pure: no I/O, no clock)."""

from __future__ import annotations

import itertools
import json
import pickle
import random
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.policy import PolicyEngine, StateError, decision_id, storm_entity
from selfheal.pipeline.core.policy_config import PolicyConfig, load_policy, parse_policy
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    Decision,
    DecisionStatus,
    Finding,
    Forecast,
    Mode,
    RepairAction,
    Severity,
    Suppression,
    Verification,
)

T0 = 1_795_842_000.0
EXECUTE = DecisionStatus.EXECUTE


def anomaly(
    ts: float,
    entity: str = "checkout-1",
    kind: AnomalyKind = AnomalyKind.HEALTH_CHECK_FAILED,
    severity: Severity = Severity.CRITICAL,
    forecast: Forecast | None = None,
    labels: dict[str, str] | None = None,
    aid: str | None = None,
) -> Anomaly:
    finding = Finding(
        ts=ts,
        entity=entity,
        metric="m",
        detector="test",
        kind=kind,
        severity=severity,
        score=1.0,
        threshold=0.5,
        value=1.0,
        forecast=forecast,
        labels=labels or {},
    )
    return Anomaly(id=aid or f"{entity}/{kind.value}/{ts:.3f}", finding=finding)


def engine(rules: list[dict[str, Any]], **glob: Any) -> PolicyEngine:
    return PolicyEngine(PolicyConfig.model_validate({"rules": rules, **glob}))


def run(
    eng: PolicyEngine,
    anomalies: list[Anomaly],
    tick_every: float = 30.0,
    until: float | None = None,
) -> tuple[list[Decision], list[Verification]]:
    """Feed anomalies in order, ticking the watermark every ``tick_every`` seconds of event time."""
    decisions: list[Decision] = []
    verifications: list[Verification] = []
    anomalies = sorted(anomalies, key=lambda a: a.finding.ts)
    next_tick = anomalies[0].finding.ts if anomalies else T0
    end = until if until is not None else (anomalies[-1].finding.ts if anomalies else T0)
    for a in anomalies:
        while next_tick <= a.finding.ts:
            v, d = eng.tick(next_tick)
            verifications += v
            decisions += d
            next_tick += tick_every
        decisions += eng.decide(a)
    while next_tick <= end:
        v, d = eng.tick(next_tick)
        verifications += v
        decisions += d
        next_tick += tick_every
    return decisions, verifications


def open_verifications(eng: PolicyEngine) -> int:
    return sum(1 for c in eng.to_state()["cases"] if c["pending"] is not None)


def open_escalations(eng: PolicyEngine) -> int:
    return sum(1 for c in eng.to_state()["cases"] if c["escalated"])


def executed(decisions: list[Decision], action: RepairAction | None = None) -> list[Decision]:
    return [d for d in decisions if d.status is EXECUTE and (action is None or d.action is action)]


LEAK_RULE: dict[str, Any] = {
    "name": "leak",
    "kinds": ["memory_leak"],
    "predictive": True,
    "forecast": {"eta_below_seconds": 1800},
    "actions": [{"action": "restart"}, {"action": "scale_up", "params": {"replicas": 1}}],
}


def test_predicted_memory_exhaustion_restarts_once_and_verifies() -> None:
    eng = engine([LEAK_RULE])
    seq: list[Anomaly] = []
    # a leak is detected early with a far forecast (no action), then the ETA drops below 30 min
    for t, eta in [(0, 5400), (60, 4200), (120, 3000), (180, 1500), (210, 1400)]:
        seq.append(
            anomaly(
                T0 + t,
                kind=AnomalyKind.MEMORY_LEAK,
                severity=Severity.WARNING,
                forecast=Forecast(eta_seconds=eta, horizon_seconds=3600, confidence=0.9),
            )
        )
    # a leak finding without forecast never matches a predictive rule
    seq.append(anomaly(T0 + 90, kind=AnomalyKind.MEMORY_LEAK, severity=Severity.CRITICAL))
    decisions, verifications = run(eng, seq, until=T0 + 4 * 3600)

    restarts = executed(decisions, RepairAction.RESTART)
    assert len(restarts) == 1
    restart = restarts[0]
    assert restart.predictive and restart.rule == "leak" and restart.ts == T0 + 180
    assert restart.mode is Mode.ENFORCE and restart.reason == (
        f"checkout-1/memory_leak/{T0 + 180:.3f}",
    )
    assert restart.id == decision_id("leak", RepairAction.RESTART, "checkout-1", restart.reason[0])
    # the next finding 30 s later is the same finding (dedup window), not a failed repair
    later = [d for d in decisions if d.ts == T0 + 210]
    assert [(d.status, d.suppressed_by) for d in later] == [
        (DecisionStatus.SUPPRESSED, Suppression.DUPLICATE)
    ]
    # after recovery: nothing else happened and the verification succeeded
    assert len(decisions) == 2
    assert [(v.decision_id, v.success, v.ts) for v in verifications] == [
        (restart.id, True, T0 + 180 + 300)
    ]
    assert open_verifications(eng) == 0


def test_flapping_entity_gets_at_most_one_restart_per_cooldown() -> None:
    rules = [
        {
            "name": "hc",
            "kinds": ["health_check_failed"],
            "max_attempts": 100,
            "actions": [{"action": "restart"}],
        },
        {
            "name": "mem",
            "kinds": ["memory_high"],
            "max_attempts": 100,
            "actions": [{"action": "restart"}],
        },
    ]
    eng = engine(rules, default_cooldown_seconds=300)
    kinds = [AnomalyKind.HEALTH_CHECK_FAILED, AnomalyKind.MEMORY_HIGH]
    seq = [anomaly(T0 + 30 * i, kind=kinds[i % 2]) for i in range(120)]  # every 30 s for an hour
    decisions, verifications = run(eng, seq, until=T0 + 3600 + 600)

    times = [d.ts for d in executed(decisions, RepairAction.RESTART)]
    assert times, "the flapping entity must be repaired at least once"
    assert all(b - a >= 300 for a, b in itertools.pairwise(times))
    assert len(times) <= 3600 // 300 + 1
    # every anomaly was decided on (executed or suppressed), nothing silently dropped
    assert len([d for d in decisions if d.ts <= T0 + 3570]) == 120
    reasons = Counter(d.suppressed_by for d in decisions if d.status is DecisionStatus.SUPPRESSED)
    assert set(reasons) <= {Suppression.COOLDOWN, Suppression.DUPLICATE}
    # each restart was followed by a recurrence: verified as failed, never as success
    assert verifications and not any(v.success for v in verifications)


def test_flapping_with_a_short_ladder_escalates_once_and_resolves_after_recovery() -> None:
    eng = engine(
        [{"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}]
    )
    seq = [anomaly(T0 + 30 * i) for i in range(120)]
    decisions, _ = run(eng, seq, until=T0 + 3570 + 600)
    escalations = executed(decisions, RepairAction.ESCALATE)
    assert len(executed(decisions, RepairAction.RESTART)) == 1
    assert [d.params["resolved"] for d in escalations] == [False, True]
    firing, resolved = escalations
    # resolved once the entity was quiet for the verification window after its last anomaly
    assert resolved.ts == T0 + 3570 + 300
    assert resolved.params["escalation_id"] == firing.id
    assert resolved.entity == firing.entity == "checkout-1"
    assert (
        firing.params["kind"] == "health_check_failed"
        and firing.params["escalated_action"] == "restart"
    )


@pytest.mark.parametrize(("threshold", "expected_exec"), [(5, 5), (20, 10)])
def test_storm_of_50_entities_respects_budget_and_escalates_once(
    threshold: int, expected_exec: int
) -> None:
    eng = engine(
        [{"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}],
        budget={"max_repairs": 10, "window_seconds": 600},
        storm_threshold=threshold,
        storm_window_seconds=300,
    )
    seq = []
    for minute in range(10):  # 50 entities failing together, re-reported every minute
        seq += [anomaly(T0 + 60 * minute + i * 0.01, entity=f"svc-{i:02d}") for i in range(50)]
    decisions, _ = run(eng, seq, until=T0 + 2 * 3600)

    assert len(executed(decisions, RepairAction.RESTART)) == expected_exec <= 10
    escalations = [
        d for d in decisions if d.action is RepairAction.ESCALATE and d.status is EXECUTE
    ]
    firing = [d for d in escalations if not d.params["resolved"] and not d.params.get("update")]
    assert len(firing) == 1
    storm = firing[0]
    # entities joining later update the one escalation (same escalation id), listing them,
    # at most once per fifth of the storm window: one update here, all 50 held entities
    (update,) = [d for d in escalations if d.params.get("update")]
    assert update.params["escalation_id"] == storm.id and update.entity == storm.entity
    assert update.ts == storm.ts + 60 and update.params["count"] == 50
    assert update.params["entities"] == [f"svc-{i:02d}" for i in range(50)]
    assert storm.entity == storm_entity(RepairAction.RESTART) == "storm:restart"
    assert storm.params["storm"] is True and storm.params["count"] == threshold + 1
    # one resolution after the storm went quiet, no per-entity escalations
    resolved = [d for d in escalations if d.params["resolved"]]
    assert [d.entity for d in resolved] == ["storm:restart"]
    # no detector reports these entities' condition: each stops holding the storm up two
    # storm windows after its last finding, and the storm ends one window after that
    assert resolved[0].ts == T0 + 540 + 49 * 0.01 + 3 * 300
    suppressed = Counter(
        d.suppressed_by for d in decisions if d.status is DecisionStatus.SUPPRESSED
    )
    assert suppressed[Suppression.STORM] > 0
    if threshold > 10:
        assert suppressed[Suppression.BUDGET] == threshold - 10


def test_budget_window_slides_in_event_time() -> None:
    eng = engine(
        [{"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}],
        budget={"max_repairs": 2, "window_seconds": 600},
        storm_threshold=100,
    )
    out = []
    for i, ts in enumerate([0, 10, 20, 599, 600, 611]):
        out += eng.decide(anomaly(T0 + ts, entity=f"e{i}"))
    assert [(d.entity, d.status.value) for d in out] == [
        ("e0", "execute"),
        ("e1", "execute"),
        ("e2", "suppressed"),
        ("e3", "suppressed"),
        ("e4", "execute"),
        ("e5", "execute"),
    ]
    assert out[2].suppressed_by is Suppression.BUDGET


def test_dry_run_executes_nothing_and_records_everything() -> None:
    rules = [
        LEAK_RULE,
        {"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]},
        {
            "name": "sec",
            "kinds": ["security"],
            "requires_approval": True,
            "actions": [{"action": "block_source"}],
        },
    ]
    rng = random.Random(7)
    seq = []
    for i in range(300):
        kind = rng.choice(
            [AnomalyKind.HEALTH_CHECK_FAILED, AnomalyKind.MEMORY_LEAK, AnomalyKind.SECURITY]
        )
        fc = Forecast(600, 3600, 0.9) if kind is AnomalyKind.MEMORY_LEAK else None
        seq.append(anomaly(T0 + 20 * i, entity=f"e{rng.randrange(30)}", kind=kind, forecast=fc))
    dry = engine(rules, dry_run=True)
    decisions, verifications = run(dry, seq, until=T0 + 7000)

    per_entity = [d for d in decisions if not d.entity.startswith("storm:")]
    assert len(per_entity) == len(seq)  # exactly one audited decision per anomaly
    assert any(d.entity == "storm:restart" for d in decisions)  # 30 entities: a (shadow) storm
    assert not executed(decisions)
    assert all(d.mode is Mode.DRY_RUN for d in decisions)
    assert {d.status for d in decisions} == {DecisionStatus.DRY_RUN, DecisionStatus.SUPPRESSED}
    assert verifications == []  # nothing ran, so nothing to verify
    # per-rule dry run inside an enforcing engine
    eng = engine([{**rules[1], "dry_run": True}])
    (d,) = eng.decide(anomaly(T0))
    assert (d.status, d.mode) == (DecisionStatus.DRY_RUN, Mode.DRY_RUN)


def test_max_attempts_then_next_rung_then_escalate() -> None:
    eng = engine(
        [
            {
                "name": "hc",
                "kinds": ["health_check_failed"],
                "actions": [
                    {"action": "restart", "max_attempts": 2},
                    {"action": "scale_up", "params": {"replicas": 2}},
                ],
            }
        ]
    )
    script = [0, 100, 400, 500, 600, 700]
    decisions, verifications = run(eng, [anomaly(T0 + t) for t in script], until=T0 + 1200)
    got = [(d.ts - T0, d.action.value, d.status.value, d.suppressed_by) for d in decisions]
    assert got == [
        (0, "restart", "execute", None),
        (100, "restart", "suppressed", Suppression.COOLDOWN),  # failed once, same rung, cooling
        (400, "restart", "execute", None),
        (500, "scale_up", "execute", None),  # second failure climbs the ladder
        (600, "escalate", "execute", None),  # ladder exhausted
        (700, "escalate", "suppressed", Suppression.DUPLICATE),  # escalated once only
        (1000, "escalate", "execute", None),  # quiet for 300 s: resolution
    ]
    assert decisions[3].params == {"replicas": 2}
    assert decisions[4].params["tried"] == ["restart", "scale_up"]
    assert decisions[4].reason == tuple(
        f"checkout-1/health_check_failed/{T0 + t:.3f}" for t in script[:5]
    )
    assert decisions[6].params["resolved"] is True
    assert [(v.ts - T0, v.success, v.action.value) for v in verifications] == [
        (100, False, "restart"),
        (500, False, "restart"),
        (600, False, "scale_up"),
    ]
    # a fresh episode after recovery starts at the bottom of the ladder again
    (d,) = eng.decide(anomaly(T0 + 5000))
    assert (d.action, d.status) == (RepairAction.RESTART, EXECUTE)


def test_requires_approval_is_pending_and_cools_down() -> None:
    eng = engine(
        [
            {
                "name": "sec",
                "kinds": ["security"],
                "requires_approval": True,
                "actions": [{"action": "block_source", "params": {"ttl": 3600}}],
            },
            {
                "name": "hc",
                "kinds": ["health_check_failed"],
                "actions": [{"action": "restart", "requires_approval": True}],
            },
        ]
    )
    (d,) = eng.decide(anomaly(T0, kind=AnomalyKind.SECURITY, labels={"source_ip": "10.0.0.9"}))
    assert (d.status, d.action, d.params) == (
        DecisionStatus.PENDING_APPROVAL,
        RepairAction.BLOCK_SOURCE,
        {"ttl": 3600, "address": "10.0.0.9"},  # the address to block, from the finding
    )
    (d,) = eng.decide(anomaly(T0 + 120, kind=AnomalyKind.SECURITY))
    # one request per attempt: while it awaits approval the same finding is a duplicate
    assert d.suppressed_by is Suppression.DUPLICATE and "awaiting approval" in d.explanation
    (d,) = eng.decide(anomaly(T0 + 200, kind=AnomalyKind.HEALTH_CHECK_FAILED))
    assert d.status is DecisionStatus.PENDING_APPROVAL
    # awaiting approval is an attempt of the rung (watched, no verification record), no budget
    assert open_verifications(eng) == 2 and eng.fleet.budget_used(T0 + 200) == 0
    verifications, _ = eng.tick(T0 + 1000)
    assert verifications == []


def test_matching_selectors_severity_labels_glob_and_first_match() -> None:
    eng = engine(
        [
            {
                "name": "prod-web",
                "kinds": ["latency_anomaly"],
                "entity": "web-*",
                "labels": {"env": "prod"},
                "min_severity": "critical",
                "actions": [{"action": "scale_up"}],
            },
            {
                "name": "any-latency",
                "kind": "latency_anomaly",
                "actions": [{"action": "evict_cache"}],
                "continue_matching": True,
            },
            {
                "name": "also",
                "kinds": ["latency_anomaly"],
                "severity": "warning",
                "actions": [{"action": "degrade"}],
            },
        ]
    )
    lat = AnomalyKind.LATENCY_ANOMALY

    def names(a: Anomaly) -> list[str]:
        return [r.name for r in eng.matching_rules(a)]

    assert names(anomaly(T0, "web-1", lat, labels={"env": "prod"})) == ["prod-web"]
    assert names(anomaly(T0, "web-1", lat, labels={"env": "dev"})) == ["any-latency", "also"]
    assert names(anomaly(T0, "api-1", lat, labels={"env": "prod"})) == ["any-latency", "also"]
    assert names(anomaly(T0, "web-1", lat, Severity.WARNING, labels={"env": "prod"})) == [
        "any-latency",
        "also",
    ]
    assert names(anomaly(T0, "web-1", lat, Severity.INFO)) == ["any-latency"]
    assert names(anomaly(T0, "web-1", AnomalyKind.QUEUE_HIGH)) == []
    ds = eng.decide(anomaly(T0, "api-1", lat))
    assert [(d.rule, d.action.value) for d in ds] == [
        ("any-latency", "evict_cache"),
        ("also", "degrade"),
    ]
    assert len({d.id for d in ds}) == 2


def test_forecast_condition_requires_a_near_forecast() -> None:
    eng = engine([{**LEAK_RULE, "predictive": False}])
    leak = AnomalyKind.MEMORY_LEAK
    assert eng.matching_rules(anomaly(T0, kind=leak)) == []
    assert eng.matching_rules(anomaly(T0, kind=leak, forecast=Forecast(1800, 3600, 1))) == []
    assert len(eng.matching_rules(anomaly(T0, kind=leak, forecast=Forecast(1799, 3600, 1)))) == 1


def random_sequence(seed: int, n: int = 400) -> list[Anomaly]:
    rng = random.Random(seed)
    kinds = [AnomalyKind.HEALTH_CHECK_FAILED, AnomalyKind.MEMORY_HIGH, AnomalyKind.MEMORY_LEAK]
    out = []
    ts = T0
    for _ in range(n):
        ts += rng.expovariate(1 / 15)
        kind = rng.choice(kinds)
        fc = (
            Forecast(rng.uniform(100, 4000), 3600, 0.8) if kind is AnomalyKind.MEMORY_LEAK else None
        )
        out.append(anomaly(ts, entity=f"e{rng.randrange(12)}", kind=kind, forecast=fc))
    return out


DET_RULES: list[dict[str, Any]] = [
    LEAK_RULE,
    {
        "name": "hc",
        "kinds": ["health_check_failed", "memory_high"],
        "max_attempts": 2,
        "actions": [{"action": "restart"}, {"action": "rollback"}],
    },
]


def test_same_input_same_decisions_and_ids_regardless_of_tick_cadence() -> None:
    seq = random_sequence(1)
    a, va = run(
        engine(DET_RULES, storm_threshold=4), seq, tick_every=30, until=seq[-1].finding.ts + 900
    )
    b, vb = run(
        engine(DET_RULES, storm_threshold=4), seq, tick_every=30, until=seq[-1].finding.ts + 900
    )
    assert a == b and va == vb
    c, vc = run(
        engine(DET_RULES, storm_threshold=4), seq, tick_every=700, until=seq[-1].finding.ts + 900
    )
    # closures happen in decide() too, so the same decisions come out whatever the tick cadence
    assert sorted(d.id for d in a) == sorted(d.id for d in c)
    assert {d.id: d for d in a} == {d.id: d for d in c}
    assert sorted(v.decision_id for v in va) == sorted(v.decision_id for v in vc)
    assert len({d.id for d in a}) == len(a)  # ids are unique
    statuses = Counter(d.status for d in a)
    assert statuses[EXECUTE] > 0 and statuses[DecisionStatus.SUPPRESSED] > 0


def test_plain_state_restore_continues_identically_and_carries_no_config() -> None:
    seq = random_sequence(2)
    full, vfull = run(engine(DET_RULES), seq, until=seq[-1].finding.ts + 900)
    # the budget and storm log are the deployment's (shared by partitions), not the state's
    cfg = PolicyConfig.model_validate({"rules": DET_RULES})
    gate = LocalFleet(FleetArbiter.from_policy(cfg))
    first = PolicyEngine(cfg, gate)
    d1, v1 = run(first, seq[:200])
    plain = first.to_state()
    # plain data only: JSON carries it unchanged (no objects, no configuration)
    assert json.loads(json.dumps(plain)) == plain
    text = json.dumps(plain)
    assert "dry_run" not in text and "budget" not in text and "max_attempts" not in text
    resumed = PolicyEngine(cfg, gate)
    resumed.load_state(json.loads(text))
    rest = seq[200:]
    d2, v2 = run(resumed, rest, until=seq[-1].finding.ts + 900)
    assert {d.id for d in d1 + d2} == {d.id for d in full}
    assert {v.decision_id for v in v1 + v2} == {v.decision_id for v in vfull}
    # the running configuration governs a restored state: dry run stays dry run
    dry = engine(DET_RULES, dry_run=True)
    dry.load_state(json.loads(text))
    d3, _ = run(dry, rest, until=seq[-1].finding.ts + 900)
    assert d3 and all(d.mode is Mode.DRY_RUN for d in d3) and not executed(d3)
    with pytest.raises(StateError):
        resumed.load_state({"version": 999})
    with pytest.raises(StateError):
        resumed.load_state({**plain, "cases": [{"rule": "hc"}]})
    with pytest.raises(TypeError, match="to_state"):
        pickle.dumps(first)


def test_redelivered_anomaly_is_idempotent() -> None:
    eng = engine(DET_RULES)
    a = anomaly(T0)
    first = eng.decide(a)
    assert len(first) == 1 and eng.decide(a) == []


def test_state_is_bounded() -> None:
    eng = engine(
        [{"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}],
        max_tracked_entities=50,
        max_seen_anomalies=100,
        storm_threshold=10_000,
        budget={"max_repairs": 5, "window_seconds": 60},
    )
    for i in range(2000):
        eng.decide(anomaly(T0 + i, entity=f"e{i}"))
    s = eng.to_state()
    assert len(s["cases"]) <= 50 and len(s["cooldowns"]) <= 200 and len(s["seen"]) <= 100
    assert eng.fleet.budget_used(T0 + 2000) <= 5
    eng.tick(T0 + 10_000)
    s = eng.to_state()
    assert s["cases"] == [] and s["cooldowns"] == [] and not eng.watched
    assert eng._state.due == []


def test_escalated_flapping_entity_keeps_the_deadline_queue_bounded() -> None:
    eng = engine(
        [{"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}]
    )
    peak = 0
    for i in range(1200):  # every 30 s for 10 hours, escalated after the first failure
        eng.decide(anomaly(T0 + 30 * i))
        eng.tick(T0 + 30 * i + 1)
        peak = max(peak, len(eng._state.due))
    assert open_escalations(eng) == 1
    assert peak <= 300 // 30 + 2


def test_invalid_config_raises_validation_error_naming_the_field() -> None:
    def loc_of(data: dict[str, Any]) -> list[tuple[Any, ...]]:
        with pytest.raises(ValidationError) as err:
            PolicyConfig.model_validate(data)
        return [e["loc"] for e in err.value.errors()]

    assert ("budget", "max_repairs") in loc_of({"budget": {"max_repairs": -1}})
    assert ("storm_threshold",) in loc_of({"storm_threshold": 0})
    bad_action = {
        "rules": [{"name": "r", "kinds": ["queue_high"], "actions": [{"action": "reboot"}]}]
    }
    assert ("rules", 0, "actions", 0, "action") in loc_of(bad_action)
    assert ("rules", 0, "kinds", 0) in loc_of(
        {"rules": [{"name": "r", "kinds": ["nope"], "actions": [{"action": "restart"}]}]}
    )
    assert ("rules", 0, "actions") in loc_of(
        {"rules": [{"name": "r", "kinds": ["queue_high"], "actions": []}]}
    )
    assert ("typo_field",) in loc_of({"typo_field": 1})
    with pytest.raises(ValidationError, match="duplicate rule names"):
        parse_policy(
            "rules:\n- {name: a, kinds: [security], actions: [{action: restart}]}\n"
            "- {name: a, kinds: [security], actions: [{action: restart}]}\n"
        )
    with pytest.raises(ValidationError, match="escalate is implicit"):
        parse_policy("rules: [{name: a, kinds: [security], actions: [{action: escalate}]}]")


def test_default_policy_loads_and_covers_the_main_kinds() -> None:
    cfg = load_policy()
    covered = {k for rule in cfg.rules for k in rule.kinds}
    for kind in [
        "memory_leak",
        "memory_high",
        "queue_high",
        "breaker_open",
        "health_check_failed",
        "loop_stuck",
        "error_burst",
        "security",
    ]:
        assert AnomalyKind(kind) in covered
    eng = PolicyEngine(cfg)
    leak = anomaly(
        T0,
        kind=AnomalyKind.MEMORY_LEAK,
        severity=Severity.WARNING,
        forecast=Forecast(900, 3600, 0.9),
    )
    (d,) = eng.decide(leak)
    assert (d.action, d.status, d.predictive) == (RepairAction.RESTART, EXECUTE, True)
    assert parse_policy("").rules == []


@pytest.mark.parametrize(
    "module",
    ["policy", "policy_state", "policy_config", "repair", "fleet", "verification"],
)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    mod = importlib.import_module(f"selfheal.pipeline.core.{module}")
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
