"""Repairs of one entity no closer together in wall time than the policy spaced them.

The policy's brakes run on event time: a cooldown, the dedup window and the verification
window that judges a repair before the ladder climbs. While the pipeline reads a backlog (it
was down, or fell behind), event time runs many times faster than the wall clock, and those
brakes stop spacing anything in reality: a service failing for the whole backlog was decided
a restart, another restart one cooldown later and a scale-up one window after that, and the
executor stage ran all three within a second, none of them with time to act, all on data an
hour old.

So the stage keeps, per entity, when (wall clock) its last repair started and at what event
time it was decided. A repair whose wall-clock gap to that one is less than half the policy's
event-time gap (capped at one verification window) is not run: it is recorded ``skipped``,
and the policy judges its case on the data that follows, as it does for any repair. Live,
event time keeps pace with the clock and nothing is held; the first repair of a backlog
still runs. Pages, approval requests, protective actions (they shape traffic, see
``ladder.repair_in_progress``) and repairs a person approved are never held here (an approved
one waits for its entity's repair under verification instead: ``entity_hold``); the last two
still count as the entity's last repair.

The memory survives a restart and a rebalance: each ``started`` record on the outcome topic
carries the decision's event time (``decided_at``, for the repairs that count here), and the
stage, reading that topic back from ``executors.history_seconds`` on start, seeds the entity's
last repair from it (``seed``). A restarted process, or a partition's new owner, so paces the
first repair of a backlog against the repair that ran just before, not against nothing.

A person releasing an entity's escalation asks for its repair (the ladder starts again): the
repairs started before the release no longer hold the entity's next one (``released``, from the
release's resolution on the repair topic, history included).

>>> from selfheal.pipeline.kernel.types import Decision, Mode, RepairAction
>>> def restart(ts):
...     return Decision(f"d{ts}", ts, RepairAction.RESTART, "web-1", Mode.ENFORCE, False, ())
>>> pacing = Pacing(window=300.0)
>>> pacing.hold(restart(0.0), now=1000.0)
''
>>> pacing.started(restart(0.0), now=1000.0)
>>> pacing.hold(restart(300.0), now=1001.0)[:40]  # a backlog: 300 s decided 1 s apart
'not run: restart of web-1 started 1s ago'
>>> pacing.hold(restart(300.0), now=1290.0)  # live: the clock kept pace
''
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from selfheal.pipeline.core.repair_plan import PROTECTIVE
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.schemas import parse_ts
from selfheal.pipeline.kernel.types import Decision, RepairAction

#: entities remembered (the least recently repaired are forgotten first)
MAX_ENTITIES = 10_000


class Pacing:
    """Per entity: (wall clock started, event time decided, action) of its last repair."""

    def __init__(self, window: float, maxsize: int = MAX_ENTITIES) -> None:
        self.window = window
        self._last: LRU[str, tuple[float, float, str]] = LRU("repair_pacing", maxsize)
        #: entity -> wall time a person released its escalation (repairs before it do not count)
        self._released: LRU[str, float] = LRU("repair_pacing_released", maxsize)

    def hold(self, d: Decision, now: float) -> str:
        """Why ``d`` must not start at wall time ``now``, or "" (see the module docstring)."""
        if exempt(d) or d.params.get("approved_decision_id"):
            return ""
        last = self._last.peek(d.entity)
        if last is None:
            return ""
        wall, event, action = last
        if wall < (self._released.peek(d.entity) or -math.inf):
            return ""  # started before a person released the entity's escalation
        wall_gap, event_gap = now - wall, d.ts - event
        if wall_gap * 2 >= min(max(event_gap, 0.0), self.window):
            return ""
        return (
            f"not run: {action} of {d.entity} started {wall_gap:.0f}s ago, and the policy spaced "
            f"the two {event_gap:.0f}s apart in event time: it decides faster than repairs act "
            "(a backlog); the policy judges the case on the data that follows"
        )

    def started(self, d: Decision, now: float) -> None:
        """``d`` started at wall time ``now``: the entity's last repair (pages do not count)."""
        if counts(d):
            self._put(d.entity, now, d.ts, d.action.value)

    def released(self, d: Decision, wall: float) -> None:
        """``d``, published at wall time ``wall``, may resolve an entity's escalation that a
        person released: the entity's next repair is theirs (not paced against older ones)."""
        if d.action is not RepairAction.ESCALATE or not d.params.get("released_by"):
            return
        if (self._released.peek(d.entity) or -math.inf) < wall:
            self._released.put(d.entity, wall)

    def seed(self, event: Mapping[str, Any] | None) -> None:
        """A record of the outcome topic: a ``started`` one with ``decided_at`` (a repair that
        counts, ``counts``) is its entity's last repair unless a later one is known."""
        if not event or event.get("type") != STARTED_TYPE:
            return
        data = event.get("data") or {}
        decided = data.get("decided_at")
        if not isinstance(decided, int | float):
            return  # a page, an approval request, or a record of an older version
        try:
            wall = parse_ts(event["time"])
            self._put(str(data["entity"]), wall, float(decided), str(data["action"]))
        except (KeyError, TypeError, ValueError):
            return  # unreadable: pacing is a brake, never a reason to fail

    def _put(self, entity: str, wall: float, event: float, action: str) -> None:
        last = self._last.peek(entity)
        if last is None or last[0] <= wall:  # records of several processes: the newest wins
            self._last.put(entity, (wall, event, action))


#: the CloudEvent type of a ``started`` record (``outcomes.STARTED_TYPE``)
STARTED_TYPE = "io.selfheal.repair.started"


def counts(d: Decision) -> bool:
    """A repair that is its entity's last one once started (pages and approval requests are
    not repairs)."""
    return d.action is not RepairAction.ESCALATE and not d.params.get("approval_required")


def exempt(d: Decision) -> bool:
    """Pages and approval requests are for people; protective actions shape traffic."""
    return (
        d.action is RepairAction.ESCALATE
        or bool(d.params.get("approval_required"))
        or d.action in PROTECTIVE
    )
