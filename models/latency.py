"""Latency / generic-metric anomaly detector: contextual novelty + anomaly likelihood.

Any metric without a dedicated model (latencies, durations, CPU, traffic, ...) goes through
:class:`LatencyJudge`. The detector is a small streaming relative of HTM / CAD-style
"is this pattern new?" detectors, tuned on the NAB corpus (one configuration for every series):

1. **Symbols.** Each value is quantised into ``bins`` levels of the range seen so far (and, for
   robustness to bin edges, into ``bins_alt`` levels too). The range only ever uses past data,
   never the series' future min/max.
2. **Contextual novelty.** For every context order ``k`` in ``orders`` the transition
   ``(s[t-k], ..., s[t-1]) -> s[t]`` is looked up in counts over the last ``memory`` points, and
   so is the pair (time-of-day bucket of ``t``, one of ``daily_bins`` per UTC day; level): the
   raw score is the (``daily_weight``-weighted) fraction of those never seen in that memory. A
   value outside the range seen so far (by more than ``spatial_tolerance`` of it) is fully novel.
3. **Anomaly likelihood** (Numenta): the mean raw score of the last ``average`` points is
   compared with the running mean / std of those averages (exact over the first ``history``
   points, then exponentially weighted with weight ``1 / history``; std floored at
   ``std_floor``); ``z`` is that deviation, and the score is Numenta's log-likelihood
   ``-log10(2 Q(z) + 1e-10) / 10`` in [0, 1] (``Q`` the Gaussian tail). Scores are 0 during the
   first ``learning_period`` points.
4. **Alarm suppression.** Once ``z >= alarm_z`` the next ``suppress`` points score 0: one event
   per incident, and a persisting change is learned meanwhile instead of firing again.
5. **Severity** (judge): ``critical`` needs ``z >= critical_z`` *and* a material deviation of
   the value from the recent median (``material_ratio`` of it, and ``material_mads`` recent
   MADs); statistical novelty alone is at most a warning.

Deterministic (no randomness), O(1) per point, small fixed-size state (a few KB per series,
independent of the stream length: a symbol ring, a count table, two running moments), picklable.

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
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any

from selfheal.models.base import Judge
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, Sample, Severity

_LOG_1E_10 = math.log(1e-10)
#: values kept for the evidence and the materiality check of the severity
RECENT = 32
#: one point's (raw score, outside the range, symbols, transition keys, time-of-day bucket)
_Pre = tuple[float, bool, list[int], list[int], int]
_FLAG = 0x80  # high bit of a ring symbol: the point's transitions are in the counts
_SYM = 0x7F


@dataclass(frozen=True, slots=True)
class LatencyConfig:
    """The shipped configuration (tuned once on the 40 NAB tuning files, used for every series).

    The single source of the model's hyperparameters: ``LatencyDetector``, ``LatencyJudge``,
    ``selfheal score``, the registry and the tuning notebook all read them from here (keywords
    given to the detector or judge override these fields). Cross-validated NAB score of this
    setting and of its neighbours: ``benchmarks/nab.py``, BENCHMARKS.md.
    """

    bins: int = 6
    bins_alt: int = 5
    orders: tuple[int, ...] = (1, 2)
    memory: int = 800
    average: int = 5
    history: int = 4000
    learning_period: int = 300
    std_floor: float = 0.05
    alarm_z: float = 2.75
    critical_z: float = 5.0
    suppress: int = 75
    spatial_tolerance: float = 0.05
    daily_bins: int = 48
    daily_weight: float = 1.0
    material_ratio: float = 0.5
    material_mads: float = 6.0

    def __post_init__(self) -> None:
        if not 1 <= self.bins <= _SYM or not 0 <= self.bins_alt <= _SYM:
            raise ValueError(f"bins must be in [1, {_SYM}] and bins_alt in [0, {_SYM}]")
        if not self.orders or min(self.orders) < 1:
            raise ValueError("orders must be a non-empty tuple of ints >= 1")
        for name in ("memory", "average", "history"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.memory > 65535:
            raise ValueError("memory must be <= 65535 (16-bit transition counts)")
        if max(self.bins, self.bins_alt) >= 2 and max(self.orders) >= 20:
            # checked before the table size below, which would take forever to compute
            raise ValueError("orders too large: bins ** (order + 1) tables exceed 2**20 entries")
        table = sum(b ** (k + 1) for b in (self.bins, self.bins_alt) if b for k in self.orders)
        table += self.daily_bins * self.bins
        if table > 1 << 20:
            raise ValueError(f"bins ** (order + 1) tables too large ({table} entries)")
        if self.std_floor <= 0 or self.suppress < 0 or self.learning_period < 0:
            raise ValueError("std_floor must be > 0, suppress and learning_period >= 0")
        if self.critical_z < self.alarm_z:
            raise ValueError("critical_z must be >= alarm_z")
        if not 0 <= self.daily_bins <= 255 or self.daily_weight < 0:
            raise ValueError("daily_bins must be in [0, 255] and daily_weight >= 0")
        if self.material_ratio < 0 or self.material_mads < 0:
            raise ValueError("material_ratio and material_mads must be >= 0")


def z_to_score(z: float) -> float:
    """Numenta's log-scaled anomaly likelihood of a one-sided Gaussian deviation ``z``."""
    if z <= 0.0:
        return 0.0
    tail = math.erfc(z / math.sqrt(2.0))  # two-sided tail probability 2 Q(z)
    return min(1.0, max(0.0, math.log(tail + 1e-10) / _LOG_1E_10))


