"""What the learned ladder credits: lift over recovering anyway, and one entity's weight.

Two audit findings, driven through the real ``PolicyEngine`` on event time:

1. A flapping service recovers on its own within the verification window: whatever repair
   happened to run was credited, so a useless action was learned as effective fleet-wide and
   moved ahead of a useful one. The cases no repair ran for (the executors did not run it) and
   that recovered anyway are the baseline; a success counts only beyond it.
2. One busy entity contributed most outcomes of its service's record and outvoted every other
   replica. At most ``policy.learning.max_outcomes_per_entity`` outcomes of an entity per
   (kind, action) count toward its service and the fleet.
"""

from __future__ import annotations

import json

import pytest
from selfheal.pipeline.core.effectiveness import Effectiveness, evidence
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import AnomalyKind, DecisionStatus

from tests.spine_helpers import queue_backlog

KIND = AnomalyKind.QUEUE_HIGH


def _engine() -> PolicyEngine:
    # the flappy service has only restart configured; the book pools outcomes across rules
    flappy = {"name": "flappy", "kinds": ["queue_high"], "entity": "flappy-*",
              "actions": [{"action": "restart"}]}  # fmt: skip
    rule = {
        "name": "queue",
        "kinds": ["queue_high"],
        "order": "learned",
        "min_tries": 3,
        "actions": [{"action": "restart"}, {"action": "scale_up"}],
    }
    return PolicyEngine(PolicyConfig.model_validate({"rules": [flappy, rule]}))


def _incident(
    eng: PolicyEngine, entity: str, t: float, *, clears: str, ran: bool = True
) -> list[str]:
    """One backlog on ``entity`` at ``t``; ``clears``: the action that clears it, or "self"
    (it recovers on its own 20 s in). ``ran=False``: the executors ran none of its repairs.
    Returns the executed actions, in order."""
    done: list[str] = []
    for k in range(3):
        now = t + 120 * k
        for d in eng.decide(queue_backlog(entity, now)):
            if d.status is not DecisionStatus.EXECUTE:
                continue
            done.append(d.action.value)
            if not ran:
                eng.not_run(d.id)  # between batches, before its window closes
            cleared = clears == "self" or (ran and d.action.value == clears)
            eng.observe(ConditionReport(entity, KIND, now + (20 if cleared else 75), not cleared))
        if clears == "self" or (ran and done and done[-1] == clears):
            break
    eng.tick(t + 1000)
    return done


def test_a_flapping_service_does_not_teach_the_fleet_that_a_useless_repair_works() -> None:
    eng = _engine()
    t = 0.0
    # flappy: recovers on its own whatever runs; half of its repairs were not run (the
    # executors were paused) and it recovered all the same
    for i in range(36):
        t += 10_000
        _incident(eng, f"flappy-{i % 6 + 1}", t, clears="self", ran=i % 2 == 0)
    # orders: restart leaves the backlog, scale_up drains it
    for _ in range(4):
        t += 10_000
        _incident(eng, "orders-1", t, clears="scale_up")
    restart = evidence(eng.learning, "queue_high", "payments", "restart", 3)
    scale = evidence(eng.learning, "queue_high", "payments", "scale_up", 3)
    prior = (1.0, 1.0)
    a, b = restart.posterior(prior)
    c, d = scale.posterior(prior)
    # a new service starts from the fleet: restart's flappy "successes" are what flappy does
    # without any repair, so the useful scale_up is the better bet
    assert a / (a + b) < c / (c + d)
    firsts = [_incident(eng, f"payments-{i}", t + 10_000.0 * i, clears="scale_up")[0]
              for i in range(1, 13)]  # fmt: skip
    assert firsts.count("restart") <= 1, firsts


def test_one_busy_entity_does_not_outvote_its_service() -> None:
    eng = _engine()
    t = 0.0
    # orders-1 (a busy replica) is cured by restart, over and over
    for _ in range(40):
        t += 10_000
        _incident(eng, "orders-1", t, clears="restart")
    # every other replica of the service needs scale_up; restart does nothing there
    wasted = 0
    for i in range(12):
        t += 10_000
        wasted += _incident(eng, f"orders-{i % 4 + 2}", t, clears="scale_up")[0] == "restart"
    assert wasted <= 6, wasted
    rec = eng.learning.get("queue_high", "restart", "orders")
    assert rec is not None
    # orders-1 counts with its last max_outcomes_per_entity (5) restarts only
    assert rec.successes == eng.config.learning.max_outcomes_per_entity


def test_a_repair_not_run_that_recovered_anyway_is_the_baseline() -> None:
    eng = _engine()
    _incident(eng, "flappy-1", 10_000.0, clears="self", ran=False)
    assert eng.learning.get("queue_high", "restart", "flappy") is None
    none = eng.learning.get("queue_high", "none", "flappy")
    assert none is not None and (none.successes, none.failures) == (1, 0)


def test_the_entity_cap_and_the_baseline_survive_snapshots_and_old_ones_load() -> None:
    book = Effectiveness()
    for i in range(4):
        book.opened(f"d{i}", "queue_high", "restart", "web", 100.0 * i, "web-1")
        book.closed(f"d{i}", True, 100.0 * i + 10, cap=2)
    rec = book.get("queue_high", "restart", "web")
    assert rec is not None and rec.successes == 2  # web-1's newest two
    assert book.not_run("d0", cap=2)  # pushed out of its window: not taken back twice
    assert book.not_run("d3", cap=2)
    assert (rec.successes, book.pooled("queue_high", "restart").successes) == (1, 1)
    # both recovered with no repair run: 2 of 2 (+1 imagined non-recovery)
    assert book.baseline("queue_high", "web") == pytest.approx(2 / 3)
    plain = json.loads(json.dumps(book.to_plain()))
    assert Effectiveness.from_plain(plain).to_plain() == plain
    # written before entities were kept: open and verdict rows without one, no windows
    old = dict(plain)
    old["open"] = [["o1", "queue_high", "restart", "web", 5.0]]
    old["verdicts"] = [row[:6] for row in plain["verdicts"]]
    del old["entities"]
    restored = Effectiveness.from_plain(old)
    assert restored.open["o1"][4] == "" and not restored.entities
    assert restored.closed("o1", True, 6.0, cap=2)  # counted uncapped
    assert restored.not_run("d2", cap=2)


def test_no_baseline_means_no_discount() -> None:
    book = Effectiveness()
    book.record("queue_high", "restart", "web", True, 1.0)
    ev = evidence(book, "queue_high", "web", "restart", 1)
    assert (ev.tries, ev.credited, ev.baseline) == (1, 1.0, 0.0)


def test_the_entity_cap_is_validated() -> None:
    for bad in (0, 1001, "many"):
        with pytest.raises(ValueError, match="max_outcomes_per_entity"):
            PolicyConfig.model_validate({"learning": {"max_outcomes_per_entity": bad}})
