"""Verification judges the condition, not the absence of a new finding.

Rule detectors are edge-triggered: while a series stays bad they re-report only every
``repeat_seconds`` (300 s by default, as long as the verification window), so "no new finding
within the window" says nothing about whether a repair worked. A judge that knows its state
exposes ``conditions()``: the anomaly kinds it watches and whether it flags each right now.
The stage turns that into ``ConditionReport``s, in the same event-time stream as the findings
(so the policy sees them in sample order whatever the batching), for the entities the policy
watches; the policy then decides:

* a repair succeeded only if the condition stayed clear from the end of the grace period
  (the rule's dedup window: the repair has not acted yet) to the end of the window;
* a condition still flagged when the window ends, or flagged again inside it, is a failure;
* an escalated entity recovers once its condition has been clear for a whole window.

Kinds without such a judge (the online models) fall back to findings: a recurrence up to and
including the window's last instant is a failure.

>>> from selfheal.models.rules import ConsecutiveRule
>>> from selfheal.pipeline.kernel.types import AnomalyKind, Sample
>>> judge = ConsecutiveRule(name="hc", metrics=("ok",), kind=AnomalyKind.HEALTH_CHECK_FAILED,
...     count=1).judge()
>>> _ = judge.observe(Sample(0.0, "web-1", "ok", 0.0))
>>> [(r.entity, r.kind.value, r.present) for r in reports(judge, "web-1", 0.0)]
[('web-1', 'health_check_failed', True)]
>>> _ = judge.observe(Sample(10.0, "web-1", "ok", 1.0))
>>> reports(judge, "web-1", 10.0)[0].present
False
"""

from __future__ import annotations

from typing import Any, NamedTuple

from selfheal.pipeline.kernel.types import AnomalyKind


class ConditionReport(NamedTuple):
    """At event time ``ts`` a detector flags (``present``) or clears ``kind`` on ``entity``."""

    entity: str
    kind: AnomalyKind
    ts: float
    present: bool


def reports(judge: Any, entity: str, ts: float) -> list[ConditionReport]:
    """What ``judge`` says about its conditions after observing a sample at ``ts``."""
    hook = getattr(judge, "conditions", None)
    if hook is None:
        return []
    return [ConditionReport(entity, kind, ts, present) for kind, present in hook()]