_DEFAULT_CONFIG = LatencyConfig()


def _normalise(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides of ``LatencyConfig`` fields (lists of orders become tuples)."""
    names = {f.name for f in fields(LatencyConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown LatencyConfig field(s): {', '.join(unknown)}")
    if "orders" in overrides:
        overrides = {**overrides, "orders": tuple(overrides["orders"])}
    return overrides


def _config_of(values: Sequence[Any]) -> LatencyConfig:
    """The shared config from its field values in order (as snapshots store it)."""
    names = [f.name for f in fields(LatencyConfig)]
    return _intern(LatencyConfig(**_normalise(dict(zip(names, values, strict=True)))))


#: score at which the shipped configuration emits events (the alarm level of ``LatencyConfig``)
DEFAULT_THRESHOLD: float = round(z_to_score(LatencyConfig().alarm_z), 6)
#: score above which a finding may be critical (if the value is also materially off)
DEFAULT_CRITICAL_THRESHOLD: float = round(z_to_score(LatencyConfig().critical_z), 6)


@lru_cache(maxsize=256)
def _intern(config: LatencyConfig) -> LatencyConfig:
    """One shared instance per distinct configuration (100k judges, one config object)."""
    return config


@dataclass(frozen=True, slots=True)
class _Layout:
    """Derived, immutable geometry of a configuration (shared by every detector using it)."""

    res: tuple[int, ...]  # levels per resolution
    orders: tuple[int, ...]
    max_order: int
    width: int  # ring length in points: memory + max_order (a leaving point keeps its context)
    stride: int  # ring bytes per point: one symbol per resolution (+ the time-of-day bucket)
    daily: int  # time-of-day buckets (0: no time-of-day context)
    daily_off: int  # first index of the (time-of-day bucket, symbol) counts
    offsets: tuple[tuple[int, ...], ...]  # [resolution][order] -> first index in the count table
    size: int  # entries of the count table
    n_keys: int
    use: tuple[bool, ...]  # [order] -> is that order counted

    @staticmethod
    @lru_cache(maxsize=256)
    def of(config: LatencyConfig) -> _Layout:
        res = (config.bins, config.bins_alt) if config.bins_alt else (config.bins,)
        max_order = max(config.orders)
        offsets: list[tuple[int, ...]] = []
        size = 0
        for b in res:
            row = [0] * (max_order + 1)
            for k in sorted(set(config.orders)):
                row[k] = size
                size += b ** (k + 1)
            offsets.append(tuple(row))
        daily_off = size
        size += config.daily_bins * config.bins
        return _Layout(
            res=res,
            orders=tuple(sorted(set(config.orders))),
            max_order=max_order,
            width=config.memory + max_order,
            stride=len(res) + (1 if config.daily_bins else 0),
            daily=config.daily_bins,
            daily_off=daily_off,
            offsets=tuple(offsets),
            size=size,
            n_keys=len(res) * len(set(config.orders)),
            use=tuple(k in config.orders for k in range(max_order + 1)),
        )


class LatencyDetector:
    """river-style online detector: ``score_one`` (pure) then ``learn_one`` for each point.

    ``learn_one(x, t, update_model=False)`` records the point in the context and the score
    statistics (and starts the alarm suppression) without teaching it to the novelty model or
    widening the range: that is how a judge avoids learning what it flagged.

    State (about 3 KB at the shipped configuration, independent of the stream length): a
    ``bytearray`` ring of the last ``memory + max(orders)`` symbols per resolution (high bit set
    when the point's transitions were counted), an ``array('H')`` transition count table, the
    last ``average`` raw scores, two floats for the likelihood's mean / variance and the last
    ``RECENT`` values.
    """

    __slots__ = (
        "_cooldown",
        "_counts",
        "_hn",
        "_lay",
        "_mean",
        "_raw",
        "_recent",
        "_ring",
        "_var",
        "config",
        "hi",
        "lo",
        "n",
    )

    def __init__(self, config: LatencyConfig | None = None, **overrides: Any) -> None:
        # the hyperparameters live once, in ``LatencyConfig``: keywords override its fields
        config = config or _DEFAULT_CONFIG
        if overrides:
            config = replace(config, **_normalise(overrides))
        self._reset(_intern(config))

    def _reset(self, config: LatencyConfig) -> None:
        self.config = config
        lay = self._lay = _Layout.of(config)
        self.lo: float | None = None
        self.hi: float | None = None
        self.n = 0
        self._ring = bytearray(lay.width * lay.stride)
        self._counts = array("H", bytes(2 * lay.size))
        self._raw = array("d", bytes(8 * config.average))
        self._hn = 0  # points in the likelihood statistics, capped at ``history``
        self._mean = 0.0
        self._var = 0.0
        self._cooldown = 0
        self._recent = array("d", bytes(8 * RECENT))

    @classmethod
    def from_config(cls, config: LatencyConfig) -> LatencyDetector:
        return cls(config)

    # compact pickles: the config as a tuple, the arrays as they are
    def __getstate__(self) -> tuple[Any, ...]:
        cfg = self.config
        return (
            tuple(getattr(cfg, f.name) for f in fields(cfg)),
            self.lo,
            self.hi,
            self.n,
            bytes(self._ring),
            self._counts,
            self._raw,
            self._hn,
            self._mean,
            self._var,
            self._cooldown,
            self._recent,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self._reset(_config_of(state[0]))
        (_, self.lo, self.hi, self.n, ring, self._counts, self._raw) = state[:7]
        self._ring = bytearray(ring)
        (self._hn, self._mean, self._var, self._cooldown, self._recent) = state[7:]

    # ------------------------------------------------------------------ internals

    def _symbols(self, x: float) -> tuple[list[int], bool]:
        """Quantised levels of ``x`` at each resolution and whether it leaves the known range."""
        lo, hi = self.lo, self.hi
        res = self._lay.res
        if lo is None or hi is None:
            return [0] * len(res), False
        tol = self.config.spatial_tolerance * (hi - lo)
        outside = self.n > 10 and (x > hi + tol or x < lo - tol)
        lo2, hi2 = min(lo, x), max(hi, x)
        rng2 = hi2 - lo2
        if rng2 <= 0.0:
            return [0] * len(res), outside
        frac = (x - lo2) / rng2 * (1.0 - 1e-9)
        return [int(frac * b) for b in res], outside

    def _keys(self, syms: list[int], i: int) -> list[int]:
        """Count-table indices of the transitions ending at point ``i`` with symbols ``syms``."""
        lay = self._lay
        ring, width, n_res, use = self._ring, lay.width, lay.stride, lay.use
        keys: list[int] = []
        for j, b in enumerate(lay.res):
            code, mult, off = syms[j], b, lay.offsets[j]
            for k in range(1, min(i, lay.max_order) + 1):
                code += (ring[((i - k) % width) * n_res + j] & _SYM) * mult
                mult *= b
                if use[k]:
                    keys.append(off[k] + code)
        return keys

    def _daily(self, t: float) -> int:
        """Time-of-day bucket of event time ``t`` (UTC epoch seconds)."""
        d = self._lay.daily
        return min(int(t % 86400.0 / 86400.0 * d), d - 1)

    def _raw_score(self, x: float, t: float) -> _Pre:
        lay = self._lay
        syms, outside = self._symbols(x)
        keys = self._keys(syms, self.n)
        counts = self._counts
        novel = float(sum(1 for key in keys if not counts[key]))
        hour, n_keys = 0, float(lay.n_keys)
        if lay.daily:
            # is this level new at this time of day? (daily seasonality of the metric)
            hour = self._daily(t)
            w = self.config.daily_weight
            novel += w * (not counts[lay.daily_off + hour * lay.res[0] + syms[0]])
            n_keys += w
        raw = 1.0 if outside else novel / n_keys
        return raw, outside, syms, keys, hour

    def _z(self, raw: float, outside: bool) -> float:
        cfg = self.config
        if self.n < cfg.learning_period or self._hn == 0:
            return 0.0
        if outside:
            avg = 1.0  # a value outside everything seen is judged at once, not averaged away
        else:
            m = cfg.average
            if self.n >= m:
                avg = (sum(self._raw) - self._raw[self.n % m] + raw) / m
            else:
                avg = (sum(self._raw) + raw) / (self.n + 1)
        return (avg - self._mean) / max(math.sqrt(self._var), cfg.std_floor)

    def _details(self, x: float, t: float, pre: _Pre | None = None) -> tuple[float, float, float]:
        """(score, z, raw) of ``x`` at ``t`` without changing any state."""
        raw, outside, _, _, _ = pre or self._raw_score(x, t)
        if self._cooldown > 0:
            return 0.0, 0.0, raw
        z = self._z(raw, outside)
        return z_to_score(z), z, raw

    # ------------------------------------------------------------------ river API

    def score_one(self, x: float, t: float) -> float:
        """Anomaly score in [0, 1] of ``x`` at event time ``t`` given the past (pure)."""
        return self._details(float(x), float(t))[0]

    def learn_one(self, x: float, t: float, *, update_model: bool = True) -> None:
        self._learn(float(x), float(t), update_model)

    def score_learn_one(self, x: float, t: float) -> float:
        """``score_one`` then ``learn_one`` in one pass (the fast path for whole series)."""
        return self._learn(float(x), float(t), True)

    def _learn(self, x: float, t: float, update_model: bool, pre: _Pre | None = None) -> float:
        # ``pre``: this point's ``_raw_score`` when the caller already computed it (the judge)
        cfg, lay = self.config, self._lay
        n = self.n
        raw, outside, syms, keys, hour = pre or self._raw_score(x, t)
        if self._cooldown > 0:
            self._cooldown -= 1
            score = 0.0
        else:
            z = self._z(raw, outside)
            score = z_to_score(z)
            if z >= cfg.alarm_z:
                self._cooldown = cfg.suppress
        # raw-score average and its running mean / variance (the likelihood's distribution):
        # exact over all points up to ``history``, then exponentially weighted with 1/history
        self._raw[n % cfg.average] = raw
        avg = sum(self._raw) / min(n + 1, cfg.average)
        self._hn = min(self._hn + 1, cfg.history)
        alpha = 1.0 / self._hn
        d = avg - self._mean
        inc = alpha * d
        self._mean += inc
        self._var = (1.0 - alpha) * (self._var + d * inc)
        # the novelty model counts the transitions of the counted points among the last
        # ``memory`` points: the point leaving that window gives its counts back
        ring, width, stride, counts = self._ring, lay.width, lay.stride, self._counts
        n_res = len(lay.res)
        old = n - cfg.memory
        if old >= 0 and ring[(old % width) * stride] & _FLAG:
            at = (old % width) * stride
            old_syms = [ring[at + j] & _SYM for j in range(n_res)]
            for key in self._keys(old_syms, old):
                counts[key] -= 1
            if lay.daily:
                counts[lay.daily_off + ring[at + n_res] * lay.res[0] + old_syms[0]] -= 1
        flag = 0
        if update_model:
            flag = _FLAG
            for key in keys:
                counts[key] += 1
            if lay.daily:
                counts[lay.daily_off + hour * lay.res[0] + syms[0]] += 1
            if self.lo is None or self.hi is None:
                self.lo = self.hi = x
            elif x < self.lo:
                self.lo = x
            elif x > self.hi:
                self.hi = x
        base = (n % width) * stride
        for j, s in enumerate(syms):
            ring[base + j] = s | flag
        if lay.daily:
            ring[base + n_res] = hour
        self._recent[n % RECENT] = x
        self.n = n + 1
        return score

    # ------------------------------------------------------------------ evidence

    def _recent_values(self) -> list[float]:
        return list(self._recent[: min(self.n, RECENT)])

    def material(self, x: float) -> tuple[bool, float | None, float | None]:
        """Is ``x`` materially away from the recent values? (material, ratio, deviation in MADs).

        Material means ``|x - median| >= max(material_mads * MAD, material_ratio * |median|)``
        over the last ``RECENT`` values (MAD scaled to a Gaussian sigma): a value 10 % above
        the recent maximum of a quiet series is novel but not material; 5x the median is.
        """
        recent = self._recent_values()
        if not recent:
            return False, None, None
        med = statistics.median(recent)
        mad = 1.4826 * statistics.median(abs(v - med) for v in recent)
        dev = abs(float(x) - med)
        cfg = self.config
        need = max(cfg.material_mads * mad, cfg.material_ratio * abs(med))
        ratio = float(x) / med if med > 0.0 else None
        mads = dev / mad if mad > 0.0 else None
        return dev > 0.0 and dev >= need, ratio, mads

    def evidence(self, x: float, t: float = 0.0) -> dict[str, Any]:
        """What a human needs to judge a score of ``x`` at ``t`` (JSON-serialisable)."""
        _, z, raw = self._details(float(x), float(t))
        recent = self._recent_values()
        material, ratio, mads = self.material(x)
        return {
            "z": round(z, 4),
            "novelty": round(raw, 4),
            "baseline_novelty": round(self._mean, 4),
            "recent_median": statistics.median(recent) if recent else None,
            "recent_min": min(recent) if recent else None,
            "recent_max": max(recent) if recent else None,
            "ratio_to_median": None if ratio is None else round(ratio, 4),
            "deviation_mads": None if mads is None else round(mads, 2),
            "material": material,
            "range_low": self.lo,
            "range_high": self.hi,
            "points_seen": self.n,
        }

    def state_size(self) -> int:
        """Number of stored items (fixed by the configuration, for bounded-state checks)."""
        return len(self._ring) + len(self._counts) + len(self._raw) + len(self._recent) + 6


class LatencyJudge(Judge):
    """Per-series judge: score, report a ``latency_anomaly`` finding, learn unless flagged.

    A flagged point is not taught to the novelty model (no poisoning); the detector still
    records it and suppresses repeats for ``suppress`` points, during which the new regime is
    learned. As a second guard, after ``relearn_after`` consecutive flags points are learned
    anyway, so a permanent change stops firing even with a lower custom threshold.

    Severity: ``critical`` when the score reaches ``critical_threshold`` (default: the score of
    ``critical_z``) **and** the value is materially off the recent values
    (:meth:`LatencyDetector.material`); otherwise ``warning``. The policy repairs on critical
    findings, so a value a little above anything seen on a healthy service must not be one.

    >>> from selfheal.pipeline.kernel.types import Sample
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
        config: LatencyConfig | None = None,
        threshold: float | None = None,
        critical_threshold: float | None = None,
        relearn_after: int = 5,
        **overrides: Any,
    ) -> None:
        config = config or _DEFAULT_CONFIG
        if overrides:  # ``LatencyJudge(suppress=0)``: a field of ``LatencyConfig`` overridden
            config = replace(config, **_normalise(overrides))
        self.config = _intern(config)
        self.threshold = threshold
        self.critical_threshold = critical_threshold
        self.relearn_after = relearn_after
        self.detector = LatencyDetector(self.config)
        alarm_z, critical_z = config.alarm_z, config.critical_z
        self._threshold = z_to_score(alarm_z) if threshold is None else threshold
        self._critical = (
            z_to_score(critical_z) if critical_threshold is None else critical_threshold
        )
        self._flag_run = 0

    # the config travels as a tuple of its fields (plain data for snapshots), shared on restore
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["config"] = tuple(getattr(self.config, f.name) for f in fields(self.config))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["config"] = _config_of(state["config"])
        self.__dict__.update(state)

    def observe(self, sample: Sample) -> list[Finding]:
        det = self.detector
        x, t = float(sample.value), float(sample.ts)
        if not math.isfinite(x):
            return []  # a NaN/inf sample carries no information and must not corrupt state
        pre = det._raw_score(x, t)  # computed once for scoring and learning
        score = det._details(x, t, pre)[0]
        findings: list[Finding] = []
        if score >= self._threshold:
            self._flag_run += 1
            evidence = det.evidence(x, t)
            evidence["consecutive_flags"] = self._flag_run
            critical = score >= self._critical and bool(evidence["material"])
            findings.append(
                Finding(
                    ts=t,
                    entity=sample.entity,
                    metric=sample.metric,
                    detector=self.name,
                    kind=AnomalyKind.LATENCY_ANOMALY,
                    severity=Severity.CRITICAL if critical else Severity.WARNING,
                    score=score,
                    threshold=self._threshold,
                    value=x,
                    evidence=evidence,
                    labels=dict(sample.labels),
                )
            )
            # a flagged point must not poison the model, unless the "anomaly" has persisted
            det._learn(x, t, self._flag_run > self.relearn_after, pre)
        else:
            self._flag_run = 0
            det._learn(x, t, True, pre)
        return findings
