"""Each entity's share of the series bank: one entity's new metric names evict only its own
room, never the rest of the fleet's learned state.

The series bank (``PartitionStage.series``) is an LRU bounded by ``detection.max_series``. A
client that puts ids into metric names (``user_12345_latency``) makes a new series with every
sample; without a share, that one entity pushed every other entity's judges out, and their
models started learning again (blind for their learning period). An entity at its share gets
its next new series rejected (``series_cardinality``, field ``metric``); its known series go on.
Series the bank evicts free their entity's room, so label values that change over time (a
version label per deploy) age out instead of filling the share for good.

The counts are derived from the bank (rebuilt on restore): no state of their own.

>>> from selfheal.pipeline.kernel.lru import LRU
>>> bank = LRU("series", 3)
>>> share = SeriesShare(2)
>>> share.attach(bank)
>>> for key in [("a", "m1"), ("a", "m2")]:
...     share.add(key, [])
>>> share.full("a"), share.full("b")
(True, False)
>>> for key in [("b", "m1"), ("b", "m2")]:  # the bank evicts a's oldest
...     share.add(key, [])
>>> share.full("a"), len(bank)
(False, 3)
"""

from __future__ import annotations

from typing import Any

from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import Envelope, Reject, RejectReason


class SeriesShare:
    """How many of the bank's series each entity holds, against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}
        self._bank: LRU[Any, Any] | None = None

    def attach(self, bank: LRU[Any, Any]) -> None:
        """Count ``bank``'s series (a new or a restored bank) and follow its evictions."""
        counts: dict[str, int] = {}
        for key, _ in bank.items():
            counts[key[0]] = counts.get(key[0], 0) + 1
        self.counts = counts
        self._bank = bank
        bank.on_evict = self._evicted

    def full(self, entity: str) -> bool:
        return self.counts.get(entity, 0) >= self.limit

    def add(self, key: tuple[Any, ...], value: Any) -> None:
        """Put a new series into the attached bank, counted (before the eviction it may
        cause)."""
        assert self._bank is not None, "attach a bank first"
        self.counts[key[0]] = self.counts.get(key[0], 0) + 1
        self._bank.put(key, value)

    def _evicted(self, key: tuple[Any, ...], _value: Any) -> None:
        left = self.counts.get(key[0], 0) - 1
        if left > 0:
            self.counts[key[0]] = left
        else:
            self.counts.pop(key[0], None)

    def reject(self, env: Envelope, entity: str, metric: str) -> Reject:
        return Reject(
            env,
            RejectReason.SERIES_CARDINALITY,
            "metric",
            f"entity {entity[:64]!r} has {self.limit} series (detection.max_series_per_entity); "
            f"new series {metric[:64]!r} not admitted",
        )
