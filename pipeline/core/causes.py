"""Ranking an incident's probable causes from topology, time, kind and changes.

Each candidate (an entity of the incident, or a callee at least two of them share) gets a score
in [0, 1] from four pieces of evidence, each written out in words:

* **dependents** (weight 0.45): the share of the other affected entities that call it,
  directly or through others: a failing callee explains its callers' symptoms;
* **time** (0.2): it broke first (the score falls with the delay after the incident's start);
* **kind** (0.2): a cause-like finding (failed health checks, a stuck loop, memory, a missing
  heartbeat) rather than a symptom-like one (an open breaker, errors, latency);
* **change** (0.15): it got a new version shortly before its anomaly.

>>> from selfheal.pipeline.core.incidents import EntityView
>>> views = {
...     "db-1": EntityView(0.0, {"health_check_failed": None}, (), "db", None),
...     "web-1": EntityView(60.0, {"breaker_open": None}, ("db-1",), "web", None),
...     "web-2": EntityView(70.0, {"breaker_open": None}, ("db-1",), "web", None),
... }
>>> [(c.entity, round(c.score, 2)) for c in rank_causes(views, 0.0)]
[('db-1', 0.85), ('web-1', 0.14), ('web-2', 0.13)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfheal.pipeline.core.incidents import EntityView

W_DEPENDENTS, W_TIME, W_KIND, W_CHANGE = 0.45, 0.2, 0.2, 0.15
#: findings that usually mean "this entity itself is broken"
CAUSE_KINDS = frozenset(
    {
        "health_check_failed",
        "heartbeat_missing",
        "loop_stuck",
        "loop_slow",
        "memory_high",
        "memory_leak",
        "queue_high",
        "resource_exhaustion",
    }
)
#: findings that usually mean "something this entity depends on is broken"
SYMPTOM_KINDS = frozenset({"breaker_open", "error_rate_drift", "error_burst", "latency_anomaly"})
#: the time evidence halves every this many seconds after the incident's start
TIME_HALF_LIFE = 120.0


@dataclass(frozen=True, slots=True)
class Cause:
    entity: str
    score: float
    evidence: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "score": round(self.score, 4),
            "evidence": list(self.evidence),
        }


def rank_causes(views: Mapping[str, EntityView], started: float) -> list[Cause]:
    """Candidates best first (ties by name, so the order is deterministic)."""
    callers = _callers(views)
    candidates = set(views) | {c for c, who in callers.items() if len(who) >= 2}
    causes = [_score(c, views, callers, started) for c in candidates]
    return sorted(causes, key=lambda c: (-c.score, c.entity))


def _callers(views: Mapping[str, EntityView]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for entity, view in views.items():
        for callee in view.callees:
            out.setdefault(callee, set()).add(entity)
    return out


def _upstream(entity: str, callers: Mapping[str, set[str]]) -> set[str]:
    """Every affected entity that reaches ``entity`` through calls."""
    seen: set[str] = set()
    stack = [entity]
    while stack:
        for caller in callers.get(stack.pop(), ()):
            if caller not in seen and caller != entity:
                seen.add(caller)
                stack.append(caller)
    return seen


def _score(
    entity: str,
    views: Mapping[str, EntityView],
    callers: Mapping[str, set[str]],
    started: float,
) -> Cause:
    evidence: list[str] = []
    others = len(set(views) - {entity})
    dependents = _upstream(entity, callers) & set(views)
    dep = len(dependents) / others if others else 0.0
    if dependents:
        names = ", ".join(sorted(dependents)[:5]) + (" ..." if len(dependents) > 5 else "")
        evidence.append(f"{len(dependents)} of {others} affected entities depend on it ({names})")
    view = views.get(entity)
    if view is None:
        # a shared callee that reported nothing itself: only the topology speaks for it
        evidence.append("reported no anomaly itself (it may not be monitored)")
        return Cause(entity, W_DEPENDENTS * dep, tuple(evidence))
    delay = max(view.first - started, 0.0)
    time_score = math.pow(0.5, delay / TIME_HALF_LIFE)
    evidence.append(
        "broke first" if delay == 0 else f"first anomaly {delay:.0f} s after the incident began"
    )
    kinds = set(view.kinds)
    if kinds & CAUSE_KINDS:
        kind_score = 1.0
        evidence.append(f"{', '.join(sorted(kinds & CAUSE_KINDS))} points at the entity itself")
    elif kinds <= SYMPTOM_KINDS:
        kind_score = 0.0
        evidence.append(f"{', '.join(sorted(kinds))} is usually a symptom of a dependency")
    else:
        kind_score = 0.5
    change_score = 0.0
    if view.change is not None:
        change_score = 1.0
        prev = view.change.previous or "unknown"
        evidence.append(
            f"deployed {view.change.version} (was {prev}) before its anomaly "
            f"(change {view.change.id})"
        )
    score = W_DEPENDENTS * dep + W_TIME * time_score + W_KIND * kind_score + W_CHANGE * change_score
    return Cause(entity, score, tuple(evidence))
