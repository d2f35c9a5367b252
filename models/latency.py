"""Latency / generic-metric anomaly detector: contextual novelty + anomaly likelihood.

Any metric without a dedicated model (latencies, durations, CPU, traffic, ...) goes through
:class:`LatencyJudge`. The detector is a small streaming relative of HTM / CAD-style
"is this pattern new?" detectors, tuned on the NAB corpus (one configuration for every series):

1. **Symbols.** Each value is quantised into ``bins`` levels of the range seen so far (and, for
   robustness to bin edges, into ``bins_alt`` levels too). The range only ever uses past data,
   never the series' future min/max.
2. **Contextual novelty.** For every context order ``k`` in ``orders`` the transition
   ``(s[t-k], ..., s[t-1]) -> s[t]`` is looked up in counts over the last ``memory`` points; the raw
   score is the fraction of (order, resolution) transitions never seen in that memory. A value
   outside the range seen so far is fully novel (raw 1).
3. **Anomaly likelihood** (Numenta): the mean raw score of the last ``average`` points is
   compared with the mean / std of the last ``history`` such averages (std floored at
   ``std_floor``); ``z`` is that deviation, and the score is Numenta's log-likelihood
   ``-log10(2 Q(z) + 1e-10) / 10`` in [0, 1] (``Q`` the Gaussian tail). Scores are 0 during the
   first ``learning_period`` points.
4. **Alarm suppression.** Once ``z >= alarm_z`` the next ``suppress`` points score 0: one event
   per incident, and a persisting change is learned meanwhile instead of firing again.

Deterministic (no randomness), O(1) amortised per point, bounded state (deques with ``maxlen``
and counts over a fixed memory), picklable.

>>> det = LatencyDetector()
>>> for i in range(600):
...     x = 100.0 + (i % 7)  # a steady repeating pattern
...     det.learn_one(x, 60.0 * i)
>>> det.score_one(106.0, 36000.0) < DEFAULT_THRESHOLD  # seen before
True
>>> det.score_one(250.0, 36000.0) >= DEFAULT_THRESHOLD  # far outside anything seen
True
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from models.base import Judge
from pipeline.types import AnomalyKind, Finding, Sample, Severity

_LOG_1E_10 = math.log(1e-10)


@dataclass(frozen=True, slots=True)
class LatencyConfig:
    """The shipped configuration (tuned once on the 40 NAB tuning files, used for every series)."""

    bins: int = 6
    bins_alt: int = 5
    orders: tuple[int, ...] = (1, 2)
    memory: int = 800
    average: int = 5
    history: int = 8000
    learning_period: int = 300
    std_floor: float = 0.05
    alarm_z: float = 2.75
    critical_z: float = 5.0
    suppress: int = 200
    spatial_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.bins < 1 or self.bins_alt < 0:
            raise ValueError("bins must be >= 1 and bins_alt >= 0")
        if not self.orders or min(self.orders) < 1:
            raise ValueError("orders must be a non-empty tuple of ints >= 1")
        for name in ("memory", "average", "history"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.std_floor <= 0 or self.suppress < 0 or self.learning_period < 0:
            raise ValueError("std_floor must be > 0, suppress and learning_period >= 0")
        if self.critical_z < self.alarm_z:
            raise ValueError("critical_z must be >= alarm_z")


def z_to_score(z: float) -> float:
    """Numenta's log-scaled anomaly likelihood of a one-sided Gaussian deviation ``z``."""
    if z <= 0.0:
        return 0.0
    tail = math.erfc(z / math.sqrt(2.0))  # two-sided tail probability 2 Q(z)
    return min(1.0, max(0.0, math.log(tail + 1e-10) / _LOG_1E_10))


#: score at which the shipped configuration emits events (the alarm level of ``LatencyConfig``)
DEFAULT_THRESHOLD: float = round(z_to_score(LatencyConfig().alarm_z), 6)
#: score above which a finding is critical
DEFAULT_CRITICAL_THRESHOLD: float = round(z_to_score(LatencyConfig().critical_z), 6)


