"""One automatic repair of an entity at a time: a repair under verification holds off the others.

The cooldown is per (entity, action), and each rule walks its own ladder, so before this guard an
entity with two problems (memory critical and a queue backing up) got a restart and, seconds
later, a scale-up from another rule: two repairs interfering, and each one's verification (and
the learned effectiveness) credited for what the other did. Now, while an executed repair's
verification window is open, another rule's automatic repair of the same entity is suppressed as
``repair_in_progress``; escalations and approval requests are not held; what persists after the
window is handled by the normal ladder (the detectors re-report it).
"""

from __future__ import annotations

from typing import Any

import orjson
from selfheal.pipeline.app.outputs import encode_outputs, observe_outputs
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig, load_policy
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Decision,
    DecisionStatus,
    Envelope,
    FleetOutcome,
    FleetRequest,
    RepairAction,
    Severity,
    Suppression,
)

from tests.spine_helpers import settings_for
from tests.test_policy import T0, anomaly

EXECUTE = DecisionStatus.EXECUTE
SUPPRESSED = DecisionStatus.SUPPRESSED
MEM, QUEUE = AnomalyKind.MEMORY_HIGH, AnomalyKind.QUEUE_HIGH
WINDOW = 300.0  # the default policy's verification window


def memory(ts: float, entity: str = "web-1") -> Any:
    return anomaly(ts, entity, MEM, Severity.CRITICAL)


def queue(ts: float, entity: str = "web-1") -> Any:
    return anomaly(ts, entity, QUEUE, Severity.WARNING)


def brief(ds: list[Decision]) -> list[tuple[str, str, str, str | None]]:
    return [
        (d.rule, d.action.value, d.status.value, d.suppressed_by and d.suppressed_by.value)
        for d in ds
    ]


def test_a_second_rule_does_not_repair_an_entity_whose_repair_is_being_verified() -> None:
    eng = PolicyEngine(load_policy())
    (restart,) = eng.decide(memory(T0))
    assert brief([restart]) == [("memory-critical", "restart", "execute", None)]

    (held,) = eng.decide(queue(T0 + 5))  # another rule, another action: no cooldown applies
    assert brief([held]) == [("queue-backlog", "scale_up", "suppressed", "repair_in_progress")]
    assert "restart of web-1 (rule memory-critical" in held.explanation
    assert restart.id in held.explanation
    assert "under verification until" in held.explanation
    assert list(eng.learning.open) == [restart.id]  # only the restart will be credited

    # the detector re-reports the backlog inside the window: still held
    (again,) = eng.decide(queue(T0 + 200))
    assert again.suppressed_by is Suppression.REPAIR_IN_PROGRESS
    # after the restart's window closed, the backlog is the normal ladder's: its first rung
    (scale,) = eng.decide(queue(T0 + WINDOW + 1))
    assert brief([scale]) == [("queue-backlog", "scale_up", "execute", None)]
    assert "rung 1/2, attempt 1" in scale.explanation
    verifications, _ = eng.tick(T0 + WINDOW + 2)
    assert [(v.action, v.success) for v in verifications] == [(RepairAction.RESTART, True)]


def test_the_hold_is_per_entity_and_ends_when_the_repair_failed_early() -> None:
    eng = PolicyEngine(load_policy())
    assert brief(eng.decide(memory(T0))) == [("memory-critical", "restart", "execute", None)]
    # another entity is not held
    assert brief(eng.decide(queue(T0 + 5, "web-2"))) == [
        ("queue-backlog", "scale_up", "execute", None)
    ]
    # the restart fails (memory still critical after its grace): its verification is closed
    eng.observe(ConditionReport("web-1", MEM, T0 + 70, True))
    verifications, _ = eng.drain()
    assert [(v.action, v.success) for v in verifications] == [(RepairAction.RESTART, False)]
    assert brief(eng.decide(queue(T0 + 80))) == [("queue-backlog", "scale_up", "execute", None)]


