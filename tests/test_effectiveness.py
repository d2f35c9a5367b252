"""Learned repair effectiveness and ``order: learned`` (issue #18).

The closed-loop test drives the simulated fleet and the real pipeline in-process (the
benchmark's driver, with fewer incidents); the engine tests pin the bookkeeping: outcomes,
the snapshot path, ``min_tries`` and the explanation of every learned choice.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry
from selfheal.pipeline.core.effectiveness import observe_effectiveness, service_of
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import AnomalyKind, DecisionStatus

from benchmarks.learned_repair import run
from tests.spine_helpers import queue_backlog

KIND = AnomalyKind.QUEUE_HIGH


def _config(order: str = "learned", min_tries: int = 2) -> PolicyConfig:
    return PolicyConfig.model_validate(
        {
            "rules": [
                {
                    "name": "queue",
                    "kinds": ["queue_high"],
                    "order": order,
                    "min_tries": min_tries,
                    "actions": [{"action": "restart"}, {"action": "scale_up"}],
                }
            ]
        }
    )


def _incident(eng: PolicyEngine, entity: str, t: float) -> list[str]:
    """One backlog: only scale_up clears it. Returns the executed actions, in order."""
    done: list[str] = []
    for k in range(3):
        now = t + 120 * k
        acted = [
            d for d in eng.decide(queue_backlog(entity, now)) if d.status is DecisionStatus.EXECUTE
        ]
        for d in acted:
            done.append(d.action.value)
            cleared = d.action.value == "scale_up"
            eng.observe(ConditionReport(entity, KIND, now + (15 if cleared else 75), not cleared))
        if done and done[-1] == "scale_up":
            break
    eng.tick(t + 1000)
    return done


def test_closed_loop_learned_order_scales_up_first_after_restarts_fail() -> None:
    static = run("configured", incidents=8, services=2, min_tries=2)
    learned = run("learned", incidents=8, services=2, min_tries=2)
    assert static.first_actions == ["restart"] * 8
    assert static.useless == 8  # every restart left the backlog in place
    # restart is tried min_tries times (pooled over the services), then demoted
    assert learned.first_actions[-4:] == ["scale_up"] * 4
    assert learned.repairs["restart"] < static.repairs["restart"]
    assert learned.unrecovered == static.unrecovered == 0
    assert "restart: 0/" in learned.explanations[-1]
    assert "posterior" in learned.explanations[-1]
    assert learned.mttr(4) < static.mttr(4)


def test_outcomes_are_recorded_and_survive_the_snapshot_path() -> None:
    eng = PolicyEngine(_config())
    for i in range(3):
        assert _incident(eng, "orders-1", 10_000.0 * (i + 1))[0] in ("restart", "scale_up")
    restart = eng.learning.get("queue_high", "restart", "orders")
    scale = eng.learning.get("queue_high", "scale_up", "orders")
    assert restart is not None and scale is not None
    assert (restart.successes, restart.failures) == (0, 2)  # min_tries, then demoted
    assert (scale.successes, scale.failures) == (3, 0)
    # plain data through a data-only codec into an engine of the running configuration
    fresh = PolicyEngine(_config())
    fresh.load_state(json.loads(json.dumps(eng.to_state())))
    again = fresh.learning.get("queue_high", "scale_up", "orders")
    assert again is not None and (again.successes, again.failures) == (3, 0)
    ds = fresh.decide(queue_backlog("orders-1", 50_000.0))
    assert [d.action.value for d in ds] == ["scale_up"]
    assert "learned order scale_up > restart" in ds[0].explanation
    assert "restart: 0/2 successes" in ds[0].explanation


def test_min_tries_keeps_the_configured_order_and_nothing_outside_the_ladder() -> None:
    eng = PolicyEngine(_config(min_tries=5))
    firsts = [_incident(eng, "orders-1", 10_000.0 * (i + 1))[0] for i in range(4)]
    assert firsts == ["restart"] * 4  # 4 failures < min_tries: not demoted yet
    static = PolicyEngine(_config(order="configured"))
    for i in range(4):
        assert _incident(static, "orders-1", 10_000.0 * (i + 1)) == ["restart", "scale_up"]
    # the book learns under a static ladder too (for the metrics and the report)
    rec = static.learning.get("queue_high", "restart", "orders")
    assert rec is not None and rec.failures == 4


def test_effectiveness_metrics_bounded_labels() -> None:
    eng = PolicyEngine(_config())
    _incident(eng, "orders-1", 10_000.0)
    m = Metrics(CollectorRegistry(), default_collectors=False)
    observe_effectiveness(m, [eng])
    labels = {"kind": "queue_high", "action": "scale_up", "service": "orders"}
    assert m.registry.get_sample_value("repair_success_ratio", labels) == pytest.approx(2 / 3)
    assert m.registry.get_sample_value("repair_recovery_seconds", labels) == 0.0
    failed = {"kind": "queue_high", "action": "restart", "service": "orders"}
    assert m.registry.get_sample_value("repair_success_ratio", failed) == pytest.approx(1 / 3)
    assert m.registry.get_sample_value("repair_recovery_seconds", failed) is None


def test_service_of() -> None:
    assert service_of("checkout-12") == "checkout"
    assert service_of("checkout-12", {"service": "pay"}) == "pay"
    assert service_of("db") == "db"


def test_learning_survives_the_partition_snapshot_codec() -> None:
    """The runner's snapshot path (``core.state.encode`` / ``decode`` / ``restore``)."""
    from selfheal.pipeline.core import state as snapshots
    from selfheal.pipeline.core.stage import Pipeline

    from benchmarks.learned_repair import settings_for

    eng = PolicyEngine(_config())
    for i in range(3):
        _incident(eng, "orders-1", 10_000.0 * (i + 1))
    settings = settings_for("learned")
    blob = snapshots.encode(Pipeline(settings, lambda: eng, live=False).stage(0), {}, None)
    _, state = snapshots.decode(blob, None)
    restored = Pipeline(settings, lambda: PolicyEngine(_config()), live=False).stage(0)
    snapshots.restore(restored, state)
    rec = restored.policy.learning.get("queue_high", "scale_up", "orders")  # type: ignore[attr-defined]
    assert rec is not None and (rec.successes, rec.failures) == (3, 0)


def test_learned_choices_replay_identically() -> None:
    """Same anomalies, same outcomes: the same actions with the same explanations (the
    Thompson draws are seeded by decision ids, not by a process-wide generator)."""

    def history() -> list[str]:
        eng = PolicyEngine(_config(min_tries=1))
        out: list[str] = []
        for i in range(6):
            entity = f"orders-{i % 2 + 1}"
            t = 10_000.0 * (i + 1)
            ds = eng.decide(queue_backlog(entity, t))
            out += [f"{d.action.value}|{d.explanation}" for d in ds]
            for d in ds:
                if d.status is DecisionStatus.EXECUTE:
                    clear = d.action.value == "scale_up"
                    eng.observe(ConditionReport(entity, KIND, t + (15 if clear else 75), not clear))
            eng.tick(t + 1000)
        return out

    first, second = history(), history()
    assert first == second
    assert any("sampled" in line for line in first)