class LatencyDetector:
    """river-style online detector: ``score_one`` (pure) then ``learn_one`` for each point.

    ``learn_one(x, t, update_model=False)`` records the point in the context and the score
    history (and starts the alarm suppression) without teaching it to the novelty model or
    widening the range: that is how a judge avoids learning what it flagged.
    """

    def __init__(
        self,
        bins: int = 6,
        bins_alt: int = 5,
        orders: tuple[int, ...] = (1, 2),
        memory: int = 800,
        average: int = 5,
        history: int = 8000,
        learning_period: int = 300,
        std_floor: float = 0.05,
        alarm_z: float = 2.75,
        critical_z: float = 5.0,
        suppress: int = 200,
        spatial_tolerance: float = 0.05,
    ) -> None:
        self.config = LatencyConfig(
            bins=bins,
            bins_alt=bins_alt,
            orders=tuple(orders),
            memory=memory,
            average=average,
            history=history,
            learning_period=learning_period,
            std_floor=std_floor,
            alarm_z=alarm_z,
            critical_z=critical_z,
            suppress=suppress,
            spatial_tolerance=spatial_tolerance,
        )
        cfg = self.config
        self._resolutions: tuple[int, ...] = (
            (cfg.bins, cfg.bins_alt) if cfg.bins_alt else (cfg.bins,)
        )
        self._max_order = max(cfg.orders)
        self._n_keys = len(self._resolutions) * len(cfg.orders)
        self.lo: float | None = None
        self.hi: float | None = None
        # last max_order symbols per resolution (the context of the next transition)
        self._ctx: list[deque[int]] = [deque(maxlen=self._max_order) for _ in self._resolutions]
        self._counts: dict[tuple[int, ...], int] = {}
        self._events: deque[tuple[int, ...]] = deque()  # bounded by memory * n_keys
        self._raw: deque[float] = deque(maxlen=cfg.average)
        self._raw_sum = 0.0
        self._hist: deque[float] = deque(maxlen=cfg.history)
        self._hist_sum = 0.0
        self._hist_sq = 0.0
        self._since_resum = 0
        self._cooldown = 0
        self.n = 0
        self.recent: deque[float] = deque(maxlen=16)  # for evidence only

    @classmethod
    def from_config(cls, config: LatencyConfig) -> LatencyDetector:
        return cls(**asdict(config))

    # ------------------------------------------------------------------ internals

    def _symbols(self, x: float) -> tuple[list[int], bool]:
        """Quantised levels of ``x`` at each resolution and whether it leaves the known range."""
        lo, hi = self.lo, self.hi
        if lo is None or hi is None:
            return [0] * len(self._resolutions), False
        rng = hi - lo
        tol = self.config.spatial_tolerance * rng
        outside = self.n > 10 and (x > hi + tol or x < lo - tol)
        lo2, hi2 = min(lo, x), max(hi, x)
        rng2 = hi2 - lo2
        if rng2 <= 0.0:
            return [0] * len(self._resolutions), outside
        frac = (x - lo2) / rng2 * (1.0 - 1e-9)
        return [int(frac * b) for b in self._resolutions], outside

    def _keys(self, syms: list[int]) -> list[tuple[int, ...]]:
        keys: list[tuple[int, ...]] = []
        for j, s in enumerate(syms):
            ctx = tuple(self._ctx[j])
            n_ctx = len(ctx)
            for k in self.config.orders:
                if n_ctx >= k:
                    keys.append((j, k, *ctx[n_ctx - k :], s))
        return keys

    def _raw_score(self, x: float) -> tuple[float, bool, list[int], list[tuple[int, ...]]]:
        syms, outside = self._symbols(x)
        keys = self._keys(syms)
        counts = self._counts
        novel = sum(1 for key in keys if key not in counts)
        raw = 1.0 if outside else novel / self._n_keys
        return raw, outside, syms, keys

    def _z(self, raw: float, outside: bool) -> float:
        cfg = self.config
        raw_q = self._raw
        if outside:
            avg = 1.0  # a value outside everything seen is judged at once, not averaged away
        elif len(raw_q) == cfg.average:
            avg = (self._raw_sum - raw_q[0] + raw) / cfg.average
        else:
            avg = (self._raw_sum + raw) / (len(raw_q) + 1)
        m = len(self._hist)
        if self.n < cfg.learning_period or m == 0:
            return 0.0
        mean = self._hist_sum / m
        var = max(self._hist_sq / m - mean * mean, 0.0)
        return (avg - mean) / max(math.sqrt(var), cfg.std_floor)

    def _details(self, x: float) -> tuple[float, float, float]:
        """(score, z, raw) of ``x`` without changing any state."""
        raw, outside, _, _ = self._raw_score(x)
        if self._cooldown > 0:
            return 0.0, 0.0, raw
        z = self._z(raw, outside)
        return z_to_score(z), z, raw

    # ------------------------------------------------------------------ river API

    def score_one(self, x: float, t: float) -> float:
        """Anomaly score in [0, 1] of ``x`` given the past (``t`` is not used: point count)."""
        return self._details(float(x))[0]

    def learn_one(self, x: float, t: float, *, update_model: bool = True) -> None:
        self._learn(float(x), update_model)

    def score_learn_one(self, x: float, t: float) -> float:
        """``score_one`` then ``learn_one`` in one pass (the fast path for whole series)."""
        return self._learn(float(x), True)

    def _learn(self, x: float, update_model: bool) -> float:
        cfg = self.config
        raw, outside, syms, keys = self._raw_score(x)
        if self._cooldown > 0:
            self._cooldown -= 1
            score = 0.0
        else:
            z = self._z(raw, outside)
            score = z_to_score(z)
            if z >= cfg.alarm_z:
                self._cooldown = cfg.suppress
        # raw-score average and its history (the likelihood's distribution)
        if len(self._raw) == cfg.average:
            self._raw_sum -= self._raw[0]
        self._raw.append(raw)
        self._raw_sum += raw
        avg = self._raw_sum / len(self._raw)
        if len(self._hist) == cfg.history:
            old = self._hist[0]
            self._hist_sum -= old
            self._hist_sq -= old * old
        self._hist.append(avg)
        self._hist_sum += avg
        self._hist_sq += avg * avg
        self._since_resum += 1
        if self._since_resum >= cfg.history:  # bound float drift of the running sums
            self._hist_sum = math.fsum(self._hist)
            self._hist_sq = math.fsum(v * v for v in self._hist)
            self._since_resum = 0
        if update_model:
            counts = self._counts
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
                self._events.append(key)
            limit = cfg.memory * self._n_keys
            while len(self._events) > limit:
                old_key = self._events.popleft()
                c = counts[old_key] - 1
                if c:
                    counts[old_key] = c
                else:
                    del counts[old_key]
            if self.lo is None or self.hi is None:
                self.lo = self.hi = x
            elif x < self.lo:
                self.lo = x
            elif x > self.hi:
                self.hi = x
        for j, s in enumerate(syms):
            self._ctx[j].append(s)
        self.recent.append(x)
        self.n += 1
        return score

    # ------------------------------------------------------------------ evidence

    def evidence(self, x: float) -> dict[str, Any]:
        """What a human needs to judge a score of ``x`` (JSON-serialisable)."""
        _, z, raw = self._details(float(x))
        m = len(self._hist)
        mean = self._hist_sum / m if m else 0.0
        recent = list(self.recent)
        return {
            "z": round(z, 4),
            "novelty": round(raw, 4),
            "baseline_novelty": round(mean, 4),
            "recent_median": statistics.median(recent) if recent else None,
            "recent_min": min(recent) if recent else None,
            "recent_max": max(recent) if recent else None,
            "range_low": self.lo,
            "range_high": self.hi,
            "points_seen": self.n,
        }

    def state_size(self) -> int:
        """Number of stored items (for bounded-state checks)."""
        return (
            len(self._counts)
            + len(self._events)
            + len(self._raw)
            + len(self._hist)
            + sum(len(c) for c in self._ctx)
            + len(self.recent)
        )


