"""Time-to-limit forecasts beyond memory: disk, file descriptors, connection/thread pools, queues.

One model (``selfheal.models.forecast.ResourceForecastJudge``) for every resource; the same
kinds of controls as the memory benchmark (sawtooth, warm-up plateaus, daily cycles, deploy
steps), with each resource's own texture: integer counts with small limits (descriptors,
pools, threads), log-rotation drops (disk), fast fill-and-drain (queues). Leaks start at 2-5 h
and reach the limit 6-30 h later; every series is sampled every 30 s. Each seed draws the
noise and the timing (daily-cycle phase, step, warm-up and leak times): the defaults are
chosen on ``TUNING_SEEDS`` (``--tune``), the table is computed on ``HELD_OUT_SEEDS``.

Baseline: the best ``predict_linear(v[w], h) > limit`` configuration with no false alarm on
the controls, from a sweep of windows 1-12 h and horizons 4-24 h (``benchmarks.memory_leak``).

Run: ``.venv/bin/python -m benchmarks.resource_forecast`` (writes
benchmarks/results/resource_forecast.md; ``--tune`` writes resource_forecast_tuning.md;
``BENCH_WORKERS`` processes, default 2).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from selfheal.models.forecast import ResourceForecastJudge
from selfheal.models.resources import RESOURCES
from selfheal.pipeline.kernel.types import Sample

from benchmarks import forecast_protocol as protocol
from benchmarks.common import publish
from benchmarks.forecast_protocol import HEAD, HELD_OUT_SEEDS, TUNING_SEEDS, Outcome, Result
from benchmarks.forecast_protocol import row as _row
from benchmarks.memory_leak import SWEEP_HORIZONS_H, SWEEP_WINDOWS_H, best_baseline

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_795_842_000.0
HOUR = 3600.0
STEP = 30.0


@dataclass(frozen=True)
class Texture:
    """How one resource's usage looks: limit, integer counts, sawtooth, noise (fractions)."""

    resource: str
    metric: str
    limit_metric: str
    limit: float
    integer: bool
    saw_period_s: float
    saw_amp: float
    noise: float


TEXTURES = (
    Texture("disk", "system.filesystem.usage", "", 2e11, False, 6 * HOUR, 0.03, 0.001),
    Texture("file_descriptors", "process_open_fds", "process_max_fds", 1024, True, 600, 0.05, 0.01),
    Texture(
        "connection_pool",
        "db.client.connection.count",
        "db.client.connection.max",
        50,
        True,
        300,
        0.1,
        0.04,
    ),
    Texture("thread_pool", "jvm.thread.count", "", 400, True, 900, 0.05, 0.01),
    Texture("queue", "queue_depth", "queue_capacity", 1e5, True, 120, 0.1, 0.01),
)


@dataclass(frozen=True)
class Scenario:
    name: str
    texture: Texture
    ts: np.ndarray
    values: np.ndarray
    leak_start: float | None
    breach: float | None


def _make(tex: Texture, seed: int, shape: str, hours_to_limit: float | None = None) -> Scenario:
    """One 48 h series; the seed draws the noise and the timing (cycle phase, step and leak
    times), so held-out seeds are new series, not new noise on the same ones."""
    rng = np.random.default_rng(seed)
    t = T0 + STEP * np.arange(int(48 * HOUR / STEP))
    x = (t - T0) / HOUR
    y = 0.35 * (1 - np.exp(-x / 0.25)) + 0.05  # start-up to 40 % of the limit
    phase = rng.uniform(0.0, 24.0)  # hour of the daily cycle at the start
    cycle = 1 - np.cos(2 * np.pi * (x + phase) / 24.0)
    if shape == "plateau":  # slow warm-up to a higher plateau
        y = y + 0.2 * (1 - np.exp(-np.clip(x - 1, 0, None) / rng.uniform(1.5, 3.0)))
    elif shape == "daily":  # +-15 % around 45 % of the limit, as the memory control
        y = y + 0.15 * cycle - 0.10
    elif shape == "daily_high":  # stress: the same cycle peaking at 70 % of the limit
        y = y + 0.15 * cycle
    elif shape == "steps":  # deploys: +8 % twice
        y = y + 0.08 * (x > rng.uniform(6, 14)) + 0.08 * (x > rng.uniform(26, 34))
    elif shape == "rotation" and tex.resource == "disk":  # logs grow 10 %/day, rotated daily
        y = y + 0.10 * (((x + phase) % 24.0) / 24.0)
    leak_start = breach = None
    saw = tex.saw_amp * ((t - T0 + rng.uniform(0, tex.saw_period_s)) % tex.saw_period_s)
    y = y + saw / tex.saw_period_s + rng.normal(0.0, tex.noise, len(t))
    if hours_to_limit is not None:
        start_h = rng.uniform(2.0, 5.0)
        leak_start = T0 + start_h * HOUR
        head = 1.0 - 0.40 - tex.saw_amp
        y = y + np.clip(x - start_h, 0, None) * head / hours_to_limit
    v = np.clip(y, 0.0, None) * tex.limit
    if tex.integer:
        v = np.round(v)
    if hours_to_limit is not None:
        hit = np.nonzero(v >= tex.limit)[0]
        if len(hit):
            breach = float(t[hit[0]])
            t, v = t[: hit[0] + 1], v[: hit[0] + 1]
    return Scenario(f"{tex.resource}:{shape}:s{seed // 10_000}", tex, t, v, leak_start, breach)


