"""Time-to-limit forecasts beyond memory: disk, file descriptors, connection/thread pools, queues.

One model (``selfheal.models.forecast.ResourceForecastJudge``) for every resource; the same
kinds of controls as the memory benchmark (sawtooth, warm-up plateaus, daily cycles, deploy
steps), with each resource's own texture: integer counts with small limits (descriptors,
pools, threads), log-rotation drops (disk), fast fill-and-drain (queues). Leaks start at 2 h
and reach the limit 6-30 h later; every series is sampled every 30 s, seeded.

Baseline: the best ``predict_linear(v[w], h) > limit`` configuration with no false alarm on
the controls, from a sweep of windows 1-12 h and horizons 4-24 h (``benchmarks.memory_leak``).

Run: ``.venv/bin/python -m benchmarks.resource_forecast`` (writes
benchmarks/results/resource_forecast.md).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from selfheal.models.forecast import ResourceForecastJudge
from selfheal.models.resources import RESOURCES
from selfheal.pipeline.kernel.types import Sample

from benchmarks.common import publish
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
    rng = np.random.default_rng(seed)
    t = T0 + STEP * np.arange(int(48 * HOUR / STEP))
    x = (t - T0) / HOUR
    y = 0.35 * (1 - np.exp(-x / 0.25)) + 0.05  # start-up to 40 % of the limit
    if shape == "plateau":  # slow warm-up to a higher plateau
        y = y + 0.2 * (1 - np.exp(-np.clip(x - 1, 0, None) / 2.0))
    elif shape == "daily":  # +-15 % around 45 % of the limit, as the memory control
        y = y + 0.15 * (1 - np.cos(2 * np.pi * x / 24.0)) - 0.10
    elif shape == "daily_high":  # stress: the same cycle peaking at 70 % of the limit
        y = y + 0.15 * (1 - np.cos(2 * np.pi * x / 24.0))
    elif shape == "steps":  # deploys: +8 % at 10 h, +8 % at 30 h
        y = y + 0.08 * (x > 10) + 0.08 * (x > 30)
    elif shape == "rotation" and tex.resource == "disk":  # logs grow 10 %/day, rotated daily
        y = y + 0.10 * ((x % 24.0) / 24.0)
    leak_start = breach = None
    saw = tex.saw_amp * ((t - T0) % tex.saw_period_s) / tex.saw_period_s
    y = y + saw + rng.normal(0.0, tex.noise, len(t))
    if hours_to_limit is not None:
        leak_start = T0 + 2 * HOUR
        head = 1.0 - 0.40 - tex.saw_amp
        y = y + np.clip(x - 2.0, 0, None) * head / hours_to_limit
    v = np.clip(y, 0.0, None) * tex.limit
    if tex.integer:
        v = np.round(v)
    if hours_to_limit is not None:
        hit = np.nonzero(v >= tex.limit)[0]
        if len(hit):
            breach = float(t[hit[0]])
            t, v = t[: hit[0] + 1], v[: hit[0] + 1]
    return Scenario(f"{tex.resource}:{shape}", tex, t, v, leak_start, breach)


def stress() -> list[Scenario]:
    """Daily cycles peaking at 70 % of the limit: reported apart, as memory's stress set."""
    return [_make(tex, 100 * k + 90, "daily_high") for k, tex in enumerate(TEXTURES)]


def scenarios() -> tuple[list[Scenario], list[Scenario]]:
    leaks, controls = [], []
    for k, tex in enumerate(TEXTURES):
        for j, hours in enumerate((6.0, 12.0, 20.0, 30.0)):
            leaks.append(_make(tex, 100 * k + j, f"leak_{hours:g}h", hours))
        for j, shape in enumerate(("sawtooth", "plateau", "daily", "steps", "rotation")):
            if shape == "rotation" and tex.resource != "disk":
                continue
            controls.append(_make(tex, 100 * k + 50 + j, shape))
    return leaks, controls


