"""A bounded mapping with least-recently-used eviction and an eviction counter.

Every per-key structure in the pipeline (series, rate buckets, label sets) sits in one of these
so that no input can grow state without bound; the counters feed
``collection_size{name}`` and ``collection_evictions_total{name}``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """
    >>> c = LRU[str, int]("demo", 2)
    >>> c.put("a", 1); c.put("b", 2); c.get("a"); c.put("c", 3)
    1
    >>> sorted(c.keys()), c.evictions
    (['a', 'c'], 1)
    """

    __slots__ = ("_data", "evictions", "maxsize", "name", "on_evict")

    def __init__(
        self, name: str, maxsize: int, on_evict: Callable[[K, V], None] | None = None
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.name = name
        self.maxsize = maxsize
        self.on_evict = on_evict
        self.evictions = 0
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        val = self._data.get(key)
        if val is not None:
            self._data.move_to_end(key)
        return val

    def peek(self, key: K) -> V | None:
        """The value without refreshing its recency (a read that must not keep it alive)."""
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            old_key, old_val = self._data.popitem(last=False)
            self.evictions += 1
            if self.on_evict is not None:
                self.on_evict(old_key, old_val)

    def get_or_create(self, key: K, factory: Callable[[], V]) -> V:
        val = self._data.get(key)
        if val is None:
            val = factory()
            self.put(key, val)
        else:
            self._data.move_to_end(key)
        return val

    def shrink(self, size: int) -> None:
        """Evict least-recently-used entries down to ``size`` (the cap itself is unchanged)."""
        while len(self._data) > size:
            old_key, old_val = self._data.popitem(last=False)
            self.evictions += 1
            if self.on_evict is not None:
                self.on_evict(old_key, old_val)

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def keys(self) -> Iterator[K]:
        return iter(list(self._data.keys()))

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(list(self._data.items()))

    def values(self) -> Iterator[V]:
        return iter(list(self._data.values()))

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __getstate__(self) -> dict[str, object]:
        return {
            "name": self.name,
            "maxsize": self.maxsize,
            "evictions": self.evictions,
            "data": list(self._data.items()),
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        self.name = state["name"]  # type: ignore[assignment]
        self.maxsize = state["maxsize"]  # type: ignore[assignment]
        self.evictions = state["evictions"]  # type: ignore[assignment]
        self.on_evict = None
        self._data = OrderedDict(state["data"])  # type: ignore[call-overload]