def test_an_approval_request_neither_holds_nor_is_held() -> None:
    burst = AnomalyKind.ERROR_BURST
    eng = PolicyEngine(load_policy())
    # a pending approval is not an execution: the restart goes ahead
    (ask,) = eng.decide(anomaly(T0, "web-1", burst, Severity.CRITICAL))
    assert brief([ask]) == [("error-burst", "rollback", "pending_approval", None)]
    assert brief(eng.decide(memory(T0 + 5))) == [("memory-critical", "restart", "execute", None)]
    # a human decides on a request during the restart's window
    other = PolicyEngine(load_policy())
    other.decide(memory(T0))
    (ask,) = other.decide(anomaly(T0 + 5, "web-1", burst, Severity.CRITICAL))
    assert ask.status is DecisionStatus.PENDING_APPROVAL


def test_an_escalation_is_never_held() -> None:
    eng = PolicyEngine(
        PolicyConfig.model_validate(
            {
                "rules": [
                    {"name": "mem", "kinds": ["memory_high"], "actions": [{"action": "restart"}]},
                    {"name": "q", "kinds": ["queue_high"], "actions": [{"action": "scale_up"}]},
                ]
            }
        )
    )
    assert brief(eng.decide(queue(T0))) == [("q", "scale_up", "execute", None)]
    # the scale-up failed (the backlog still flagged after its grace): the ladder is exhausted
    eng.observe(ConditionReport("web-1", QUEUE, T0 + 70, True))
    assert brief(eng.decide(memory(T0 + 80))) == [("mem", "restart", "execute", None)]
    (page,) = eng.decide(queue(T0 + 150))  # while the restart is being verified
    assert (page.action, page.status) == (RepairAction.ESCALATE, EXECUTE)


def test_two_rules_matching_one_anomaly_repair_one_at_a_time() -> None:
    eng = PolicyEngine(
        PolicyConfig.model_validate(
            {
                "rules": [
                    {
                        "name": "first",
                        "kinds": ["latency_anomaly"],
                        "continue_matching": True,
                        "actions": [{"action": "evict_cache"}],
                    },
                    {
                        "name": "second",
                        "kinds": ["latency_anomaly"],
                        "actions": [{"action": "scale_up"}],
                    },
                ]
            }
        )
    )
    ds = eng.decide(anomaly(T0, "api-1", AnomalyKind.LATENCY_ANOMALY))
    assert brief(ds) == [
        ("first", "evict_cache", "execute", None),
        ("second", "scale_up", "suppressed", "repair_in_progress"),
    ]


def test_protective_actions_neither_hold_nor_are_held() -> None:
    """Rate limits, circuit breaks, degrading and blocking shape traffic, not the process (as
    for an incident's symptoms): a rate-limited abusive client must not delay the restart of a
    stuck loop (the demo's shipping-1), nor a restart the breaker on a failing dependency."""
    eng = PolicyEngine(load_policy())
    (limit,) = eng.decide(anomaly(T0, "web-1", AnomalyKind.RATE_LIMITED, Severity.WARNING))
    assert brief([limit]) == [("rate-limited", "rate_limit", "execute", None)]
    (restart,) = eng.decide(anomaly(T0 + 30, "web-1", AnomalyKind.LOOP_STUCK, Severity.CRITICAL))
    assert brief([restart]) == [("loop-stuck", "restart", "execute", None)]
    (breaker,) = eng.decide(anomaly(T0 + 40, "web-1", AnomalyKind.BREAKER_OPEN))
    assert brief([breaker]) == [("dependency-breaker", "circuit_break", "execute", None)]
    # the restart still holds another rule's corrective repair
    assert eng.decide(queue(T0 + 50))[0].suppressed_by is Suppression.REPAIR_IN_PROGRESS