def ours(sc: Scenario) -> tuple[list[float], float]:
    """(finding times, seconds spent), through the paired limit metric when there is one."""
    tex = sc.texture
    judge = ResourceForecastJudge(resource=tex.resource)
    found: list[float] = []
    t0 = time.perf_counter()
    for i, (ts, v) in enumerate(zip(sc.ts.tolist(), sc.values.tolist(), strict=True)):
        if tex.limit_metric and i % 10 == 0:
            judge.observe(Sample(ts, "svc", tex.limit_metric, float(tex.limit)))
        limit = None if tex.limit_metric else float(tex.limit)
        for f in judge.observe(Sample(ts, "svc", tex.metric, v, {}, limit)):
            found.append(f.ts)
    return found, time.perf_counter() - t0


def main() -> str:
    leaks, controls = scenarios()
    rows = []
    leads: list[float] = []
    false_alarms = 0
    spent = 0.0
    n = 0
    for sc in leaks + controls:
        found, s = ours(sc)
        spent, n = spent + s, n + len(sc.ts)
        if sc.leak_start is not None and sc.breach is not None:
            first = next((f for f in found if f >= sc.leak_start), None)
            lead = sc.breach - first if first is not None else 0.0
            leads.append(lead)
            pre = sum(f < sc.leak_start for f in found)
            rows.append(
                f"| {sc.name} | leak | {(sc.breach - sc.leak_start) / HOUR:.1f} h "
                f"| {lead / HOUR:.2f} h | {pre} |"
            )
        else:
            false_alarms += bool(found)
            rows.append(f"| {sc.name} | control | - | - | {len(found)} |")
    stressed = [sc.name for sc in stress() if ours(sc)[0]]
    best, best_lead, n_clean, best_fa = best_baseline(
        [(sc.ts, sc.values, float(sc.texture.limit), sc.leak_start, sc.breach) for sc in leaks],  # type: ignore[misc]
        [(sc.ts, sc.values, float(sc.texture.limit)) for sc in controls],
    )
    med = statistics.median(leads)
    n_cfg = len(SWEEP_WINDOWS_H) * len(SWEEP_HORIZONS_H)
    base_txt = (
        f"`predict_linear(v[{best[0]:g}h], {best[1]:g}*3600) > limit` with alarms on "
        f"{best_fa}/{len(controls)} controls, median lead **{best_lead / HOUR:.2f} h**; ours "
        f"is **{med / max(best_lead, 1.0):.2f}x** that"
        if best is not None
        else "none"
    )
    lines = [
        "## Resource exhaustion forecasts (models/forecast.py, models/resources.py)",
        "",
        "Command: `.venv/bin/python -m benchmarks.resource_forecast`  ",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}  ",
        f"Scenarios: {len(leaks)} leaks ({len(TEXTURES)} resources x 6-30 h from leak start "
        f"to the limit) and {len(controls)} 48 h controls (sawtooth, warm-up plateau, +-15 % "
        "daily cycle, deploy steps; daily log rotation for disk), 30 s samples, seeded; "
        f"resources: {', '.join(sorted(r for r in RESOURCES if r != 'memory'))}. Limits come "
        "from the paired limit metric where the resource has one, else the `limit` field.",
        "",
        "| scenario | type | leak -> limit | our lead | our findings before the leak / on "
        "the control |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"- Controls with any alarm: ours **{false_alarms}/{len(controls)}**.",
        f"- Median warning lead before the limit: ours **{med / HOUR:.2f} h**.",
        f"- Baseline: sweep of {n_cfg} `predict_linear` configurations (windows "
        f"{SWEEP_WINDOWS_H} h x horizons {SWEEP_HORIZONS_H} h; control alarms counted after "
        f"the first 2 h, in the baseline's favour): {n_clean} without false alarm; the best "
        f"{'of them' if n_clean else 'one (fewest controls alarmed, then longest lead)'} "
        f"is {base_txt}.",
        f"- Stress set (the daily cycle peaking at 70 % of the limit, one per resource): ours "
        f"alarmed on {len(stressed)}/{len(TEXTURES)}: {', '.join(stressed) or 'none'}.",
        f"- Cost: {1e6 * spent / n:.1f} us per sample (judge.observe).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    publish(main(), ROOT / "benchmarks" / "results" / "resource_forecast.md")