class LatencyJudge(Judge):
    """Per-series judge: score, report a ``latency_anomaly`` finding, learn unless flagged.

    A flagged point is not taught to the novelty model (no poisoning); the detector still
    records it and suppresses repeats for ``suppress`` points, during which the new regime is
    learned. As a second guard, after ``relearn_after`` consecutive flags points are learned
    anyway, so a permanent change stops firing even with a lower custom threshold.

    >>> from pipeline.types import Sample
    >>> judge = LatencyJudge()
    >>> findings = []
    >>> for i in range(700):
    ...     v = 0.2 + 0.01 * (i % 5) if i != 650 else 5.0
    ...     findings += judge.observe(Sample(ts=60.0 * i, entity="api", metric="latency", value=v))
    >>> [(f.ts, f.kind.value, f.severity.value) for f in findings]
    [(39000.0, 'latency_anomaly', 'critical')]
    """

    name = "latency"

    def __init__(
        self,
        bins: int = 6,
        bins_alt: int = 5,
        orders: tuple[int, ...] = (1, 2),
        memory: int = 800,
        average: int = 5,
        history: int = 8000,
        learning_period: int = 300,
        std_floor: float = 0.05,
        alarm_z: float = 2.75,
        critical_z: float = 5.0,
        suppress: int = 200,
        spatial_tolerance: float = 0.05,
        threshold: float | None = None,
        critical_threshold: float | None = None,
        relearn_after: int = 5,
    ) -> None:
        self.bins = bins
        self.bins_alt = bins_alt
        self.orders = tuple(orders)
        self.memory = memory
        self.average = average
        self.history = history
        self.learning_period = learning_period
        self.std_floor = std_floor
        self.alarm_z = alarm_z
        self.critical_z = critical_z
        self.suppress = suppress
        self.spatial_tolerance = spatial_tolerance
        self.threshold = threshold
        self.critical_threshold = critical_threshold
        self.relearn_after = relearn_after
        self.detector = LatencyDetector(
            bins=bins,
            bins_alt=bins_alt,
            orders=self.orders,
            memory=memory,
            average=average,
            history=history,
            learning_period=learning_period,
            std_floor=std_floor,
            alarm_z=alarm_z,
            critical_z=critical_z,
            suppress=suppress,
            spatial_tolerance=spatial_tolerance,
        )
        self._threshold = z_to_score(alarm_z) if threshold is None else threshold
        self._critical = (
            z_to_score(critical_z) if critical_threshold is None else critical_threshold
        )
        self._flag_run = 0

    def observe(self, sample: Sample) -> list[Finding]:
        det = self.detector
        x, t = float(sample.value), float(sample.ts)
        if not math.isfinite(x):
            return []  # a NaN/inf sample carries no information and must not corrupt state
        score = det.score_one(x, t)
        findings: list[Finding] = []
        if score >= self._threshold:
            self._flag_run += 1
            evidence = det.evidence(x)
            evidence["consecutive_flags"] = self._flag_run
            findings.append(
                Finding(
                    ts=t,
                    entity=sample.entity,
                    metric=sample.metric,
                    detector=self.name,
                    kind=AnomalyKind.LATENCY_ANOMALY,
                    severity=Severity.CRITICAL if score >= self._critical else Severity.WARNING,
                    score=score,
                    threshold=self._threshold,
                    value=x,
                    evidence=evidence,
                    labels=dict(sample.labels),
                )
            )
            # a flagged point must not poison the model, unless the "anomaly" has persisted
            det.learn_one(x, t, update_model=self._flag_run > self.relearn_after)
        else:
            self._flag_run = 0
            det.learn_one(x, t)
        return findings
