"""Time-to-limit forecast for any resource that runs out: memory, disk, descriptors, pools, queues.

One model for every row of ``selfheal.models.resources.RESOURCES``: usage that grows steadily
towards its limit is extrapolated to the moment it reaches the limit, and a finding carries
that ``forecast.eta_seconds``. Memory reports ``memory_leak`` (``selfheal.models.memory``),
every other resource ``resource_exhaustion`` with ``evidence["resource"]``. The limit is the
sample's ``limit`` field, or the latest value of the paired limit metric of the same series
(``Resource.metrics``), or the ``limit`` hyperparameter.

Usage is reduced to *floors*: the minimum of each ``bucket_seconds`` bucket, stamped at the
time of that minimum. A sawtooth (garbage collection, log rotation, pool recycling) whose period
is shorter than a bucket therefore disappears (only its troughs remain), and the peak-to-trough
spread is tracked separately so the forecast targets the moment the *peaks* reach the limit (an
OOM kill, a full disk, a refused connection).

On every closed bucket the floors are fitted with Theil-Sen (median of pairwise slopes, robust to
noise and outliers) over windows of growing length (``min_history_seconds`` x
``window_growth``^k, up to ``max_window_seconds``). A window counts as *sustained growth* only if

* the rise over the window is significant (``min_rise_fraction`` of the limit and
  ``rise_sigmas`` x the robust residual scale),
* each quarter of the window climbs at ``quarter_ratio`` x the window slope or more (a deploy
  step followed by a flat line has flat quarters: a step is not a trend),
* the growth is not decelerating: the slope *now* (end derivative of a quadratic fitted to the
  last ``recent_seconds``) is at least ``recent_ratio`` x the window slope, and the last third
  of the window climbs at ``decel_ratio`` x the steeper of the first two thirds (a cache that
  fills and levels off, or the rising half of a daily cycle past its inflection, decelerates),
* with a day of floors available, today's floor exceeds yesterday's by ``dod_ratio`` x the
  growth the slope implies (a 24 h cycle does not grow day over day).

The longest passing window is the *span* of evidence. The breach is projected from the
current level with the slope of the span or, with ``cautious_slope``, the slowest of the span's
slope, its recent half's and the end slope of the quadratic (a decelerating rise is projected
at the speed it has now, not its average). A finding is emitted when the predicted breach
``eta`` is inside ``horizon_seconds`` **and** ``eta <= extrapolation_factor * span``: we do not
extrapolate further than we have watched the growth. Within its first day a daily cycle cannot
be told from a leak by the day-over-day check; these two rules are what keep its rising half
quiet while a real leak still gets flagged hours before the limit
(``benchmarks/resource_forecast.py``: tuned on seeds apart from the held-out ones). Memory
decides with its own settings (``selfheal.models.memory``: the span's slope, 1.2x, and the
start-up left out), chosen the same way by ``benchmarks/memory_leak.py --tune``.

A level shift resets the fit: a drop of ``reset_drop_fraction`` x limit below the recent floors
(restart, the leak is cleared) wipes the state and stops findings; two floors in a row
``step_fraction`` x limit above them (deploy with a bigger footprint) restart the fit from the
first of them (one high floor is noise on a small pool, and a fast leak there kept resetting).
With ``startup_seconds`` (memory's default; 0 for the other resources) the floors of that long
after the fit began (a start, a restart, a step) stay out of the windows: the warm-up of a fresh
process is a rise, not a trend, and inside a window it steepened the slope enough for a daily
cycle rising from its trough just after a start to pass in its first day.

river's online regressors (SGD ``LinearRegression``) are not robust to steps and sawtooth
outliers and need feature scaling, so the fit is numpy Theil-Sen on a bounded deque of floors
(``max_history_seconds / bucket_seconds`` points, decimated to ``max_fit_points`` per fit).

>>> from selfheal.pipeline.kernel.types import Sample
>>> judge = ResourceForecastJudge(resource="file_descriptors")
>>> t0 = 1_795_842_000.0
>>> found = []
>>> for i in range(int(8 * 3600 / 30)):  # 8 h: +80 descriptors an hour, limit 1024
...     t = t0 + 30 * i
...     v = 200 + 80 * (t - t0) / 3600 + (i % 10)
...     found += judge.observe(Sample(t, "api-1", "process_max_fds", 1024.0))
...     found += judge.observe(Sample(t, "api-1", "process_open_fds", float(int(v))))
>>> f = found[0]
>>> f.kind.value, f.evidence["resource"], f.evidence["limit"]
('resource_exhaustion', 'file_descriptors', 1024.0)
>>> 0 < f.forecast.eta_seconds < 8 * 3600
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

# the fits' exact fast paths (cached pair/stride indices, partition median)
from selfheal.models._fit import decimate as _decimate
from selfheal.models._fit import median as _median
from selfheal.models._fit import theil_sen as _theil_sen
from selfheal.models.base import Judge
from selfheal.models.resources import RESOURCES
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, Forecast, Sample, Severity


@dataclass(frozen=True)
class GrowthParams:
    """The forecast's hyperparameters (shipped defaults, one set for every series)."""

    horizon_seconds: float = 24 * 3600.0
    min_history_seconds: float = 2 * 3600.0
    max_window_seconds: float = 24 * 3600.0
    max_history_seconds: float = 26 * 3600.0
    bucket_seconds: float = 300.0
    limit: float | None = None
    # 1.0 with the cautious slope: no alarm on the tuning controls (1.2 alarmed on a daily
    # cycle rising through its first day), see benchmarks/resource_forecast.py --tune;
    # memory has its own (MemoryLeakConfig)
    extrapolation_factor: float = 1.0
    min_rise_fraction: float = 0.02
    rise_sigmas: float = 4.0
    quarter_ratio: float = 0.5
    recent_seconds: float = 4 * 3600.0
    recent_ratio: float = 0.6
    decel_ratio: float = 0.85
    dod_ratio: float = 0.5
    cycle_seconds: float = 24 * 3600.0
    reset_drop_fraction: float = 0.10
    step_fraction: float = 0.05
    # floors this soon after the fit began (start, restart, step) are left out; memory has its
    # own (MemoryLeakConfig), the other resources none
    startup_seconds: float = 0.0
    # project from the slowest of the window's, its recent half's and the end-of-curve slope:
    # the rising half of a daily cycle past its inflection is slower *now* than on average
    cautious_slope: bool = True
    critical_eta_seconds: float = 2 * 3600.0
    reemit_seconds: float = 3600.0
    reemit_eta_factor: float = 0.5
    clear_after_seconds: float = 3 * 3600.0
    max_fit_points: int = 48
    window_growth: float = 1.5


