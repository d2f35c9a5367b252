"""``order: learned``: a rule's ladder walked best-first by learned effectiveness.

When an incident's ladder starts (its case idle), the configured actions are ranked
(``effectiveness.learned_order``, seeded by a decision id, so replays rank alike) and the
order is remembered for the (rule, entity) until the case starts over; the ladder then climbs
through that order exactly like a configured one (rungs, ``max_attempts``, approvals and
cooldowns of each step travel with the step). No action outside the configured ladder is
ever chosen. Every decision of the rule says why its action came first.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from selfheal.pipeline.core import ladder
from selfheal.pipeline.core.effectiveness import learned_order, service_of
from selfheal.pipeline.core.policy_config import Rule
from selfheal.pipeline.core.policy_state import decision_id
from selfheal.pipeline.core.repair_plan import NO_PLAN, PROTECTIVE, RepairPlan
from selfheal.pipeline.kernel.types import Anomaly, Decision

if TYPE_CHECKING:
    from selfheal.pipeline.core.policy import PolicyEngine


def ordered_rule(eng: PolicyEngine, rule: Rule, entity: str) -> Rule:
    """``rule`` with its ladder in the order ``entity``'s current incident follows."""
    if rule.order != "learned":
        return rule
    order = incident_order(eng, rule, entity)
    if order is None or order == sorted(order):
        return rule
    return rule.model_copy(update={"actions": [rule.actions[pos] for pos in order]})


def incident_order(eng: PolicyEngine, rule: Rule, entity: str) -> list[int] | None:
    """The order ``entity``'s incident follows, as positions in ``rule``'s running ladder;
    None when nothing is ranked yet, or when the ladder changed since (a restart under another
    policy) and its actions no longer map one to one onto the ranked ones."""
    got = eng._state.learning.orders.get((rule.name, entity))
    if got is None:
        return None
    order, ranked = got
    now = [step.action.value for step in rule.actions]
    ranked = ranked or now
    if sorted(order) != list(range(len(ranked))):
        return None
    if ranked == now:
        return order
    if sorted(ranked) != sorted(now) or len(set(now)) != len(now):
        return None
    # the same actions in another configured order: the ranking is of actions, not places
    return [now.index(ranked[pos]) for pos in order]


def pinned(rule: Rule) -> set[int]:
    """Positions learning leaves alone: a step that asks a person (never learned, as only
    what ran on its own is: "untried" for ever, it would be put first) and a protective action
    (a caller left to its cause may take only those: ranked behind a repair, out of reach)."""
    return {
        pos
        for pos, step in enumerate(rule.actions)
        if step.action in PROTECTIVE
        or (
            step.requires_approval if step.requires_approval is not None else rule.requires_approval
        )
    }


def rank(eng: PolicyEngine, rule: Rule, anomaly: Anomaly) -> tuple[list[int], str]:
    """A fresh incident's order: the automatic repairs ranked among their own places."""
    f = anomaly.finding
    fixed = pinned(rule)
    free = [pos for pos in range(len(rule.actions)) if pos not in fixed]
    learning = eng.config.learning
    ranked, why = learned_order(
        eng._state.learning,
        f.kind.value,
        service_of(f.entity, f.labels),
        [rule.actions[pos].action.value for pos in free],
        min_tries=rule.min_tries,
        prior=(learning.prior_successes, learning.prior_failures),
        seed=decision_id(rule.name, "order", f.entity, anomaly.id),
    )
    best = iter(free[i] for i in ranked)
    order = [pos if pos in fixed else next(best) for pos in range(len(rule.actions))]
    if fixed:
        kept = ", ".join(rule.actions[pos].action.value for pos in sorted(fixed))
        why = f"{why}; " if free else "learned order: "
        why += f"{kept} kept in place (approval or protective)"
    return order, why


def decide(
    eng: PolicyEngine, rule: Rule, anomaly: Anomaly, now: float, plan: RepairPlan = NO_PLAN
) -> list[Decision]:
    """``ladder.decide_rule`` for a rule with ``order: learned`` (ranks a fresh incident)."""
    st = eng._state
    f = anomaly.finding
    case = st.cases.get(rule.name, f.entity)
    if case is None or case.idle:
        order, why = rank(eng, rule, anomaly)
        ladder_actions = [step.action.value for step in rule.actions]
        st.learning.remember_order(rule.name, f.entity, order, ladder_actions)
    else:
        order = incident_order(eng, rule, f.entity) or list(range(len(rule.actions)))
        names = " > ".join(rule.actions[pos].action.value for pos in order)
        why = f"learned order {names} kept while this incident's ladder climbs"
    out = ladder.decide_rule(eng, ordered_rule(eng, rule, f.entity), anomaly, now, plan)
    return [
        replace(d, explanation=f"{d.explanation}; {why}") if d.rule == rule.name else d for d in out
    ]