class _Notes:
    """A fleet gate that records the needs it is told about (storm counting)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.noted: list[FleetRequest] = []
        self.requested: list[FleetRequest] = []

    def request(self, req: FleetRequest) -> FleetOutcome:
        self.requested.append(req)
        out: FleetOutcome = self.inner.request(req)
        return out

    def note(self, req: FleetRequest) -> None:
        self.noted.append(req)
        self.inner.note(req)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_held_repair_still_counts_towards_storms_without_using_the_budget() -> None:
    eng = PolicyEngine(load_policy())
    gate = _Notes(eng.fleet)
    eng.attach_fleet(gate)
    eng.decide(memory(T0))
    eng.decide(queue(T0 + 5))
    assert [(r.action, r.claim) for r in gate.requested] == [(RepairAction.RESTART, True)]
    assert [(r.entity, r.action, r.claim) for r in gate.noted] == [
        ("web-1", RepairAction.SCALE_UP, False)
    ]


def test_the_hold_survives_a_snapshot_and_replays_alike() -> None:
    first = PolicyEngine(load_policy())
    first.decide(memory(T0))
    restored = PolicyEngine(load_policy())
    restored.restore(first.snapshot())
    a = first.decide(queue(T0 + 5))
    b = restored.decide(queue(T0 + 5))
    assert a == b
    assert a[0].suppressed_by is Suppression.REPAIR_IN_PROGRESS


# ----------------------------------------------------------------- through the real stage
TOPIC = "el.metrics"


def _records() -> list[dict[str, Any]]:
    """worker-1: memory critical for a minute; its queue backs up 15 s later for ~6 minutes."""
    out = []
    for i in range(80):
        ts = T0 + 15.0 * i
        out += [
            {"ts": ts, "entity": "worker-1", "metric": "container_memory_working_set_bytes",
             "value": 9.8e8 if 20 <= i < 24 else 3e8, "limit": 1e9},
            {"ts": ts, "entity": "worker-1", "metric": "queue_depth",
             "value": 95.0 if 21 <= i < 44 else 10.0, "limit": 100.0},
        ]  # fmt: skip
    return out


def test_a_live_pipeline_runs_one_repair_of_an_entity_and_audits_the_other() -> None:
    s = settings_for("el", "unused:9092", partitions=1)
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=True)
    metrics = Metrics(default_collectors=False)
    envs = [Envelope(TOPIC, 0, i, orjson.dumps(r), None) for i, r in enumerate(_records())]
    out = Outputs()
    for start in range(0, len(envs), 7):
        batch = envs[start : start + 7]
        got = pipe.process(batch, orjson.loads(batch[-1].value)["ts"] + 1.0)
        observe_outputs(metrics, got, batch, s)
        out.extend(got)

    mine = [d for d in out.decisions if d.entity == "worker-1"]
    restart = T0 + 300.0  # the memory finding
    assert [(d.ts - T0, *brief([d])[0]) for d in mine] == [
        (300.0, "memory-critical", "restart", "execute", None),
        (315.0, "queue-backlog", "scale_up", "suppressed", "repair_in_progress"),
        # the backlog outlived the restart's window: the detector re-reported it, and the
        # queue's own ladder acted then
        (615.0, "queue-backlog", "scale_up", "execute", None),
    ]
    assert mine[2].ts > restart + WINDOW
    # the repairs topic carries the two repairs, never at once; the audit carries all three
    records = encode_outputs(out, s)
    repairs = [orjson.loads(v) for t, _, v in records if t == s.kafka.topics.repairs]
    assert [r["data"]["action"] for r in repairs] == ["restart", "scale_up"]
    audit = [orjson.loads(v) for t, _, v in records if t == s.kafka.topics.audit]
    held = [r for r in audit if r.get("suppressed_by") == "repair_in_progress"]
    assert len(held) == 1 and held[0]["entity"] == "worker-1"
    value = metrics.registry.get_sample_value(
        "repairs_suppressed_total", {"reason": "repair_in_progress"}
    )
    assert value == 1.0
    # each verification judges its own repair only
    assert [(v.action, v.success) for v in out.verifications] == [
        (RepairAction.RESTART, True),
        (RepairAction.SCALE_UP, True),
    ]
