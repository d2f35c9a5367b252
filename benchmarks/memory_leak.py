"""Memory-leak forecasting: MemoryLeakJudge vs the classic Prometheus rule.

Baseline: ``predict_linear(mem[1h], 4*3600) > limit`` evaluated every 15 s (at every sample),
with ``predict_linear`` implemented as Prometheus does it (least squares over the samples in
the left-open range ``(t-1h, t]``, x in seconds relative to the evaluation time, Kahan-Neumaier
sums, constant-y shortcut, at least two samples).

Second baseline (issue #14): a sweep of ``predict_linear`` range windows 1-12 h and horizons
4-24 h, compared at its best configuration without false alarm on the controls
(``best_baseline``, shared with ``benchmarks/resource_forecast.py``).

Run: ``.venv/bin/python -m benchmarks.memory_leak`` (writes benchmarks/results/memory_leak.md).
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selfheal.models.memory import MemoryLeakJudge  # noqa: E402

from benchmarks.common import publish  # noqa: E402
from benchmarks.scenarios import (  # noqa: E402
    HOUR,
    MemoryScenario,
    memory_control_scenarios,
    memory_daily_stress_scenarios,
    memory_leak_scenarios,
)

RANGE_S = 3600.0
PREDICT_S = 4 * 3600.0


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


def baseline_alarms(sc: MemoryScenario, check_every: int = 97) -> list[float]:
    """Times at which the rule fires. The numpy path is checked against the exact one."""
    ts_ms = np.round(sc.ts * 1000).astype(np.int64)
    v = sc.values
    lo = 0
    fired: list[float] = []
    for k in range(len(ts_ms)):
        ev = int(ts_ms[k])
        while ts_ms[lo] <= ev - int(RANGE_S * 1000):
            lo += 1
        if k - lo + 1 < 2:
            continue
        x = (ts_ms[lo : k + 1] - ev) / 1e3
        y = v[lo : k + 1]
        if np.all(y == y[0]):
            pred = float(y[0])
        else:
            n = len(x)
            sx, sy = x.sum(), y.sum()
            slope = (np.dot(x, y) - sx * sy / n) / (np.dot(x, x) - sx * sx / n)
            pred = float(slope * PREDICT_S + (sy / n - slope * sx / n))
        if k % check_every == 0:
            exact = prometheus_predict_linear(ts_ms[lo : k + 1].tolist(), y.tolist(), ev, PREDICT_S)
            assert exact is not None and abs(exact - pred) <= 1e-6 * abs(exact), (exact, pred)
        if pred > sc.limit:
            fired.append(float(sc.ts[k]))
    return fired


#: the ``predict_linear`` sweep (issue #14): range windows 1-12 h, horizons 4-24 h
SWEEP_WINDOWS_H: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 10, 12)
SWEEP_HORIZONS_H: tuple[float, ...] = (4, 6, 8, 12, 16, 20, 24)


def predict_linear_all(
    ts: np.ndarray, values: np.ndarray, window_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Prometheus' least-squares (slope, value now) over ``(t - window, t]`` at every sample.

    Vectorised with prefix sums (x relative to the first sample; the exact per-sample port
    above checks it in ``baseline_alarms``); NaN where the range holds fewer than 2 samples.
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


def ours(sc: MemoryScenario) -> tuple[list[float], float, int, list[float]]:
    """(finding times, seconds spent, pickled state bytes, first-finding eta)."""
    judge = MemoryLeakJudge()
    samples = list(sc.samples())
    times: list[float] = []
    etas: list[float] = []
    t0 = time.perf_counter()
    for s in samples:
        for f in judge.observe(s):
            times.append(f.ts)
            etas.append(f.forecast.eta_seconds if f.forecast else math.nan)
    spent = time.perf_counter() - t0
    return times, spent, len(pickle.dumps(judge)), etas


def _fmt_h(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x / HOUR:.2f} h"


def main() -> str:
    leaks = memory_leak_scenarios()
    controls = memory_control_scenarios()
    stress = memory_daily_stress_scenarios()
    rows: list[str] = []
    our_leads: list[float] = []
    base_leads: list[float] = []
    ctrl_ours = ctrl_base = ctrl_base_late = 0
    pre_ours = pre_base = 0
    total_s = 0.0
    total_n = 0
    state_bytes: list[int] = []
    for sc in leaks + controls:
        ot, spent, nbytes, etas = ours(sc)
        bt = baseline_alarms(sc)
        total_s += spent
        total_n += len(sc.ts)
        state_bytes.append(nbytes)
        if sc.leak_start is not None and sc.oom_ts is not None:
            o_pre = [t for t in ot if t < sc.leak_start]
            b_pre = [t for t in bt if t < sc.leak_start]
            pre_ours += bool(o_pre)
            pre_base += bool(b_pre)
            o_first = next((t for t in ot if t >= sc.leak_start), None)
            b_first = next((t for t in bt if t >= sc.leak_start), None)
            o_lead = sc.oom_ts - o_first if o_first is not None else 0.0
            b_lead = sc.oom_ts - b_first if b_first is not None else 0.0
            our_leads.append(o_lead)
            base_leads.append(b_lead)
            eta0 = next((e for t, e in zip(ot, etas, strict=True) if t >= sc.leak_start), None)
            err = (
                f"{(o_first + eta0 - sc.oom_ts) / HOUR:+.2f} h"
                if o_first is not None and eta0 is not None
                else "-"
            )
            rows.append(
                f"| {sc.name} | leak | {_fmt_h(sc.oom_ts - sc.leak_start)} | {_fmt_h(o_lead)} "
                f"| {err} | {len(ot)} ({len(o_pre)} pre-leak) | {_fmt_h(b_lead)} "
                f"| {len(bt)} ({len(b_pre)} pre-leak) | - |"
            )
        else:
            late = [t for t in bt if t >= sc.ts[0] + 2 * HOUR]
            ctrl_ours += bool(ot)
            ctrl_base += bool(bt)
            ctrl_base_late += bool(late)
            rows.append(
                f"| {sc.name} | control | - | - | - | {len(ot)} | - | {len(bt)} | {len(late)} |"
            )
    stress_fired = []
    for sc in stress:
        ot, _, _, _ = ours(sc)
        if ot:
            stress_fired.append(f"{sc.name} ({(ot[0] - sc.ts[0]) / HOUR:.1f} h)")
    med_ours = statistics.median(our_leads)
    med_base = statistics.median(base_leads)
    check_vectorised(leaks[0].ts, leaks[0].values)
    best, best_lead, n_clean, best_fa = best_baseline(
        [(sc.ts, sc.values, sc.limit, sc.leak_start, sc.oom_ts) for sc in leaks],  # type: ignore[misc]
        [(sc.ts, sc.values, sc.limit) for sc in controls],
    )
    n_cfg = len(SWEEP_WINDOWS_H) * len(SWEEP_HORIZONS_H)
    best_txt = (
        f"`predict_linear(mem[{best[0]:g}h], {best[1]:g}*3600) > limit` (alarms on "
        f"{best_fa}/{len(controls)} controls): median lead **{best_lead / HOUR:.2f} h**; ours "
        f"**{med_ours / max(best_lead, 1.0):.2f}x** that"
        if best is not None
        else "none"
    )
    us = 1e6 * total_s / total_n
    lines = [
        "## Memory-leak forecasting (models/memory.py)",
        "",
        "Command: `.venv/bin/python benchmarks/memory_leak.py`  ",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}  ",
        f"Scenarios: {len(leaks)} leaks (leak starts at 2 h after a start-up warm-up, series "
        f"truncated at OOM) and {len(controls)} 48 h controls, 15 s samples, seeded "
        "(`benchmarks/scenarios.py`).  ",
        "Baseline: `predict_linear(mem[1h], 4*3600) > limit` evaluated at every sample "
        "(Prometheus' least squares over `(t-1h, t]`, checked against a line-by-line port of "
        "`linearRegression` with Kahan sums).",
        "",
        "| scenario | type | leak->OOM | our lead | our first-eta error | our findings "
        "| baseline lead | baseline firing evals | baseline evals after 2 h |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"- Controls with any alarm: ours **{ctrl_ours}/{len(controls)}**, baseline "
        f"**{ctrl_base}/{len(controls)}** ({ctrl_base_late}/{len(controls)} when the start-up "
        "warm-up, first 2 h, is ignored).",
        f"- Leaks alarmed before the leak began (start-up warm-up): ours {pre_ours}/{len(leaks)}, "
        f"baseline {pre_base}/{len(leaks)}.",
        f"- Median warning lead before OOM over the leaks: ours **{med_ours / HOUR:.2f} h**, "
        f"baseline **{med_base / HOUR:.2f} h**, ratio **{med_ours / max(med_base, 1.0):.2f}x** "
        "(target >= 2x).",
        f"- Sweep of `predict_linear` windows {SWEEP_WINDOWS_H} h x horizons "
        f"{SWEEP_HORIZONS_H} h ({n_cfg} configurations; control alarms counted after the first "
        f"2 h, in the baseline's favour): {n_clean} have no false alarm; the best "
        f"{'of them' if n_clean else 'one (fewest controls alarmed, then longest lead)'} is "
        f"{best_txt}.",
        f"- Daily-cycle stress set ({len(stress)} series, +-10/15/20 % cycles, 4 phases): ours "
        f"alarmed on {len(stress_fired)}: {', '.join(stress_fired) or 'none'}.",
        f"- Cost: **{us:.1f} us/sample** (judge.observe over {total_n} samples); pickled state "
        f"per series: median **{int(statistics.median(state_bytes))} B**, "
        f"max {max(state_bytes)} B.",
        "",
        "Lead = OOM time - first finding at or after the leak start; first-eta error = "
        "(first finding time + its eta) - actual OOM (positive = predicted late).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    publish(main(), ROOT / "benchmarks" / "results" / "memory_leak.md")