def stress(seeds: tuple[int, ...]) -> list[Scenario]:
    """Daily cycles peaking at 70 % of the limit: reported apart, as memory's stress set."""
    return [
        _make(tex, 10_000 * s + 100 * k + 90, "daily_high")
        for s in seeds
        for k, tex in enumerate(TEXTURES)
    ]


def scenarios(seeds: tuple[int, ...]) -> tuple[list[Scenario], list[Scenario]]:
    """(leaks, controls) for these seeds: 20 leaks and 21 controls a seed."""
    leaks, controls = [], []
    for s in seeds:
        for k, tex in enumerate(TEXTURES):
            base = 10_000 * s + 100 * k
            for j, hours in enumerate((6.0, 12.0, 20.0, 30.0)):
                leaks.append(_make(tex, base + j, f"leak_{hours:g}h", hours))
            for j, shape in enumerate(("sawtooth", "plateau", "daily", "steps", "rotation")):
                if shape == "rotation" and tex.resource != "disk":
                    continue
                controls.append(_make(tex, base + 50 + j, shape))
    return leaks, controls


def ours(sc: Scenario, params: dict[str, Any] | None = None) -> tuple[list[float], float]:
    """(finding times, seconds spent), through the paired limit metric when there is one."""
    tex = sc.texture
    judge = ResourceForecastJudge(resource=tex.resource, **(params or {}))
    found: list[float] = []
    t0 = time.perf_counter()
    for i, (ts, v) in enumerate(zip(sc.ts.tolist(), sc.values.tolist(), strict=True)):
        if tex.limit_metric and i % 10 == 0:
            judge.observe(Sample(ts, "svc", tex.limit_metric, float(tex.limit)))
        limit = None if tex.limit_metric else float(tex.limit)
        for f in judge.observe(Sample(ts, "svc", tex.metric, v, {}, limit)):
            found.append(f.ts)
    return found, time.perf_counter() - t0


def _run(job: tuple[Scenario, dict[str, Any]]) -> Outcome:
    return ours(*job)


def evaluate(seeds: tuple[int, ...], params: dict[str, Any], workers: int = 1) -> Result:
    leaks, controls = scenarios(seeds)
    return protocol.evaluate(_run, leaks, controls, stress(seeds), params, workers)


#: the shipped defaults, and the same model projecting as before issue #14's daily-cycle fix
CONFIGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("shipped defaults", {}),
    (
        "without the cautious slope, extrapolation 1.2x",
        {"cautious_slope": False, "extrapolation_factor": 1.2},
    ),
)
#: the sweep on the tuning seeds (``--tune``)
SWEEP: tuple[dict[str, Any], ...] = (
    *({"cautious_slope": True, "extrapolation_factor": f} for f in (0.8, 1.0, 1.2)),
    *({"cautious_slope": False, "extrapolation_factor": f} for f in (1.0, 1.2)),
)


