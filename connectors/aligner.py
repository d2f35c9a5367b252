"""Co-partitioned topics read side by side in time, as Kafka Streams does across a task's inputs.

A fetch brings up to 4 MiB per topic partition and the consumer refetches whichever partition
it has drained, so one topic can run far ahead of another: metrics and logs of one partition
processed in fetch order would move its watermark with the logs while the metrics lag behind,
and every loop would look silent. The aligner keeps what was fetched per topic partition and
hands out only records stamped at or before the *frontier* of every input of the partition
(the last timestamp each has delivered). An input that stops delivering holds the others for
``max_wait_s`` (and ``min_polls`` releases) from its frontier's last move, then no longer
until it delivers again, so a quiet topic delays the others once, briefly, and a catching-up
one as long as it keeps up. An input the broker holds more records of (``pending``) is late,
not quiet: on a busy machine its next fetch can come seconds after the last, and released past
it, the others ran minutes ahead in event time (its records then read late: rate limits
refilled on event time dead-lettered them, the detectors saw them out of order). It holds the
others up to ``max_late_s`` from its frontier's last move (a partition that cannot be read
must not stop the others for good).
Records are ordered by their Kafka timestamp, which producers set when they send: the closest
to event time a source can read without decoding.

>>> now = [0.0]
>>> al = Aligner(max_wait_s=1.0, min_polls=0, clock=lambda: now[0])
>>> al.add("metrics", 0, [Fetched(100, 0, b"m0"), Fetched(200, 1, b"m1")])
>>> al.add("logs", 0, [Fetched(150, 0, b"l0")])
>>> [(e.topic, e.offset) for e in al.release(set())]  # m1 waits for the logs to pass 200
[('logs', 0), ('metrics', 0)]
>>> now[0] = 1.5  # no log for a while: the logs no longer hold the metrics back
>>> [(e.topic, e.offset) for e in al.release(set())]
[('metrics', 1)]
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import NamedTuple

from selfheal.pipeline.kernel.types import Batch, Envelope

Key = tuple[str, int]  # topic, partition


class Fetched(NamedTuple):
    """The parts of a fetched record the aligner reads (aiokafka's ConsumerRecord has them)."""

    timestamp: int
    offset: int
    value: bytes | None
    key: bytes | None = None


class Aligner:
    """Buffers fetched records per topic partition and releases them aligned in time."""

    def __init__(
        self,
        max_wait_s: float = 2.0,
        min_polls: int = 3,
        clock: Callable[[], float] = time.monotonic,
        max_late_s: float = 30.0,
    ) -> None:
        self.max_wait_s = max_wait_s
        self.max_late_s = max(max_late_s, max_wait_s)
        self.min_polls = min_polls
        self.clock = clock
        #: per topic partition: buffered records (offset order) and their timestamps
        self._records: dict[Key, list[Fetched]] = {}
        self._stamps: dict[Key, list[int]] = {}
        #: next offset after the last record fetched / timestamp of the last one released
        self.fetched_next: dict[Key, int] = {}
        self._last_ts: dict[Key, int] = {}
        #: per partition number: since when its frontier holds records back (wall clock), where
        #: the frontier was then, and how many releases have found it there
        self._held_since: dict[int, tuple[float, float, int]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._records.values())

    def add(self, topic: str, partition: int, records: Sequence[Fetched]) -> None:
        if not records:
            return
        key = (topic, partition)
        self._records.setdefault(key, []).extend(records)
        self._stamps.setdefault(key, []).extend(r.timestamp for r in records)
        self.fetched_next[key] = records[-1].offset + 1

    def first_offsets(self) -> dict[Key, int]:
        """Where each buffered topic partition resumes if the buffer is dropped."""
        return {k: v[0].offset for k, v in self._records.items() if v}

    def forget(self, keys: Iterable[Key]) -> None:
        """Drop what is buffered for these topic partitions (revoked, or sought elsewhere)."""
        for key in keys:
            self._records.pop(key, None)
            self._stamps.pop(key, None)
            self.fetched_next.pop(key, None)
            self._last_ts.pop(key, None)

    def held(self) -> list[Key]:
        """Topic partitions with records held back (their fetching can pause meanwhile)."""
        return [k for k, v in self._records.items() if v]

    def release(self, pending: Collection[Key]) -> Batch:
        """Every buffered record at or before each partition's frontier, as one batch.

        ``pending`` are topic partitions of which the broker holds records past what was
        fetched: one that has delivered nothing yet holds the others of its partition back
        until it does (or the wait ends).
        """
        groups: dict[int, set[Key]] = {}
        for key in (*self._records, *pending):
            groups.setdefault(key[1], set()).add(key)
        batch = Batch()
        for part, keys in sorted(groups.items()):
            bound = self._bound(part, sorted(keys), pending)
            for key in sorted(keys):
                if key in self._records:
                    self._take(key, bound, batch)
        return batch

    def _bound(self, part: int, keys: list[Key], pending: Collection[Key]) -> float:
        buffered = [k for k in keys if self._records.get(k)]
        if not buffered:
            return float("inf")
        # every input bounds, not only those a fetch said have more: a high watermark is
        # as old as the fetch that reported it, while the producers go on
        frontiers = {
            k: self._stamps[k][-1] if self._records.get(k) else self._last_ts.get(k, -1)
            for k in keys
        }
        bound = float(min(frontiers.values()))
        if all(self._stamps[k][-1] <= bound for k in buffered):
            self._held_since.pop(part, None)
            return bound
        # the wait counts from the frontier's last move: an input that keeps delivering (a
        # long catch-up) holds the others as long as it takes; a quiet one, max_wait_s once,
        # and over ``min_polls`` releases, so that a busy machine whose fetches run late does
        # not read as a quiet input
        now = self.clock()
        since, last, polls = self._held_since.get(part, (now, bound, 0))
        if bound > last:
            since, polls = now, 0
        polls += 1
        self._held_since[part] = (since, bound, polls)
        # an input at the frontier of which the broker holds more is late, not quiet
        late = any(k in pending for k, f in frontiers.items() if f <= bound)
        wait = self.max_late_s if late else self.max_wait_s
        quiet = now - since >= wait and polls > self.min_polls
        return float("inf") if quiet else bound

    def _take(self, key: Key, bound: float, batch: Batch) -> None:
        records, stamps = self._records[key], self._stamps[key]
        n = len(records) if bound == float("inf") else bisect.bisect_right(stamps, bound)
        if n == 0:
            return
        topic, part = key
        new = tuple.__new__  # Envelope is a named tuple: skip its Python-level __new__
        taken = records[:n]
        batch += [new(Envelope, (topic, part, r.offset, r.value or b"", r.key)) for r in taken]
        batch.next_offsets[key] = records[n - 1].offset + 1
        batch.topic_counts[topic] = batch.topic_counts.get(topic, 0) + n
        self._last_ts[key] = stamps[n - 1]
        del records[:n]
        del stamps[:n]
