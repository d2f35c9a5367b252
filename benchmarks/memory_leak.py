"""Memory-leak forecasting: MemoryLeakJudge vs the classic Prometheus rule.

Baseline: ``predict_linear(mem[1h], 4*3600) > limit`` evaluated at every sample, with
``predict_linear`` implemented as Prometheus does it (least squares over the samples in the
left-open range ``(t-1h, t]``, x in seconds relative to the evaluation time, Kahan-Neumaier
sums, constant-y shortcut, at least two samples; ``predict_linear_all`` is the vectorised form,
checked against the line-by-line port).

Second baseline (issue #14): a sweep of ``predict_linear`` range windows 1-12 h and horizons
4-24 h, compared at its best configuration without false alarm on the controls
(``best_baseline``, shared with ``benchmarks/resource_forecast.py``).

Protocol (``benchmarks.forecast_protocol``, as the resource benchmark): every seed draws leaks
and controls shaped like the fixed ones (``memory_seeded_scenarios``); the memory model's
defaults are chosen by ``--tune`` on the tuning seeds, then run once on the held-out seeds,
with both baselines measured on the same series. Memory has its own seeds (``TUNING_SEEDS``
0-19, ``HELD_OUT_SEEDS``; ``SEEN_SEEDS``: held out before, reported as seen). The fixed 6 leaks
+ 7 controls + 24 daily cycles of ``benchmarks/scenarios.py`` stay as one row.

Run: ``.venv/bin/python -m benchmarks.memory_leak`` (writes benchmarks/results/memory_leak.md;
``--tune`` writes memory_leak_tuning.md; ``BENCH_WORKERS`` processes, default 2).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selfheal.models.memory import MemoryLeakJudge  # noqa: E402

from benchmarks import forecast_protocol as protocol  # noqa: E402
from benchmarks.common import publish  # noqa: E402
from benchmarks.forecast_protocol import (  # noqa: E402
    Outcome,
    Result,
    choose,
    head,
    row,
)
from benchmarks.scenarios import (  # noqa: E402
    HOUR,
    MemoryScenario,
    memory_control_scenarios,
    memory_daily_stress_scenarios,
    memory_leak_scenarios,
    memory_seeded_scenarios,
)


def _kahan_inc(inc: float, s: float, c: float) -> tuple[float, float]:
    t = s + inc
    if math.isinf(t):
        c = 0.0
    elif abs(s) >= abs(inc):
        c += (s - t) + inc
    else:
        c += (inc - t) + s
    return t, c


def prometheus_predict_linear(
    ts_ms: list[int], values: list[float], eval_ms: int, duration_s: float
) -> float | None:
    """Prometheus ``funcPredictLinear`` + ``linearRegression`` (promql/functions.go)."""
    if len(values) < 2:
        return None
    n = sx = cx = sy = cy = sxy = cxy = sx2 = cx2 = 0.0
    init_y = values[0]
    const_y = True
    for i, (tm, y) in enumerate(zip(ts_ms, values, strict=True)):
        if const_y and i > 0 and y != init_y:
            const_y = False
        n += 1.0
        x = float(tm - eval_ms) / 1e3
        sx, cx = _kahan_inc(x, sx, cx)
        sy, cy = _kahan_inc(y, sy, cy)
        sxy, cxy = _kahan_inc(x * y, sxy, cxy)
        sx2, cx2 = _kahan_inc(x * x, sx2, cx2)
    if const_y:
        return math.nan if math.isinf(init_y) else init_y
    sx += cx
    sy += cy
    sxy += cxy
    sx2 += cx2
    cov_xy = sxy - sx * sy / n
    var_x = sx2 - sx * sx / n
    slope = cov_xy / var_x
    intercept = sy / n - slope * sx / n
    return slope * duration_s + intercept


#: the ``predict_linear`` sweep (issue #14): range windows 1-12 h, horizons 4-24 h
SWEEP_WINDOWS_H: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 10, 12)
SWEEP_HORIZONS_H: tuple[float, ...] = (4, 6, 8, 12, 16, 20, 24)


def predict_linear_all(
    ts: np.ndarray, values: np.ndarray, window_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Prometheus' least-squares (slope, value now) over ``(t - window, t]`` at every sample.

    Vectorised with prefix sums (x relative to the first sample; the exact per-sample port
    above checks it in ``check_vectorised``); NaN where the range holds fewer than 2 samples.
    """
    x = ts - ts[0]
    cx = np.concatenate([[0.0], np.cumsum(x)])
    cy = np.concatenate([[0.0], np.cumsum(values)])
    cxx = np.concatenate([[0.0], np.cumsum(x * x)])
    cxy = np.concatenate([[0.0], np.cumsum(x * values)])
    hi = np.arange(1, len(ts) + 1)
    lo = np.searchsorted(ts, ts - window_s, side="right")
    n = (hi - lo).astype(float)
    sx, sy = cx[hi] - cx[lo], cy[hi] - cy[lo]
    sxx, sxy = cxx[hi] - cxx[lo], cxy[hi] - cxy[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = sxx - sx * sx / n
        slope = np.where(var > 0, (sxy - sx * sy / n) / var, 0.0)
        now = sy / n + slope * (x - sx / n)
    slope[n < 2] = np.nan
    return slope, now


def check_vectorised(ts: np.ndarray, values: np.ndarray) -> None:
    """``predict_linear_all`` agrees with the line-by-line port of Prometheus."""
    ts_ms = np.round(ts * 1000).astype(np.int64)
    for w in (1.0, 5.0, 12.0):
        slope, now = predict_linear_all(ts_ms / 1000.0, values, w * HOUR)
        for k in range(10, len(ts), max(1, len(ts) // 7)):
            lo = int(np.searchsorted(ts_ms, ts_ms[k] - int(w * HOUR * 1000), side="right"))
            exact = prometheus_predict_linear(
                ts_ms[lo : k + 1].tolist(), values[lo : k + 1].tolist(), int(ts_ms[k]), 3600.0
            )
            got = float(now[k] + slope[k] * 3600.0)
            assert exact is not None and abs(exact - got) <= 1e-6 * abs(exact), (w, k, exact, got)


def sweep_alarms(
    ts: np.ndarray, values: np.ndarray, limit: float, after: float
) -> dict[tuple[float, float], float | None]:
    """First time at or after ``after`` that ``predict_linear(v[w], h) > limit`` fires, per
    (window h, horizon h)."""
    out: dict[tuple[float, float], float | None] = {}
    for w in SWEEP_WINDOWS_H:
        slope, now = predict_linear_all(ts, values, w * HOUR)
        for h in SWEEP_HORIZONS_H:
            fired = np.nonzero((now + slope * h * HOUR > limit) & (ts >= after))[0]
            out[(w, h)] = float(ts[fired[0]]) if len(fired) else None
    return out


def best_baseline(
    leaks: list[tuple[np.ndarray, np.ndarray, float, float, float]],
    controls: list[tuple[np.ndarray, np.ndarray, float]],
    warmup_s: float = 2 * HOUR,
) -> tuple[tuple[float, float] | None, float, int, int]:
    """The ``predict_linear`` config with the fewest controls alarmed (zero, when one has none),
    then the longest median lead.

    ``leaks``: (ts, values, limit, leak start, breach time); ``controls``: (ts, values, limit).
    A control alarm counts after ``warmup_s`` (the start-up ramp is forgiven, in the
    baseline's favour); a leak's lead counts from its first alarm at or after the leak start
    (0 when it never fires). Returns (config, median lead s, configs without false alarm,
    controls the config alarms on).
    """
    configs = list(itertools.product(SWEEP_WINDOWS_H, SWEEP_HORIZONS_H))
    alarmed = dict.fromkeys(configs, 0)  # controls with a false alarm, per configuration
    for ts, v, limit in controls:
        for cfg, first in sweep_alarms(ts, v, limit, ts[0] + warmup_s).items():
            alarmed[cfg] += first is not None
    leads: dict[tuple[float, float], list[float]] = {cfg: [] for cfg in configs}
    for ts, v, limit, start, breach in leaks:
        firsts = sweep_alarms(ts, v, limit, start)
        for cfg in configs:
            first = firsts[cfg]
            leads[cfg].append(0.0 if first is None else breach - first)
    n_clean = sum(a == 0 for a in alarmed.values())
    best = min(configs, key=lambda c: (alarmed[c], -statistics.median(leads[c]), c[1]))
    return best, statistics.median(leads[best]), n_clean, alarmed[best]


#: memory's own seeds (the resource benchmark keeps the protocol's): twenty tuning seeds, so
#: that daily-cycle controls whose trough follows the start-up occur among them by the
#: generator's own draws; (1000, 1001, 1002) were held out until one of their controls, such a
#: cycle, alarmed in its first day; (2000, 2001, 2002) were held out for a first design (a cap
#: on first-day etas, see BENCHMARKS.md) that did not help there; both are reported as seen.
#: (3000, 3001, 3002) are held out since
TUNING_SEEDS: tuple[int, ...] = tuple(range(20))
SEEN_SEEDS: tuple[tuple[int, ...], ...] = ((1000, 1001, 1002), (2000, 2001, 2002))
HELD_OUT_SEEDS: tuple[int, ...] = (3000, 3001, 3002)
#: issue #3's rule: ``predict_linear(mem[1h], 4*3600) > limit`` (one cell of the sweep)
RULE: tuple[float, float] = (1.0, 4.0)
#: control alarms of the baselines count after the start-up ramp (in their favour)
WARMUP_S = 2 * HOUR
#: (leaks, controls, daily-cycle stress set)
Sets = tuple[list[MemoryScenario], list[MemoryScenario], list[MemoryScenario]]


@functools.cache
def scenario_sets(seeds: tuple[int, ...] | None) -> Sets:
    """The series drawn from these seeds; None: the fixed ones of ``benchmarks/scenarios.py``."""
    if seeds is None:
        return memory_leak_scenarios(), memory_control_scenarios(), memory_daily_stress_scenarios()
    drawn = [memory_seeded_scenarios(s) for s in seeds]
    leaks, controls, stress = ([sc for d in drawn for sc in d[i]] for i in range(3))
    return leaks, controls, stress


def ours(sc: MemoryScenario, params: dict[str, Any] | None = None) -> Outcome:
    """(finding times, seconds spent) of a judge built with ``params`` (the defaults: {})."""
    judge = MemoryLeakJudge(**(params or {}))
    found: list[float] = []
    t0 = time.perf_counter()
    for s in sc.samples():
        found.extend(f.ts for f in judge.observe(s))
    return found, time.perf_counter() - t0


def _run(job: tuple[MemoryScenario, dict[str, Any]]) -> Outcome:
    return ours(*job)


def evaluate(seeds: tuple[int, ...] | None, params: dict[str, Any], workers: int = 1) -> Result:
    leaks, controls, stress = scenario_sets(seeds)
    return protocol.evaluate(_run, leaks, controls, stress, params, workers)


@dataclass(frozen=True)
class Baseline:
    """The rule and the best of the sweep on one scenario set."""

    rule_lead: float  # median lead of the 1 h / 4 h rule
    rule_controls: int  # controls it alarms on at any time
    rule_controls_late: int  # ... after the first WARMUP_S
    n_controls: int
    best: tuple[float, float] | None  # (window h, horizon h)
    best_lead: float
    n_clean: int  # sweep configurations without a control alarm
    best_controls: int


@functools.cache
def baseline(seeds: tuple[int, ...] | None) -> Baseline:
    leaks, controls, _ = scenario_sets(seeds)
    check_vectorised(leaks[0].ts, leaks[0].values)
    leads = []
    for sc in leaks:
        assert sc.leak_start is not None and sc.oom_ts is not None
        first = sweep_alarms(sc.ts, sc.values, sc.limit, sc.leak_start)[RULE]
        leads.append(0.0 if first is None else sc.oom_ts - first)
    fired = [
        sweep_alarms(sc.ts, sc.values, sc.limit, sc.ts[0] + after)[RULE] is not None
        for after in (0.0, WARMUP_S)
        for sc in controls
    ]
    best, lead, n_clean, fa = best_baseline(
        [(sc.ts, sc.values, sc.limit, sc.leak_start, sc.oom_ts) for sc in leaks],  # type: ignore[misc]
        [(sc.ts, sc.values, sc.limit) for sc in controls],
        WARMUP_S,
    )
    n = len(controls)
    return Baseline(
        statistics.median(leads), sum(fired[:n]), sum(fired[n:]), n, best, lead, n_clean, fa
    )


EXTRA = (
    "`predict_linear(mem[1h], 4*3600)` median lead",
    "ours / rule",
    "rule: controls alarmed (after 2 h)",
    "best of the predict_linear sweep",
    "ours / best",
)


def _cells(r: Result, b: Baseline) -> list[str]:
    best = "-" if b.best is None else f"`mem[{b.best[0]:g}h], {b.best[1]:g}*3600`"
    return [
        f"{b.rule_lead / HOUR:.2f} h",
        f"**{r.median_lead / max(b.rule_lead, 1.0):.2f}x**",
        f"{b.rule_controls}/{b.n_controls} ({b.rule_controls_late}/{b.n_controls})",
        f"{best}: {b.best_lead / HOUR:.2f} h, {b.best_controls}/{b.n_controls} controls",
        f"{r.median_lead / max(b.best_lead, 1.0):.2f}x",
    ]


def _label(seeds: tuple[int, ...] | None) -> str:
    return "fixed 6+7 (+24)" if seeds is None else str(seeds)


#: the shipped defaults first, then comparison rows (held-out and seen seeds only)
CONFIGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("shipped defaults", {}),
    (
        "with the start-up in the fit (memory's defaults before `startup_seconds`)",
        {"startup_seconds": 0.0},
    ),
    (
        "the forecast's defaults (cautious slope, 1.0x, start-up in the fit)",
        {"cautious_slope": True, "extrapolation_factor": 1.0, "startup_seconds": 0.0},
    ),
)
#: the sweep on the tuning seeds (``--tune``): how long after a (re)start the floors stay out
#: of the fit, at memory's decision settings; the settings without it (the previous choice,
#: 1/280 controls alarmed, and the cautious slope at 1.2x, 0/280 and 7.85 h) and the first
#: design's are in BENCHMARKS.md
SWEEP: tuple[dict[str, Any], ...] = tuple(
    {"cautious_slope": False, "extrapolation_factor": 1.2, "startup_seconds": x * HOUR}
    for x in (0.5, 1.0, 2.0)
)


def _machine() -> str:
    return (
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}  "
    )


def tune(workers: int) -> str:
    b = baseline(TUNING_SEEDS)
    results: list[tuple[dict[str, Any], Result]] = []
    rows = []
    for params in SWEEP:
        results.append((params, evaluate(TUNING_SEEDS, params, workers)))
        rows.append(row(str(params), TUNING_SEEDS, results[-1][1], _cells(results[-1][1], b)))
        print(rows[-1], flush=True)
    chosen = choose(results)
    lines = [
        "## Memory-leak forecasts: sweep on the tuning seeds",
        "",
        "Command: `.venv/bin/python -m benchmarks.memory_leak --tune`  ",
        _machine(),
        f"Tuning seeds {TUNING_SEEDS} only. Rule: among the settings with no alarm on a "
        "control, the longest median lead (then the fewest stress alarms).",
        "",
        *head(EXTRA),
        *rows,
        "",
        f"- Chosen: {chosen if chosen is not None else 'none (every setting alarms)'}.",
    ]
    return "\n".join(lines) + "\n"


def _notes(r: Result, b: Baseline) -> list[str]:
    n_cfg = len(SWEEP_WINDOWS_H) * len(SWEEP_HORIZONS_H)
    return [
        f"- Held-out, shipped: median lead **{r.median_lead / HOUR:.2f} h**, the rule's "
        f"**{b.rule_lead / HOUR:.2f} h**: **{r.median_lead / max(b.rule_lead, 1.0):.2f}x** "
        f"(target >= 2x); controls alarmed: {', '.join(r.alarmed) or 'none'}; stress series "
        f"alarmed: {', '.join(r.stressed) or 'none'}.",
        f"- Sweep of {n_cfg} `predict_linear` configurations (windows {SWEEP_WINDOWS_H} h x "
        f"horizons {SWEEP_HORIZONS_H} h; control alarms counted after the first 2 h) on the "
        f"held-out series: {b.n_clean} without a false alarm; the best "
        f"{'of them' if b.n_clean else 'one (fewest controls alarmed, then longest lead)'} "
        f"leads by {b.best_lead / HOUR:.2f} h: ours is "
        f"**{r.median_lead / max(b.best_lead, 1.0):.2f}x** that.",
    ]


def main(workers: int) -> str:
    rows = []
    shipped: tuple[Result, Baseline] | None = None
    for name, params in CONFIGS:
        sets = (
            (HELD_OUT_SEEDS, *SEEN_SEEDS, TUNING_SEEDS, None)
            if shipped is None
            else (HELD_OUT_SEEDS, *SEEN_SEEDS)
        )
        for seeds in sets:
            r, b = evaluate(seeds, params, workers), baseline(seeds)
            rows.append(row(name, _label(seeds), r, _cells(r, b)))
            print(rows[-1], flush=True)
            shipped = shipped or (r, b)
    assert shipped is not None
    leaks, controls, stress = scenario_sets(HELD_OUT_SEEDS)
    lines = [
        "## Memory-leak forecasting (models/memory.py)",
        "",
        "Command: `.venv/bin/python -m benchmarks.memory_leak` (`--tune` for the sweep on the "
        "tuning seeds)  ",
        _machine(),
        f"Scenarios per seed (`memory_seeded_scenarios`): {len(leaks) // len(HELD_OUT_SEEDS)} "
        "leaks (two per band of 5-8, 8-11, 11-14, 14-20, 20-28, 28-36 h from the leak start, at "
        "2-5 h, to OOM; drawn level, GC sawtooth period 1-20 min and amplitude, noise, a quarter "
        f"with irregular scrapes), {len(controls) // len(HELD_OUT_SEEDS)} 48 h controls (two "
        "each of fast and slow sawtooth, slow and fast warm-up plateau, deploy step, daily "
        "cycle, heavy noise with spikes; drawn timing) and a daily-cycle stress set "
        f"({len(stress) // len(HELD_OUT_SEEDS)} a seed: +-10/15/20 % around 45/50 %, drawn "
        "phase); 15 s samples. Defaults chosen on the tuning seeds "
        f"{TUNING_SEEDS} (`--tune`); held-out seeds {HELD_OUT_SEEDS} only evaluated; "
        f"{' and '.join(map(str, SEEN_SEEDS))}: held out before, seen while designing "
        "`startup_seconds` (reported, not held out). The "
        "fixed row: the 6 leaks, 7 controls and 24 stress cycles of `benchmarks/scenarios.py`.  ",
        "Baselines on the same series: `predict_linear(mem[1h], 4*3600) > limit` at every "
        "sample (Prometheus' least squares over `(t-1h, t]`, checked against a line-by-line "
        "port of `linearRegression` with Kahan sums; controls alarmed at any time, in brackets "
        "after the first 2 h) and the best of the predict_linear sweep.",
        "",
        *head(EXTRA),
        *rows,
        "",
        *_notes(*shipped),
        "",
        "Lead = OOM - the first finding at or after the leak start (0 when none).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    jobs = int(os.environ.get("BENCH_WORKERS", "2"))
    if "--tune" in sys.argv:
        publish(tune(jobs), ROOT / "benchmarks" / "results" / "memory_leak_tuning.md")
    else:
        publish(main(jobs), ROOT / "benchmarks" / "results" / "memory_leak.md")
