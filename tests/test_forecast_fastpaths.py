"""The time-to-limit forecast's fast paths change nothing: ``models/_fit.py``'s Theil-Sen, median
and decimation equal the textbook versions bit for bit, and the memory and resource judges give
the same findings with the fast helpers as with the previous ones swapped back in (the naive
fits, the window test in its old order, the end slope refitted every time; both runs computed
here, nothing recorded)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selfheal.models import _fit, forecast
from selfheal.models.forecast import ResourceForecastJudge
from selfheal.models.memory import MemoryLeakJudge
from selfheal.pipeline.kernel.types import Finding, Sample

from benchmarks import resource_forecast as rf
from benchmarks.scenarios import (
    HOUR,
    MemoryScenario,
    leak_then_restart,
    memory_control_scenarios,
    memory_leak_scenarios,
)


# ------------------------------------------------------------------ the naive references
def naive_theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The forecast's Theil-Sen before the fast paths (indices rebuilt, ``np.median``)."""
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    ok = dx > 0
    if not ok.any():
        return 0.0, float(np.median(y))
    slope = float(np.median((y[j][ok] - y[i][ok]) / dx[ok]))
    return slope, float(np.median(y - slope * x))


def naive_decimate(x: np.ndarray, y: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= cap:
        return x, y
    idx = np.linspace(0, len(x) - 1, cap).round().astype(int)
    return x[idx], y[idx]


def naive_median(a: np.ndarray) -> float:
    return float(np.median(a))


def naive_local_slope(
    self: ResourceForecastJudge, x: np.ndarray, y: np.ndarray, memo: dict[bytes, float]
) -> float:
    """Refit every time (no memo), as before."""
    m = x >= -self.recent_seconds
    if m.sum() < 6:
        return math.inf
    return float(np.polyfit(x[m], y[m], 2)[1])


def naive_window_ok(
    self: ResourceForecastJudge,
    x: np.ndarray,
    y: np.ndarray,
    width: float,
    scale: float,
    memo: dict[bytes, float],
) -> tuple[bool, float, float, float]:
    """The window test as it was: residual scale computed before either rise test."""
    xs, ys = naive_decimate(x, y, self.max_fit_points)
    slope, icpt = naive_theil_sen(xs, ys)
    if slope <= 0:
        return False, slope, icpt, 0.0
    resid = ys - (icpt + slope * xs)
    sigma = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    rise = slope * width
    if rise < self.min_rise_fraction * scale or rise < self.rise_sigmas * sigma:
        return False, slope, icpt, 0.0
    ss_tot = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 0.0
    edges = np.linspace(x[0], x[-1], 5)
    for q in range(4):
        m = (x >= edges[q]) & (x <= edges[q + 1])
        if m.sum() < 3:
            return False, slope, icpt, r2
        qs, _ = naive_theil_sen(*naive_decimate(x[m], y[m], self.max_fit_points))
        if qs < self.quarter_ratio * slope:
            return False, slope, icpt, r2
    if naive_local_slope(self, x, y, memo) < self.recent_ratio * slope:
        return False, slope, icpt, r2
    thirds = np.linspace(x[0], x[-1], 4)
    ts3 = []
    for q in range(3):
        m = (x >= thirds[q]) & (x <= thirds[q + 1])
        ts3.append(naive_theil_sen(*naive_decimate(x[m], y[m], self.max_fit_points))[0])
    if ts3[2] < self.decel_ratio * max(ts3[0], ts3[1]):
        return False, slope, icpt, r2
    return True, slope, icpt, r2


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# ------------------------------------------------------------------ helpers, bit for bit
_FLOATS = st.floats(-1e9, 1e9, allow_nan=False, width=64)
_SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-300, math.inf, -math.inf, math.nan])


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(_FLOATS, _SPECIAL), min_size=1, max_size=200))
def test_median_equals_numpy(values: list[float]) -> None:
    a = np.array(values, dtype=float)
    kept = a.copy()
    got, want = _fit.median(a), float(np.median(a))
    assert _same(got, want) and math.copysign(1, got) == math.copysign(1, want), (got, want)
    assert np.array_equal(a, kept, equal_nan=True)  # no overwrite: the input is untouched
    assert _same(_fit.median(a, overwrite=True), want)


@st.composite
def _series(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 60))
    x = np.array(draw(st.lists(_FLOATS, min_size=n, max_size=n)))
    if draw(st.booleans()):  # mostly in time order, as floors are; duplicates and disorder too
        x = np.sort(x)
    y = np.array(draw(st.lists(_FLOATS, min_size=n, max_size=n)))
    return x, y


