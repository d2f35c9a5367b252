"""A partition's event time in watermark runs: what two entities' clocks agree on.

Against the wall clock, a record stamped ahead of it (up to ``max_future_seconds``) is admitted
but the partition's time stops at the clock. Without a wall clock (replays,
``validation.time_reference: watermark``) the only clocks are the producers': one host whose
clock runs a few minutes fast must not move every other entity's time with it (loops look
silent and are restarted, cooldowns and verification windows close early).

So the partition's time is the second-latest entity clock (the latest event time of any entity
but the one furthest ahead), and no further behind the latest than ``lag`` (the partition's
``max_future_seconds``): with one other entity left and silent, time still moves on. A partition
of a single entity follows it. Two entities' clocks ahead by the same amount (one node's pods)
still move it: entities are the only sources the stream names.

>>> t = EntityClocks(lag=300.0)
>>> [t.see(e, ts) for e, ts in [("a", 0.0), ("b", 10.0), ("a", 10.0), ("skewed", 300.0)]]
[0.0, 0.0, 10.0, 10.0]
>>> t.see("a", 20.0), t.see("skewed", 310.0), t.see("b", 20.0)
(20.0, 20.0, 20.0)
>>> t.see("skewed", 900.0)  # the others silent for 10 minutes: time follows, ``lag`` behind
600.0
"""

from __future__ import annotations

import math
from typing import Any

_NO_TIME = -math.inf


class EntityClocks:
    """The latest event time of the entity furthest ahead and of every other one (O(1))."""

    __slots__ = ("lag", "lead", "lead_entity", "second")

    def __init__(self, lag: float) -> None:
        self.lag = lag
        self.lead = _NO_TIME
        self.lead_entity: str | None = None
        #: the latest event time of any entity but ``lead_entity``
        self.second = _NO_TIME

    def see(self, entity: str, ts: float) -> float:
        """Note ``entity`` at ``ts``; returns the partition's time (``time``)."""
        if entity == self.lead_entity:
            if ts > self.lead:
                self.lead = ts
        elif ts > self.lead:
            # the old leader was ahead of everyone else: it is the runner-up now
            self.second, self.lead, self.lead_entity = self.lead, ts, entity
        elif ts > self.second:
            self.second = ts
        return self.time()

    def time(self) -> float:
        if self.second == _NO_TIME:
            return self.lead  # one entity so far: nobody else to confirm or protect
        return max(self.second, self.lead - self.lag)

    def state(self) -> tuple[float, str | None, float]:
        return self.lead, self.lead_entity, self.second

    def restore(self, state: Any) -> None:
        """From ``state()`` (a snapshot older than this module carries none: start afresh)."""
        if state is None:
            return
        lead, entity, second = state
        self.lead, self.second = float(lead), float(second)
        self.lead_entity = None if entity is None else str(entity)


def batch_cap(clocks: EntityClocks | None, reference: float | None) -> float:
    """Where the partition's time stops at the start of a batch: the clock ``reference``
    (``clocks`` None), or what two entities' clocks agree on (nothing seen yet: no limit)."""
    if clocks is None:
        return math.inf if reference is None else reference
    cap = clocks.time()
    return math.inf if cap == _NO_TIME else cap
