"""How fast new entities may arrive on a partition: a flood of them cannot wipe what the
detectors learned of the others.

Every per-entity structure is an LRU (``detection.max_series`` series, ``max_entities`` rate
buckets): bounded, but the least recently seen go first. An entity name that carries an id (a
trace id or a request id in ``service.name``, a pod name per request) makes a new entity per
record, and a few tens of thousands of them pushed every established entity's models out of
the bank: they learned again from nothing (the memory forecast needs hours). A token bucket on
event time admits new entities at ``rate`` per second after a ``burst``; past it, the records of
entities not seen before are dead-lettered as ``entity_cardinality`` (field ``entity``) and known
entities go on. A fleet starting with no state takes ``burst`` entities at once.

Its two numbers are in partition snapshots, so a replay admits what the live run admitted.

>>> gate = Newcomers(rate=1.0, burst=2.0)
>>> [gate.admit(100.0) for _ in range(3)], gate.admit(101.0)
([True, True, False], True)
"""

from __future__ import annotations

from typing import Any


class Newcomers:
    """Token bucket over event time for entities not seen before (one per partition)."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = float("-inf")

    def admit(self, ts: float) -> bool:
        if ts > self.last:
            if self.last > float("-inf"):
                self.tokens = min(self.burst, self.tokens + (ts - self.last) * self.rate)
            self.last = ts
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def state(self) -> list[float]:
        return [self.tokens, self.last]

    def restore(self, state: Any) -> None:
        """From a snapshot's ``state`` (absent in older ones: a full bucket), within the running
        ``burst``."""
        if isinstance(state, list) and len(state) == 2:
            tokens, last = (float(x) for x in state)
            self.tokens, self.last = min(tokens, self.burst), last