@settings(max_examples=600, deadline=None)
@given(_series())
def test_theil_sen_equals_the_naive_fit(xy: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = xy
    with np.errstate(all="ignore"):  # huge/tiny draws overflow the slopes: inf, in both
        got, want = _fit.theil_sen(x, y), naive_theil_sen(x, y)
    assert all(_same(g, w) for g, w in zip(got, want, strict=True)), (got, want)


def test_theil_sen_on_many_random_floor_windows() -> None:
    rng = np.random.default_rng(7)
    for _ in range(2000):
        n = int(rng.integers(2, 120))
        x = np.sort(-rng.uniform(0, 24 * HOUR, n))
        if rng.random() < 0.2:  # a late sample stamps a floor out of order
            k = int(rng.integers(0, n))
            x[k] -= rng.uniform(0, 900)
        y = 1e8 + rng.uniform(-1, 5) * 1e3 * x + rng.normal(0, 1e6, n)
        xs, ys = _fit.decimate(x, y, 48)
        nx, ny = naive_decimate(x, y, 48)
        assert np.array_equal(xs, nx) and np.array_equal(ys, ny)
        assert _fit.theil_sen(xs, ys) == naive_theil_sen(nx, ny)


def test_cached_indices_are_read_only() -> None:
    i, _ = _fit.pair_indices(5)
    with pytest.raises(ValueError):
        i[0] = 3
    with pytest.raises(ValueError):
        _fit.decimation_indices(100, 48)[0] = 1


# ------------------------------------------------------------------ judges, finding for finding
@pytest.fixture
def naive(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Swap the naive helpers into the forecast module (undone after the test)."""

    def use() -> None:
        monkeypatch.setattr(forecast, "_theil_sen", naive_theil_sen)
        monkeypatch.setattr(forecast, "_decimate", naive_decimate)
        monkeypatch.setattr(forecast, "_median", naive_median)
        monkeypatch.setattr(ResourceForecastJudge, "_local_slope", naive_local_slope)
        monkeypatch.setattr(ResourceForecastJudge, "_window_ok", naive_window_ok)

    yield use


def _key(f: Finding) -> tuple[Any, ...]:
    eta = f.forecast.eta_seconds if f.forecast else None
    conf = f.forecast.confidence if f.forecast else None
    return (f.ts, f.kind, f.severity, f.score, eta, conf, sorted(f.evidence.items()))


def _memory_run(sc: MemoryScenario) -> list[tuple[Any, ...]]:
    judge = MemoryLeakJudge()
    return [_key(f) for s in sc.samples() for f in judge.observe(s)]


def _resource_run(sc: rf.Scenario) -> list[tuple[Any, ...]]:
    tex = sc.texture
    judge = ResourceForecastJudge(resource=tex.resource)
    out = []
    for i, (ts, v) in enumerate(zip(sc.ts.tolist(), sc.values.tolist(), strict=True)):
        if tex.limit_metric and i % 10 == 0:
            judge.observe(Sample(ts, "svc", tex.limit_metric, float(tex.limit)))
        limit = None if tex.limit_metric else float(tex.limit)
        out += [_key(f) for f in judge.observe(Sample(ts, "svc", tex.metric, v, {}, limit))]
    return out


def _cut(sc: Any, hours: float) -> Any:
    keep = sc.ts < sc.ts[0] + hours * HOUR
    return replace(sc, ts=sc.ts[keep], values=sc.values[keep])


def _memory_scenarios() -> list[MemoryScenario]:
    leaks = {sc.name: sc for sc in memory_leak_scenarios()}
    controls = {sc.name: sc for sc in memory_control_scenarios()}
    return [
        leaks["leak_6h_fast_gc"],
        _cut(leaks["leak_24h_irregular"], 14),  # late and missing scrapes, a 20 min gap
        _cut(controls["deploy_step"], 16),
        _cut(controls["daily_cycle"], 26),  # a day of floors: the day-over-day check runs
        _cut(leak_then_restart(), 14),  # the reset path
    ]


def _resource_scenarios() -> list[rf.Scenario]:
    leaks, controls = rf.scenarios((1000,))
    by_name = {sc.name + f"#{k}": sc for k, sc in enumerate(leaks)}
    picked = [sc for name, sc in by_name.items() if "leak_6h" in name][:3]
    picked += [_cut(sc, 14) for sc in controls if sc.name.startswith("connection_pool:steps")]
    picked += [_cut(sc, 14) for sc in controls if sc.name.startswith("disk:rotation")]
    return picked


def test_memory_judge_finds_the_same_with_the_naive_helpers(naive: Callable[[], None]) -> None:
    scenarios = _memory_scenarios()
    fast = [_memory_run(sc) for sc in scenarios]
    naive()
    slow = [_memory_run(sc) for sc in scenarios]
    assert fast == slow
    assert sum(map(len, fast)) > 0  # the comparison covers findings, not only silence


def test_resource_judge_finds_the_same_with_the_naive_helpers(
    naive: Callable[[], None],
) -> None:
    scenarios = _resource_scenarios()
    fast = [_resource_run(sc) for sc in scenarios]
    naive()
    slow = [_resource_run(sc) for sc in scenarios]
    assert fast == slow
    assert sum(map(len, fast)) > 0
