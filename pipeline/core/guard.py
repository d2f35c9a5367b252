"""Prevention after decoding: time window, label cardinality, per-entity rate limit.

Pure and deterministic: the rate limit runs on event time, so a replay rejects exactly what the
live run rejected. Every per-key structure is an ``LRU``.

The rate limit judges an entity's volume in event time whatever the order its records arrive
in. Records in order (not older than the entity's last one) take a token from its bucket, which
refills at ``rate_per_second`` up to ``burst``. A record older than that (its logs read after
its metrics for the same minutes, a partition that caught up late) would find the bucket
emptied by the newer records and no refill; it is judged instead against the admitted count
of its own interval (``rate_interval_seconds`` of event time), which may reach
``rate_per_second * rate_interval_seconds + burst``, as much as the bucket lets through in one
interval. The last ``rate_intervals`` intervals are counted (a ring); a record older than
that horizon is charged to the oldest of them. So an entity within its rate loses nothing,
in any order within the horizon, and one above it gets at most an interval's worth per
interval, in any order.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from selfheal.pipeline.core.eventtime import EventClock
from selfheal.pipeline.core.newcomers import Newcomers
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Envelope,
    Finding,
    Reject,
    RejectReason,
    Sample,
    Severity,
)

_INF = float("inf")
_U32 = 0xFFFFFFFF  # an interval's count saturates here (its array holds 32-bit counts)


@dataclass(frozen=True, slots=True)
class GuardConfig:
    max_future_seconds: float = 300.0
    max_past_seconds: float = 7 * 86400.0
    max_label_sets_per_series: int = 64
    rate_per_second: float = 50.0
    burst: float = 500.0
    max_entities: int = 100_000
    #: entities not seen before, admitted per event-time second after a burst (``newcomers.py``)
    new_entities_per_second: float = 200.0
    new_entities_burst: float = 20_000.0
    #: report a rate-limited entity at most once per this many event-time seconds
    report_every_seconds: float = 300.0
    #: records behind an entity's last one are counted per interval this long, over the last
    #: ``rate_intervals`` of them (the horizon)
    rate_interval_seconds: float = 60.0
    rate_intervals: int = 30


class _Bucket:
    """One entity's rate state: its token bucket (``tokens`` as of event time ``last``), the
    count admitted in its current interval (``n``; number ``k``, ending at ``end``) and in the
    ones before it (``counts``, a ring indexed by interval number)."""

    __slots__ = ("counts", "dropped", "end", "k", "last", "n", "reported", "tokens")

    def __init__(self, tokens: float, last: float, width: float, intervals: int) -> None:
        self.tokens = tokens
        self.last = last
        self.dropped = 0
        self.reported = float("-inf")
        self.restart(width, intervals)

    def restart(self, width: float, intervals: int) -> None:
        """Interval counts afresh (nothing admitted), the current interval ``last``'s."""
        self.k = int(self.last // width) if math.isfinite(self.last) else 0
        self.end = (self.k + 1) * width
        self.n = 0
        self.counts = array("I", bytes(4 * intervals))

    def advance(self, credit: float, width: float) -> None:
        """Make ``credit``'s interval (after the current one) the current one."""
        old = self.k
        k = int(credit // width)
        if k <= old:  # at least the next: the division may round below the border ``end`` was
            k = old + 1
        counts = self.counts
        size = len(counts)
        if k - old < size:
            n = self.n
            counts[old % size] = n if n < _U32 else _U32
            if k - old > 1:
                for i in range(old + 1, k):  # intervals without records
                    counts[i % size] = 0
        else:  # every interval of the ring passed: none of them admitted anything
            counts[:] = array("I", bytes(4 * size))
        self.k = k
        self.end = (k + 1) * width
        self.n = 0

    def late(self, credit: float, width: float, room: float) -> bool:
        """Admit a record behind the bucket's time if its interval has ``room`` left."""
        k = int(credit // width)
        counts = self.counts
        oldest = self.k - len(counts) + 1
        if k < oldest:  # older than the horizon: charged to the oldest interval counted
            k = oldest
        if k >= self.k:
            if self.n < room:
                self.n += 1
                return True
            return False
        i = k % len(counts)
        if counts[i] < room and counts[i] < _U32:
            counts[i] += 1
            return True
        return False

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: Any) -> None:
        """From ``__getstate__``, or a snapshot from before the interval counts (slots as
        ``(None, {...})``, no counts): its bucket is kept, its counts start afresh (as if
        nothing had been admitted; ``Guard.fit_to_config`` sizes them)."""
        if isinstance(state, tuple):
            state = state[1]
        self.tokens = float(state["tokens"])
        self.last = float(state["last"])
        self.dropped = int(state["dropped"])
        self.reported = float(state["reported"])
        counts = state.get("counts")
        if isinstance(counts, array) and counts.typecode == "I" and len(counts) > 0:
            self.counts = counts
            self.k, self.end, self.n = int(state["k"]), float(state["end"]), int(state["n"])
        else:
            self.counts, self.k, self.end, self.n = array("I", [0]), 0, math.nan, 0


class Guard:
    """
    >>> g = Guard(GuardConfig(rate_per_second=1.0, burst=2.0))
    >>> env = Envelope("t", 0, 0, b"")
    >>> [g.admit(env, "a", "m", None, 10.0, 10.0) is None for _ in range(3)]
    [True, True, False]
    """

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.buckets: LRU[str, _Bucket] = LRU("rate_buckets", config.max_entities)
        self.label_sets: LRU[tuple[str, str], set[Hashable]] = LRU(
            "label_sets", config.max_entities
        )
        self.newcomers = Newcomers(config.new_entities_per_second, config.new_entities_burst)
        self.findings: list[Finding] = []
        #: event-time admission for watermark runs (gaps pass, lone far-future records do not)
        self.events = EventClock(config.max_future_seconds, config.max_past_seconds)

    def time_state(self) -> dict[str, object]:
        return self.events.state()

    def restore_time_state(self, state: dict[str, object]) -> None:
        self.events.restore(state)

    def fit_to_config(self) -> None:
        """Bring restored buckets and label sets within this guard's (the running) bounds.

        A snapshot's tokens can exceed a lowered ``burst`` (a bucket refills only when its
        event time moves on) and its label sets a lowered ``max_label_sets_per_series``
        (known sets are always admitted): left alone, the old bounds would govern.
        """
        cfg = self.config
        width, size = cfg.rate_interval_seconds, cfg.rate_intervals
        for b in self.buckets.values():
            b.tokens = min(b.tokens, cfg.burst)
            if len(b.counts) != size or b.end != (b.k + 1) * width:
                b.restart(width, size)  # other intervals than the running config's
        cap = cfg.max_label_sets_per_series
        for key, sets in list(self.label_sets.items()):
            if len(sets) > cap:
                # which sets stay is arbitrary; sorted, every process keeps the same ones
                self.label_sets._data[key] = set(sorted(sets, key=repr)[:cap])

    def admit(
        self,
        env: Envelope,
        entity: str,
        metric: str,
        labels: Hashable | None,
        ts: float,
        reference: float | None,
        upto: float | None = None,
    ) -> Reject | None:
        """None when the record may enter; else the Reject. ``reference`` is "now".

        ``labels`` identifies the record's label set, hashably (the stage passes its series
        key, which holds the sorted labels); falsy for a record without labels. The token
        buckets' time moves no further than ``upto`` (default ``reference``, the clock; the stage
        passes the partition's time without one): one record stamped ahead would leave the
        entity's next records, stamped right, no tokens back until time caught up with it
        (minutes of its data rejected as rate limited).
        """
        # hot path (once per record): the LRUs' dicts directly and the common case inline;
        # a new bucket, an empty bucket or a reject takes the slow path
        cfg = self.config
        if reference is not None:
            if ts > reference + cfg.max_future_seconds:
                return Reject(
                    env,
                    RejectReason.TIMESTAMP_FUTURE,
                    "ts",
                    f"{ts - reference:.0f} s in the future (max {cfg.max_future_seconds:.0f})",
                )
            if ts < reference - cfg.max_past_seconds:
                return Reject(
                    env,
                    RejectReason.TIMESTAMP_PAST,
                    "ts",
                    f"{reference - ts:.0f} s in the past (max {cfg.max_past_seconds:.0f})",
                )
        if upto is None:
            upto = _INF if reference is None else reference
        credit = ts if ts <= upto else upto
        if entity not in self.buckets._data and not self.newcomers.admit(credit):
            return self._stranger(env, entity)
        if labels:
            key = (entity, metric)
            label_sets = self.label_sets._data
            sets = label_sets.get(key)
            if sets is None:
                sets = set()
                self.label_sets.put(key, sets)
            else:
                label_sets.move_to_end(key)
            # the label set itself, not its hash(): str hashes differ between processes, and
            # these sets travel in snapshots to whichever process takes the partition over
            h = labels
            if h not in sets:
                if len(sets) >= cfg.max_label_sets_per_series:
                    return Reject(
                        env,
                        RejectReason.LABEL_CARDINALITY,
                        "labels",
                        f"more than {cfg.max_label_sets_per_series} label sets for "
                        f"{entity}/{metric}",
                    )
                sets.add(h)
        buckets = self.buckets._data
        b = buckets.get(entity)
        if b is not None:
            buckets.move_to_end(entity)
            if b.last <= credit:  # in order
                if credit >= b.end:
                    b.advance(credit, cfg.rate_interval_seconds)
                if credit > b.last:
                    tokens = b.tokens + (credit - b.last) * cfg.rate_per_second
                    b.tokens = tokens if tokens < cfg.burst else cfg.burst
                    b.last = credit
                if b.tokens >= 1.0:
                    b.tokens -= 1.0
                    b.n += 1
                    return None
        return self._rate(env, entity, ts, credit)

    def admit_samples(
        self,
        samples: Sequence[tuple[Envelope, Sample]],
        keys: Sequence[Hashable],
        reference: float | None,
        upto: Sequence[float] | None = None,
    ) -> list[Reject | None]:
        """``admit`` for each of a batch's samples in order, against one ``reference``.

        ``keys`` are the samples' series keys (they hold the labels). Verdicts and state are
        those of one ``admit`` call per sample; the common case (in the time window, a known
        label set, a bucket with a token) is decided inline, without a call per sample.
        ``upto``: each sample's ``admit(upto=...)`` (default: ``reference``, the clock).
        """
        verdicts: list[Reject | None] = [None] * len(samples)
        cfg = self.config
        # the bounds ``admit`` computes per record, computed once (the same expressions)
        hi = _INF if reference is None else reference + cfg.max_future_seconds
        lo = -_INF if reference is None else reference - cfg.max_past_seconds
        label_sets = self.label_sets._data
        buckets = self.buckets._data
        rate, burst, width = cfg.rate_per_second, cfg.burst, cfg.rate_interval_seconds
        clock = _INF if reference is None else reference
        for i, ((env, s), key) in enumerate(zip(samples, keys, strict=True)):
            ts, entity = s.ts, s.entity
            cap = clock if upto is None else upto[i]
            b = buckets.get(entity)
            if ts > hi or ts < lo or b is None:
                verdicts[i] = self.admit(
                    env, entity, s.metric, key if s.labels else None, ts, reference, cap
                )
                continue
            if s.labels:
                pair = (entity, s.metric)
                sets = label_sets.get(pair)
                if sets is None or key not in sets:  # nothing changed yet: ``admit`` decides
                    verdicts[i] = self.admit(env, entity, s.metric, key, ts, reference, cap)
                    continue
                label_sets.move_to_end(pair)
            buckets.move_to_end(entity)
            credit = ts if ts <= cap else cap
            if b.last <= credit:
                if credit >= b.end:
                    b.advance(credit, width)
                if credit > b.last:
                    tokens = b.tokens + (credit - b.last) * rate
                    b.tokens = tokens if tokens < burst else burst
                    b.last = credit
                if b.tokens >= 1.0:
                    b.tokens -= 1.0
                    b.n += 1
                    continue
            verdicts[i] = self._rate(env, entity, ts, credit)
        return verdicts

    def _stranger(self, env: Envelope, entity: str) -> Reject:
        cfg = self.config
        return Reject(
            env,
            RejectReason.ENTITY_CARDINALITY,
            "entity",
            f"new entity {entity[:64]!r} not admitted: more than "
            f"{cfg.new_entities_per_second:g} new entities/s (burst "
            f"{cfg.new_entities_burst:.0f}) on this partition",
        )

    def _rate(self, env: Envelope, entity: str, ts: float, credit: float) -> Reject | None:
        """The rate limit's slow path: a new entity, a late record, a reject."""
        cfg = self.config
        width = cfg.rate_interval_seconds
        b = self.buckets.get(entity)
        if b is None:
            b = _Bucket(cfg.burst, credit, width, cfg.rate_intervals)
            self.buckets.put(entity, b)
        if credit >= b.last:
            if credit >= b.end:
                b.advance(credit, width)
            b.tokens = min(cfg.burst, b.tokens + (credit - b.last) * cfg.rate_per_second)
            b.last = credit
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                b.n += 1
                return None
        elif b.late(credit, width, cfg.rate_per_second * width + cfg.burst):
            return None
        b.dropped += 1
        if ts - b.reported >= cfg.report_every_seconds:
            b.reported = ts
            self.findings.append(
                Finding(
                    ts=ts,
                    entity=entity,
                    metric="messages",
                    detector="guard:rate_limit",
                    kind=AnomalyKind.RATE_LIMITED,
                    severity=Severity.WARNING,
                    score=float(b.dropped),
                    threshold=cfg.rate_per_second,
                    value=float(b.dropped),
                    evidence={
                        "rate_per_second": cfg.rate_per_second,
                        "burst": cfg.burst,
                        "dropped_total": b.dropped,
                    },
                )
            )
        return Reject(
            env,
            RejectReason.RATE_LIMITED,
            "entity",
            f"entity {entity[:64]!r} above {cfg.rate_per_second}/s (burst {cfg.burst:.0f})",
        )

    def drain_findings(self) -> list[Finding]:
        out, self.findings = self.findings, []
        return out


class FailureRatio:
    """Tumbling window over messages: reports when rejects exceed ``ratio`` of a window.

    Fed one outcome per message in input order, so window borders (and the findings) do not
    depend on how the source batched the messages. The finding's time is the event time of
    the last valid message seen, which keeps replay and live runs identical.
    """

    def __init__(self, window: int, ratio: float, source: str) -> None:
        self.window = window
        self.ratio = ratio
        self.source = source
        self.ok = 0
        self.failed = 0
        self.last_ts = 0.0
        self.by_field: dict[str, int] = {}

    def add(self, reject_field: str | None, ts: float | None) -> Finding | None:
        if reject_field is None:
            self.ok += 1
            if ts is not None and ts > self.last_ts:
                self.last_ts = ts
        else:
            self.failed += 1
            if reject_field in self.by_field or len(self.by_field) < 64:
                self.by_field[reject_field] = self.by_field.get(reject_field, 0) + 1
        total = self.ok + self.failed
        if total < self.window:
            return None
        share = self.failed / total
        finding = None
        if share > self.ratio:
            top = sorted(self.by_field.items(), key=lambda kv: -kv[1])[:5]
            finding = Finding(
                ts=self.last_ts,
                entity=f"selfheal:{self.source}",
                metric="input_validation",
                detector="guard:validation",
                kind=AnomalyKind.VALIDATION_FAILURES,
                severity=Severity.WARNING,
                score=share,
                threshold=self.ratio,
                value=float(self.failed),
                evidence={"window_messages": total, "failed": self.failed, "top_fields": dict(top)},
            )
        self.ok = self.failed = 0
        self.by_field = {}
        return finding