def _baseline(seeds: tuple[int, ...]) -> tuple[str, float]:
    leaks, controls = scenarios(seeds)
    best, lead, n_clean, fa = best_baseline(
        [(sc.ts, sc.values, float(sc.texture.limit), sc.leak_start, sc.breach) for sc in leaks],  # type: ignore[misc]
        [(sc.ts, sc.values, float(sc.texture.limit)) for sc in controls],
    )
    n_cfg = len(SWEEP_WINDOWS_H) * len(SWEEP_HORIZONS_H)
    assert best is not None
    return (
        f"- Baseline on the held-out seeds: sweep of {n_cfg} `predict_linear` configurations "
        f"(windows {SWEEP_WINDOWS_H} h x horizons {SWEEP_HORIZONS_H} h; control alarms "
        f"counted after the first 2 h, in the baseline's favour): {n_clean} without false "
        f"alarm; the best {'of them' if n_clean else 'one (fewest controls alarmed, then'}"
        f"{'' if n_clean else ' longest lead)'}"
        f" is `predict_linear(v[{best[0]:g}h], {best[1]:g}*3600) > limit`, alarms on "
        f"{fa}/{len(controls)} controls, median lead **{lead / HOUR:.2f} h**."
    ), lead


def tune(workers: int) -> str:
    rows = []
    for params in SWEEP:
        rows.append(_row(str(params), TUNING_SEEDS, evaluate(TUNING_SEEDS, params, workers)))
        print(rows[-1], flush=True)
    lines = [
        "## Resource forecasts: sweep on the tuning seeds",
        "",
        "Command: `.venv/bin/python -m benchmarks.resource_forecast --tune`  ",
        f"Tuning seeds {TUNING_SEEDS} only. Rule: among the settings with no alarm on a "
        "control, the longest median lead.",
        "",
        *HEAD,
        *rows,
    ]
    return "\n".join(lines) + "\n"


def main(workers: int) -> str:
    rows = []
    shipped: Result | None = None
    for name, params in CONFIGS:
        # the comparison row on the held-out seeds only: it was not chosen on any
        for seeds in (HELD_OUT_SEEDS, TUNING_SEEDS) if shipped is None else (HELD_OUT_SEEDS,):
            r = evaluate(seeds, params, workers)
            rows.append(_row(name, seeds, r))
            print(rows[-1], flush=True)
            if shipped is None:
                shipped = r
    assert shipped is not None
    base_txt, base_lead = _baseline(HELD_OUT_SEEDS)
    leaks, controls = scenarios(HELD_OUT_SEEDS)
    lines = [
        "## Resource exhaustion forecasts (models/forecast.py, models/resources.py)",
        "",
        "Command: `.venv/bin/python -m benchmarks.resource_forecast` (`--tune` for the sweep "
        "on the tuning seeds)  ",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}  ",
        f"Scenarios per seed: {len(leaks) // len(HELD_OUT_SEEDS)} leaks ({len(TEXTURES)} "
        "resources x 6/12/20/30 h from the leak start, at 2-5 h, to the limit) and "
        f"{len(controls) // len(HELD_OUT_SEEDS)} 48 h controls (sawtooth, warm-up plateau, "
        "+-15 % daily cycle, two deploy steps; daily log rotation for disk) and a stress set "
        "(the daily cycle peaking at 70 % of the limit, one per resource); 30 s samples; the "
        "seed draws the noise and the timing (cycle phase, step, warm-up and leak times). "
        f"Resources: {', '.join(sorted(r for r in RESOURCES if r != 'memory'))}; limits from "
        "the paired limit metric where the resource has one, else the `limit` field. Defaults "
        f"chosen on the tuning seeds {TUNING_SEEDS} (`--tune`); held-out seeds "
        f"{HELD_OUT_SEEDS} only evaluated.",
        "",
        *HEAD,
        *rows,
        "",
        f"- Held-out, shipped: controls alarmed: {', '.join(shipped.alarmed) or 'none'}; "
        f"stress series alarmed: {', '.join(shipped.stressed) or 'none'}.",
        f"{base_txt} Ours (shipped, held-out) is "
        f"**{shipped.median_lead / max(base_lead, 1.0):.2f}x** that.",
        "",
        "Lead = the limit breach - the first finding at or after the leak start (0 when none).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    jobs = int(os.environ.get("BENCH_WORKERS", "2"))
    if "--tune" in sys.argv:
        publish(tune(jobs), ROOT / "benchmarks" / "results" / "resource_forecast_tuning.md")
    else:
        publish(main(jobs), ROOT / "benchmarks" / "results" / "resource_forecast.md")