_G = GrowthParams()
GROWTH_PARAMS: tuple[str, ...] = tuple(f.name for f in fields(GrowthParams))


class ResourceForecastJudge(Judge):
    """Per-series time-to-limit forecaster for one resource; see the module docstring."""

    name = "resource_forecast"
    #: a snapshot taken before the setting existed restores without it (the old behaviour)
    startup_seconds = 0.0

    def __init__(
        self,
        resource: str = "memory",
        metrics: tuple[str, ...] | None = None,
        horizon_seconds: float = _G.horizon_seconds,
        min_history_seconds: float = _G.min_history_seconds,
        max_window_seconds: float = _G.max_window_seconds,
        max_history_seconds: float = _G.max_history_seconds,
        bucket_seconds: float = _G.bucket_seconds,
        limit: float | None = _G.limit,
        extrapolation_factor: float = _G.extrapolation_factor,
        min_rise_fraction: float = _G.min_rise_fraction,
        rise_sigmas: float = _G.rise_sigmas,
        quarter_ratio: float = _G.quarter_ratio,
        recent_seconds: float = _G.recent_seconds,
        recent_ratio: float = _G.recent_ratio,
        decel_ratio: float = _G.decel_ratio,
        dod_ratio: float = _G.dod_ratio,
        cycle_seconds: float = _G.cycle_seconds,
        reset_drop_fraction: float = _G.reset_drop_fraction,
        step_fraction: float = _G.step_fraction,
        startup_seconds: float = _G.startup_seconds,
        cautious_slope: bool = _G.cautious_slope,
        critical_eta_seconds: float = _G.critical_eta_seconds,
        reemit_seconds: float = _G.reemit_seconds,
        reemit_eta_factor: float = _G.reemit_eta_factor,
        clear_after_seconds: float = _G.clear_after_seconds,
        max_fit_points: int = _G.max_fit_points,
        window_growth: float = _G.window_growth,
    ) -> None:
        if resource not in RESOURCES:
            raise ValueError(f"resource must be one of {sorted(RESOURCES)}, got {resource!r}")
        self.resource = resource
        self._resource = RESOURCES[resource]
        #: the usage metrics taken (default: every usage metric of the resource)
        self.metrics = tuple(self._resource.metrics if metrics is None else metrics)
        #: usage metric -> paired limit metric ("" = none)
        self._usage = {m: self._resource.limit_metric(m) for m in self.metrics}
        self._limits = frozenset(v for v in self._usage.values() if v)
        self.horizon_seconds = horizon_seconds
        self.min_history_seconds = min_history_seconds
        self.max_window_seconds = max_window_seconds
        self.max_history_seconds = max_history_seconds
        self.bucket_seconds = bucket_seconds
        self.limit = limit
        self.extrapolation_factor = extrapolation_factor
        self.min_rise_fraction = min_rise_fraction
        self.rise_sigmas = rise_sigmas
        self.quarter_ratio = quarter_ratio
        self.recent_seconds = recent_seconds
        self.recent_ratio = recent_ratio
        self.decel_ratio = decel_ratio
        self.dod_ratio = dod_ratio
        self.cycle_seconds = cycle_seconds
        self.reset_drop_fraction = reset_drop_fraction
        self.step_fraction = step_fraction
        self.startup_seconds = startup_seconds
        self.cautious_slope = cautious_slope
        self.critical_eta_seconds = critical_eta_seconds
        self.reemit_seconds = reemit_seconds
        self.reemit_eta_factor = reemit_eta_factor
        self.clear_after_seconds = clear_after_seconds
        self.max_fit_points = max_fit_points
        self.window_growth = window_growth
        cap = max(8, math.ceil(max_history_seconds / bucket_seconds) + 1)
        # floors: (time of the bucket minimum, minimum); spreads: bucket max - min
        self._floor_t: deque[float] = deque(maxlen=cap)
        self._floor_v: deque[float] = deque(maxlen=cap)
        self._spreads: deque[float] = deque(maxlen=12)
        self._bucket: int | None = None
        self._b_min = math.inf
        self._b_min_t = 0.0
        self._b_max = -math.inf
        self._last_limit: float | None = limit
        self._fit_start: float | None = None  # event time the current fit began
        self._last_emit_ts: float | None = None
        self._last_emit_eta = math.inf
        self._last_emit_sev: Severity | None = None
        self._last_pass_ts: float | None = None
        self._step_from: tuple[float, float] | None = None  # a floor above the level: (t, level)
        self.resets = 0

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        for name in RESOURCES:
            yield {"resource": name}

    # snapshots hold the state and hyperparameters, not the lookups derived from the table
    _DERIVED = ("_resource", "_usage", "_limits")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._DERIVED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._resource = RESOURCES[self.resource]
        self._usage = {m: self._resource.limit_metric(m) for m in self.metrics}
        self._limits = frozenset(v for v in self._usage.values() if v)

    # ------------------------------------------------------------------ ingestion
    def observe(self, sample: Sample) -> list[Finding]:
        metric = sample.metric
        if not math.isfinite(sample.value):
            return []
        if metric in self._limits:  # the paired limit metric: remember it, nothing to judge
            if sample.value > 0:
                self._last_limit = float(sample.value)
            return []
        if metric not in self._usage or not self._resource.counts(sample.labels):
            return []
        if sample.limit is not None and sample.limit > 0:
            self._last_limit = float(sample.limit)
        if self._fit_start is None:
            self._fit_start = sample.ts
        bucket = int(sample.ts // self.bucket_seconds)
        findings: list[Finding] = []
        if self._bucket is not None and bucket > self._bucket:
            findings = self._close_bucket(sample)
        if self._bucket is None or bucket > self._bucket:
            self._bucket = bucket
            self._b_min, self._b_min_t, self._b_max = math.inf, sample.ts, -math.inf
        # late samples (bucket < current) fold into the open bucket: a floor is still a floor
        if sample.value < self._b_min:
            self._b_min, self._b_min_t = sample.value, sample.ts
        self._b_max = max(self._b_max, sample.value)
        return findings

    def _reset(self, start: float, *, restart: bool) -> None:
        self._floor_t.clear()
        self._floor_v.clear()
        self._spreads.clear()
        self._fit_start = start
        self._last_emit_ts = None
        self._last_emit_eta = math.inf
        self._last_emit_sev = None
        self._last_pass_ts = None
        self._step_from = None
        if restart:
            self.resets += 1

    def _close_bucket(self, sample: Sample) -> list[Finding]:
        v, t = self._b_min, self._b_min_t
        limit = self._last_limit
        scale = limit if limit else max(abs(v), 1.0)
        spread = self._b_max - self._b_min
        if self._floor_v:
            self._level_shift(t, v, scale)
        self._floor_t.append(t)
        self._floor_v.append(v)
        self._spreads.append(spread)
        if limit is None:
            return []
        return self._judge(sample, limit)

    def _level_shift(self, t: float, v: float, scale: float) -> None:
        """Reset the fit on a drop (restart) or a confirmed step up (deploy)."""
        # compare with the floors of the last hour, not the last bucket: a slow sawtooth
        # moves bucket minima up and down by its amplitude without any level shift
        lo, hi = self._recent_floor_range(t - 3600.0)
        if v < lo - self.reset_drop_fraction * scale:
            self._reset(t, restart=True)  # restart/OOM: the leak (if any) is gone
        elif self._step_from is not None and v > self._step_from[1] + self.step_fraction * scale:
            # a second floor in a row above the old level: a step (deploy), refit from its
            # first floor. One high floor is not enough: a fast leak on a small noisy pool
            # (+-2 of 50 connections) jumps 5 % by chance and kept restarting the fit
            start = self._step_from[0]
            kept = [
                (ft, fv, fs)
                for ft, fv, fs in zip(self._floor_t, self._floor_v, self._spreads, strict=False)
                if ft >= start
            ]
            self._reset(start, restart=False)
            for ft, fv, fs in kept:
                self._floor_t.append(ft)
                self._floor_v.append(fv)
                self._spreads.append(fs)
        elif v > hi + self.step_fraction * scale:
            self._step_from = (t, hi)  # (when, the level before): confirmed by the next floor
        else:
            self._step_from = None

    def _recent_floor_range(self, since: float) -> tuple[float, float]:
        vals = [fv for ft, fv in zip(self._floor_t, self._floor_v, strict=True) if ft >= since]
        if not vals:
            vals = [self._floor_v[-1]]
        return min(vals), max(vals)

    # ------------------------------------------------------------------ judgement
    def _window_ok(
        self, x: np.ndarray, y: np.ndarray, width: float, scale: float, memo: dict[bytes, float]
    ) -> tuple[bool, float, float, float]:
        """(passes, slope, intercept at x=0, r2) for one window of floors."""
        xs, ys = _decimate(x, y, self.max_fit_points)
        slope, icpt = _theil_sen(xs, ys)
        if slope <= 0:
            return False, slope, icpt, 0.0
        rise = slope * width
        # the test without the residuals first: most windows (anything flat) fail it, and
        # skip the residual scale's two medians (same outcome, same return value)
        if rise < self.min_rise_fraction * scale:
            return False, slope, icpt, 0.0
        resid = ys - (icpt + slope * xs)
        sigma = 1.4826 * _median(np.abs(resid - _median(resid)))
        if rise < self.rise_sigmas * sigma:
            return False, slope, icpt, 0.0
        ss_tot = float(np.sum((ys - ys.mean()) ** 2))
        r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 0.0
        edges = np.linspace(x[0], x[-1], 5)
        for q in range(4):
            m = (x >= edges[q]) & (x <= edges[q + 1])
            if np.count_nonzero(m) < 3:
                return False, slope, icpt, r2
            qs, _ = _theil_sen(*_decimate(x[m], y[m], self.max_fit_points))
            if qs < self.quarter_ratio * slope:
                return False, slope, icpt, r2
        if self._local_slope(x, y, memo) < self.recent_ratio * slope:
            return False, slope, icpt, r2
        thirds = np.linspace(x[0], x[-1], 4)
        ts3 = []
        for q in range(3):
            m = (x >= thirds[q]) & (x <= thirds[q + 1])
            ts3.append(_theil_sen(*_decimate(x[m], y[m], self.max_fit_points))[0])
        if ts3[2] < self.decel_ratio * max(ts3[0], ts3[1]):
            return False, slope, icpt, r2
        return True, slope, icpt, r2

    def _slopes(
        self,
        t: np.ndarray,
        v: np.ndarray,
        span: float,
        slope: float,
        icpt: float,
        memo: dict[bytes, float],
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """((best slope, level now), (cautious slope, level now)) over the span of evidence."""
        best = gate = (slope, icpt)
        m = t >= -span / 2.0
        if np.count_nonzero(m) >= 6:
            s2, i2 = _theil_sen(*_decimate(t[m], v[m], self.max_fit_points))
            if s2 > slope:
                # a span that starts on a plateau under-reads the slope; the recent half of
                # the span is the better estimate of the current growth when it is steeper
                best = (s2, i2)
            if self.cautious_slope:
                w = t >= -span
                gate = (min(slope, s2, self._local_slope(t[w], v[w], memo)), i2)
            else:
                gate = best
        return best, gate

    def _local_slope(self, x: np.ndarray, y: np.ndarray, memo: dict[bytes, float]) -> float:
        """Slope *now*: derivative at x=0 of a quadratic fitted to the last recent_seconds.

        A straight-line average over a whole window hides deceleration (the S-shaped rising
        half of a daily cycle fits a line with r2 ~ 0.98); the quadratic's end slope does not.
        """
        m = x >= -self.recent_seconds
        if np.count_nonzero(m) < 6:
            return math.inf
        xs, ys = x[m], y[m]
        # every window at least recent_seconds wide fits the same points: fit them once per
        # bucket close (``memo`` lives for one ``_judge`` call; same points, same result)
        key = xs.tobytes() + ys.tobytes()
        if key not in memo:
            memo[key] = float(np.polyfit(xs, ys, 2)[1])
        return memo[key]

    def _judge(self, sample: Sample, limit: float) -> list[Finding]:
        now = sample.ts
        if self._fit_start is None or now - self._fit_start < self.min_history_seconds:
            return []
        t, v = self._floors(now, self._fit_start)
        if len(t) < 8:
            return self._no_pass(now)
        memo: dict[bytes, float] = {}  # local slopes fitted during this close
        best = self._best_window(t, v, limit, memo)
        if best is None:
            return self._no_pass(now)
        span, slope, icpt, r2 = best
        (slope, floor_now), (gate, gate_floor) = self._slopes(t, v, span, slope, icpt, memo)
        if gate <= 0 or not self._grew_over_a_cycle(t, v, gate, gate_floor):
            return self._no_pass(now)
        spread = _median(np.fromiter(self._spreads, dtype=float))
        # alarm on the cautious projection, report the best estimate of the breach
        eta_gate = max(0.0, (limit - gate_floor - spread) / gate)
        if eta_gate > self.horizon_seconds or eta_gate > self.extrapolation_factor * span:
            return self._no_pass(now)
        eta = max(0.0, (limit - floor_now - spread) / slope)
        self._last_pass_ts = now
        severity = Severity.CRITICAL if eta <= self.critical_eta_seconds else Severity.WARNING
        due = (
            self._last_emit_ts is None
            or eta <= self._last_emit_eta * self.reemit_eta_factor
            or now - self._last_emit_ts >= self.reemit_seconds
            or (self._last_emit_sev is not None and severity.rank > self._last_emit_sev.rank)
        )
        if not due:
            return []
        self._last_emit_ts, self._last_emit_eta, self._last_emit_sev = now, eta, severity
        evidence: dict[str, Any] = {
            f"slope_{self._resource.unit}_per_s": slope,
            "floor": floor_now,
            "spread": spread,
            "limit": limit,
            "fit_window_seconds": span,
            "r2": r2,
            "floors_used": int(np.sum(t >= -span)),
        }
        return [self._finding(sample, severity, eta, span, r2, evidence)]

    def _floors(self, now: float, fit_start: float) -> tuple[np.ndarray, np.ndarray]:
        """The bucket floors (times relative to ``now``), a (re)start's warm-up left out."""
        t = np.fromiter(self._floor_t, dtype=float) - now
        v = np.fromiter(self._floor_v, dtype=float)
        if self.startup_seconds > 0:
            # a (re)start warms its caches up: that rise is not a trend, and in a window it
            # steepens the slope (a daily cycle rising from its trough after a start passed)
            keep = t >= fit_start + self.startup_seconds - now
            t, v = t[keep], v[keep]
        return t, v

    def _best_window(
        self, t: np.ndarray, v: np.ndarray, limit: float, memo: dict[bytes, float]
    ) -> tuple[float, float, float, float] | None:
        """The widest passing window: (span, slope, intercept, r2), or None."""
        best: tuple[float, float, float, float] | None = None
        width = self.min_history_seconds
        available = -float(t[0])
        while width <= min(self.max_window_seconds, available + self.bucket_seconds) + 1e-9:
            m = t >= -width
            if np.count_nonzero(m) >= 8:
                ok, slope, icpt, r2 = self._window_ok(t[m], v[m], width, limit, memo)
                if ok:
                    best = (width, slope, icpt, r2)
            width *= self.window_growth
        return best

    def _grew_over_a_cycle(
        self, t: np.ndarray, v: np.ndarray, gate: float, gate_floor: float
    ) -> bool:
        """A daily cycle repeats its floors a cycle later; a leak is higher by slope x cycle."""
        if -float(t[0]) < self.cycle_seconds:
            return True
        m = np.abs(t + self.cycle_seconds) <= 1800.0
        if not m.any():
            return True
        return gate_floor - _median(v[m]) >= self.dod_ratio * gate * self.cycle_seconds

    def _finding(
        self,
        sample: Sample,
        severity: Severity,
        eta: float,
        span: float,
        r2: float,
        evidence: dict[str, Any],
    ) -> Finding:
        confidence = max(0.0, min(1.0, r2)) * min(1.0, span / max(eta, 1.0))
        if self._resource.kind is not AnomalyKind.MEMORY_LEAK:
            evidence["resource"] = self.resource
        return Finding(
            ts=sample.ts,
            entity=sample.entity,
            metric=sample.metric,
            detector=self.name,
            kind=self._resource.kind,
            severity=severity,
            score=self.horizon_seconds / max(eta, 1.0),
            threshold=1.0,
            value=sample.value,
            evidence=evidence,
            forecast=Forecast(eta, self.horizon_seconds, round(confidence, 4)),
            labels=dict(sample.labels),
        )

    def _no_pass(self, now: float) -> list[Finding]:
        # a leak that stops passing for a while is forgotten, so a later one is news again
        if self._last_pass_ts is not None and now - self._last_pass_ts >= self.clear_after_seconds:
            self._last_emit_ts, self._last_emit_eta, self._last_emit_sev = None, math.inf, None
            self._last_pass_ts = None
        return []


@dataclass(frozen=True)
class ResourceForecastConfig(GrowthParams):
    """Which resources (rows of ``RESOURCES`` other than memory) get the forecast."""

    resources: tuple[str, ...] = tuple(r for r in RESOURCES if r != "memory")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.resources) - set(RESOURCES) | ({"memory"} & set(self.resources)))
        if unknown:
            raise ValueError(
                f"unknown resources {unknown}: choose from "
                f"{sorted(set(RESOURCES) - {'memory'})} (memory has its own `memory` section)"
            )
