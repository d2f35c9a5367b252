"""Deterministic (seeded) scenario generators shared by the benchmarks and the tests.

Memory scenarios sample every 15 s (optionally jittered, with dropped samples): leaks of
several slopes under a garbage-collector sawtooth and noise, each truncated at its OOM point
(first sample at or above the limit), and controls without a leak (pure sawtooth, slow
sawtooth, warm-up plateau, deploy step, daily cycle, heavy noise). The fixed sets
(``memory_leak_scenarios``, ``memory_control_scenarios``, ``memory_daily_stress_scenarios``)
are one draw each; ``memory_seeded_scenarios(seed)`` draws new series of the same shapes (leak
duration, start, level, sawtooth, noise; warm-up, deploy and cycle timing) for the tuning and
held-out seeds of ``benchmarks/memory_leak.py``.

Error scenarios are per-bucket (errors, total) counts with a known shift bucket, plus helpers
that turn them into ``requests_total``/``errors_total`` counter samples or log lines.

>>> sc = memory_leak_scenarios()[0]
>>> sc.oom_ts is not None and sc.leak_start is not None and sc.oom_ts > sc.leak_start
True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from selfheal.pipeline.kernel.types import LogLevel, LogLine, Sample

T0 = 1_795_842_000.0  # 2026-11-28T05:00:00Z
HOUR = 3600.0
LIMIT = 1024.0**3  # 1 GiB
MEM_METRIC = "container_memory_working_set_bytes"


@dataclass(frozen=True)
class MemoryScenario:
    name: str
    ts: np.ndarray
    values: np.ndarray
    limit: float
    leak_start: float | None  # None for controls
    oom_ts: float | None  # first sample >= limit (None for controls)

    @property
    def breach(self) -> float | None:
        """When the leak reaches the limit (the benchmarks' common name)."""
        return self.oom_ts

    @property
    def is_leak(self) -> bool:
        return self.leak_start is not None

    def samples(self, entity: str = "svc-1") -> Iterator[Sample]:
        for t, v in zip(self.ts.tolist(), self.values.tolist(), strict=True):
            yield Sample(t, entity, MEM_METRIC, v, {}, self.limit)


def _times(rng: np.random.Generator, hours: float, irregular: bool) -> np.ndarray:
    n = int(hours * HOUR / 15.0)
    if not irregular:
        return T0 + 15.0 * np.arange(n)
    dt = rng.uniform(10.0, 20.0, n)
    t = T0 + np.cumsum(dt)
    keep = rng.random(n) > 0.03  # 3 % of scrapes lost
    gap = (t > T0 + 5 * HOUR) & (t < T0 + 5 * HOUR + 1200.0)  # one 20 min scrape outage
    return np.asarray(t[keep & ~gap])


def _sawtooth(rng: np.random.Generator, t: np.ndarray, period: float, amp: float) -> np.ndarray:
    """GC sawtooth: allocation climbs linearly, a collection drops it back (jittered period)."""
    span = float(t[-1] - t[0]) + period
    periods = period * rng.uniform(0.7, 1.3, int(span / (0.7 * period)) + 2)
    starts = t[0] + np.concatenate([[0.0], np.cumsum(periods)])
    k = np.searchsorted(starts, t, side="right") - 1
    phase = (t - starts[k]) / periods[k]
    return np.asarray(amp * phase)


def _warmup(t: np.ndarray, start: float, rise: float, tau: float) -> np.ndarray:
    dt = np.clip(t - start, 0.0, None)
    return np.asarray(rise * (1.0 - np.exp(-dt / tau)) * (t >= start))


#: each control shape's timing in the fixed scenarios (seeded ones draw their own):
#: warm-ups (start h, time constant h, rise), deploys (restart h, in-place step h), daily (phase h)
FIXED_TIMES: dict[str, tuple[float, ...]] = {
    "warmup_slow": (0.5, 2.0, 0.25),
    "warmup_fast": (1.0, 0.5, 0.20),
    "deploy_step": (10.0, 30.0),
    "daily": (0.0,),
}


def _shape(
    extra: str,
    t: np.ndarray,
    y: np.ndarray,
    base: float,
    rng: np.random.Generator,
    times: tuple[float, ...],
) -> np.ndarray:
    """A control's shape on top of the start-up warm-up (``times``: see ``FIXED_TIMES``)."""
    x = (t - T0) / HOUR
    if extra in ("warmup_slow", "warmup_fast"):
        start, tau, rise = times
        y = y + _warmup(t, T0 + start * HOUR, rise, tau * HOUR)
    elif extra == "deploy_step":
        # deploy: restart (usage falls to 10 %) then warms up to a level 20 % higher; a second
        # deploy later adds an in-place step of +8 % without a restart
        d1 = T0 + times[0] * HOUR
        y = np.where(t >= d1, 0.10 + _warmup(t, d1, base + 0.20 - 0.10, 0.15 * HOUR), y)
        y = y + 0.08 * (t >= T0 + times[1] * HOUR)
    elif extra == "daily":
        # 24 h cycle of +-15 % (at its trough when the phase is 0)
        y = y + 0.15 * (1.0 - np.cos(2 * np.pi * (x + times[0]) / 24.0)) - 0.15
    elif extra == "spikes":
        spikes = rng.random(len(t)) < 0.01
        y = y + spikes * rng.uniform(0.05, 0.2, len(t))
    return np.asarray(y)


def _make(
    name: str,
    seed: int,
    hours: float,
    base: float,
    period: float,
    amp: float,
    sigma: float,
    *,
    leak_hours_to_oom: float | None = None,
    leak_start_h: float = 2.0,
    irregular: bool = False,
    extra: str = "",
    times: tuple[float, ...] | None = None,
) -> MemoryScenario:
    rng = np.random.default_rng(seed)
    t = _times(rng, hours, irregular)
    x = (t - T0) / HOUR
    # start-up: from 10 % of the limit up to the base level (cache warm-up, tau 15 min)
    y = 0.10 + _warmup(t, T0, base - 0.10, 0.25 * HOUR)
    y = _shape(extra, t, y, base, rng, FIXED_TIMES.get(extra, ()) if times is None else times)
    leak_start = None
    if leak_hours_to_oom is not None:
        leak_start = T0 + leak_start_h * HOUR
        headroom = 1.0 - base - amp - 2.0 * sigma
        slope = headroom / leak_hours_to_oom
        y = y + slope * np.clip(x - leak_start_h, 0.0, None)
    y = y + _sawtooth(rng, t, period, amp) + rng.normal(0.0, sigma, len(t))
    values = np.clip(y, 0.01, None) * LIMIT
    oom_ts = None
    if leak_start is not None:
        hit = np.nonzero(values >= LIMIT)[0]
        if len(hit):
            cut = int(hit[0])
            oom_ts = float(t[cut])
            t, values = t[: cut + 1], values[: cut + 1]
    return MemoryScenario(name, t, values, LIMIT, leak_start, oom_ts)


def memory_leak_scenarios() -> list[MemoryScenario]:
    """Leaks (start at 2 h, after warm-up) reaching the limit 6-32 h later."""
    return [
        _make("leak_6h_fast_gc", 11, 48, 0.35, 90.0, 0.08, 0.005, leak_hours_to_oom=6),
        _make("leak_10h", 12, 48, 0.35, 120.0, 0.10, 0.01, leak_hours_to_oom=10),
        _make("leak_12h_slow_gc", 13, 48, 0.30, 1200.0, 0.12, 0.005, leak_hours_to_oom=12),
        _make("leak_16h", 14, 48, 0.40, 240.0, 0.12, 0.01, leak_hours_to_oom=16),
        _make(
            "leak_24h_irregular",
            15,
            48,
            0.35,
            60.0,
            0.06,
            0.005,
            leak_hours_to_oom=24,
            irregular=True,
        ),
        _make("leak_32h_noisy", 16, 48, 0.35, 180.0, 0.10, 0.015, leak_hours_to_oom=32),
    ]


def memory_control_scenarios() -> list[MemoryScenario]:
    """48 h series that never leak (none reaches the limit)."""
    return [
        _make("sawtooth_fast", 21, 48, 0.45, 120.0, 0.15, 0.005),
        _make("sawtooth_slow", 22, 48, 0.40, 1500.0, 0.20, 0.005),
        _make("warmup_plateau_slow", 23, 48, 0.25, 120.0, 0.10, 0.005, extra="warmup_slow"),
        _make("warmup_plateau_fast", 24, 48, 0.30, 90.0, 0.10, 0.005, extra="warmup_fast"),
        _make("deploy_step", 25, 48, 0.35, 120.0, 0.10, 0.005, extra="deploy_step"),
        _make("daily_cycle", 26, 48, 0.45, 120.0, 0.08, 0.005, extra="daily"),
        _make("heavy_noise", 27, 48, 0.45, 120.0, 0.10, 0.06, extra="spikes"),
    ]


def _daily(name: str, seed: int, amp: float, base: float, phase: float) -> MemoryScenario:
    """A 48 h daily cycle of +-``amp`` around ``base`` with a 2 min GC sawtooth."""
    rng = np.random.default_rng(seed)
    t = _times(rng, 48, False)
    x = (t - T0) / HOUR
    y = 0.10 + _warmup(t, T0, base - 0.10, 0.25 * HOUR)
    y = y + amp * (1.0 - np.cos(2 * np.pi * (x + phase) / 24.0)) - amp
    y = y + _sawtooth(rng, t, 120.0, 0.08) + rng.normal(0.0, 0.005, len(t))
    return MemoryScenario(name, t, y * LIMIT, LIMIT, None, None)


#: the stress set's cycles: amplitude x level (fractions of the limit)
STRESS_CYCLES = tuple((a, b) for a in (0.10, 0.15, 0.20) for b in (0.45, 0.50))


def memory_daily_stress_scenarios() -> list[MemoryScenario]:
    """Harder 24 h cycles: amplitude +-10/15/20 % around 45/50 %, four phases, 48 h each.

    Reported separately: the +-20 % cycles peak at 70-78 % of the limit with sawtooth, where
    the rising half is, within the first day, hard to tell from a leak.
    """
    out = []
    for k, ((amp, base), phase) in enumerate(
        itertools.product(STRESS_CYCLES, (0.0, 6.0, 12.0, 18.0))
    ):
        out.append(_daily(f"daily_a{amp:.2f}_b{base:.2f}_p{int(phase)}", 100 + k, amp, base, phase))
    return out


#: hours from the leak start to OOM: one band per fixed leak (6, 10, 12, 16, 24, 32 h)
LEAK_BANDS: tuple[tuple[float, float], ...] = (
    (5, 8),
    (8, 11),
    (11, 14),
    (14, 20),
    (20, 28),
    (28, 36),
)
#: GC sawtooth periods (s) of the fixed scenarios, from fast collections to slow ones
GC_PERIODS: tuple[float, ...] = (60.0, 90.0, 120.0, 180.0, 240.0, 600.0, 1200.0)


def _seeded_leaks(seed: int, rng: np.random.Generator, draws: int) -> list[MemoryScenario]:
    out = []
    for k, (lo, hi) in enumerate(LEAK_BANDS):
        for j in range(draws):
            hours = float(rng.uniform(lo, hi))
            start = float(rng.uniform(2.0, 5.0))  # after the start-up warm-up
            out.append(
                _make(
                    f"leak_{hours:.1f}h:s{seed}:{k}{j}",
                    10_000 * seed + 10 * k + j,
                    48,
                    float(rng.uniform(0.30, 0.40)),
                    float(rng.choice(GC_PERIODS)),
                    float(rng.uniform(0.06, 0.12)),
                    float(rng.uniform(0.005, 0.015)),
                    leak_hours_to_oom=hours,
                    leak_start_h=start,
                    irregular=bool(rng.random() < 0.25),  # jittered scrapes, losses, an outage
                )
            )
    return out


def _control_draw(
    rng: np.random.Generator, kind: str
) -> tuple[float, float, float, float, tuple[float, ...]]:
    """(base, GC period s, sawtooth amplitude, noise sigma, times) of one control kind."""
    u = rng.uniform
    if kind == "sawtooth_fast":
        return u(0.40, 0.50), u(60, 180), u(0.10, 0.18), 0.005, ()
    if kind == "sawtooth_slow":
        return u(0.35, 0.45), u(900, 2400), u(0.15, 0.22), 0.005, ()
    if kind == "warmup_plateau_slow":
        return u(0.20, 0.30), 120.0, 0.10, 0.005, (u(0.25, 1.5), u(1.5, 3.0), u(0.20, 0.30))
    if kind == "warmup_plateau_fast":
        return u(0.25, 0.35), 90.0, 0.10, 0.005, (u(0.5, 2.0), u(0.3, 0.8), u(0.15, 0.25))
    if kind == "deploy_step":
        return u(0.30, 0.40), 120.0, 0.10, 0.005, (u(6.0, 14.0), u(26.0, 34.0))
    if kind == "daily_cycle":
        return u(0.40, 0.50), 120.0, 0.08, 0.005, (u(0.0, 24.0),)
    return u(0.40, 0.50), 120.0, 0.10, u(0.04, 0.07), ()  # heavy noise with spikes


#: the fixed controls' kinds and the ``_make`` shape each one uses
CONTROL_KINDS: dict[str, str] = {
    "sawtooth_fast": "",
    "sawtooth_slow": "",
    "warmup_plateau_slow": "warmup_slow",
    "warmup_plateau_fast": "warmup_fast",
    "deploy_step": "deploy_step",
    "daily_cycle": "daily",
    "heavy_noise": "spikes",
}


def memory_seeded_scenarios(
    seed: int, draws: int = 2
) -> tuple[list[MemoryScenario], list[MemoryScenario], list[MemoryScenario]]:
    """(leaks, controls, daily-cycle stress set) drawn from one seed, shaped as the fixed ones.

    ``draws`` leaks per band of ``LEAK_BANDS`` (start at 2-5 h, varied level, GC period and
    amplitude, noise, a quarter with irregular scrapes), ``draws`` controls per kind of
    ``CONTROL_KINDS`` (timing drawn: warm-up start and speed, deploy times, cycle phase), and
    one stress cycle per ``STRESS_CYCLES`` entry at a drawn phase.
    """
    rng = np.random.default_rng([seed, 3])  # the draws; each series has its own noise seed
    leaks = _seeded_leaks(seed, rng, draws)
    controls = []
    for k, (kind, extra) in enumerate(CONTROL_KINDS.items()):
        for j in range(draws):
            base, period, amp, sigma, times = _control_draw(rng, kind)
            controls.append(
                _make(
                    f"{kind}:s{seed}:{j}",
                    10_000 * seed + 100 + 10 * k + j,
                    48,
                    base,
                    period,
                    amp,
                    sigma,
                    extra=extra,
                    times=times,
                )
            )
    stress = [
        _daily(
            f"daily_a{a:.2f}_b{b:.2f}:s{seed}", 10_000 * seed + 200 + k, a, b, rng.uniform(0, 24)
        )
        for k, (a, b) in enumerate(STRESS_CYCLES)
    ]
    return leaks, controls, stress


def leak_then_restart(seed: int = 31) -> MemoryScenario:
    """A 10 h leak that is restarted at 9 h (before OOM) and then runs flat for 10 h."""
    leak = _make("pre", seed, 48, 0.35, 120.0, 0.10, 0.01, leak_hours_to_oom=10)
    cut = leak.ts < T0 + 11 * HOUR
    t1, v1 = leak.ts[cut], leak.values[cut]
    flat = _make("post", seed + 1, 10, 0.35, 120.0, 0.10, 0.01)
    t2 = flat.ts + (t1[-1] + 15.0 - T0)
    return MemoryScenario(
        "leak_then_restart",
        np.concatenate([t1, t2]),
        np.concatenate([v1, flat.values]),
        LIMIT,
        leak.leak_start,
        None,
    )


# ---------------------------------------------------------------------- error-rate streams
@dataclass(frozen=True)
class ErrorScenario:
    name: str
    errors: np.ndarray  # per bucket
    totals: np.ndarray  # per bucket
    shift_bucket: int | None  # first bucket at the new rate
    p_before: float
    p_after: float
    bucket_seconds: float = 60.0

    @property
    def ratios(self) -> np.ndarray:
        return np.asarray(self.errors / np.maximum(self.totals, 1))

    def bucket_start(self, i: int) -> float:
        return T0 + i * self.bucket_seconds


def error_stream(
    seed: int,
    n_buckets: int,
    p_before: float,
    p_after: float | None = None,
    shift_bucket: int | None = None,
    volume: float = 200.0,
    name: str = "",
    bursts: tuple[int, ...] = (),
    burst_p: float = 0.5,
) -> ErrorScenario:
    """Binomial errors over Poisson volume with a daily traffic cycle and an optional shift."""
    rng = np.random.default_rng(seed)
    i = np.arange(n_buckets)
    lam = volume * (1.0 + 0.3 * np.sin(2 * np.pi * i / 1440.0))
    totals = rng.poisson(lam)
    p = np.full(n_buckets, p_before)
    if p_after is not None and shift_bucket is not None:
        p[shift_bucket:] = p_after
    for b in bursts:
        p[b] = burst_p
    errors = rng.binomial(totals, p)
    return ErrorScenario(
        name or f"p{p_before}->{p_after}@{shift_bucket}",
        errors,
        totals,
        shift_bucket,
        p_before,
        p_before if p_after is None else p_after,
    )


def error_shift_scenarios(seeds: range = range(5)) -> list[ErrorScenario]:
    """Upward shifts at bucket 600 of 1200, several sizes, several seeds."""
    out = []
    for s in seeds:
        for k, (p0, p1, vol) in enumerate(
            [
                (0.01, 0.03, 200.0),
                (0.01, 0.05, 200.0),
                (0.02, 0.04, 200.0),
                (0.005, 0.02, 500.0),
                (0.05, 0.10, 100.0),
            ]
        ):
            out.append(
                error_stream(
                    100 * s + k, 1200, p0, p1, 600, vol, name=f"up_{p0}_{p1}_v{int(vol)}_s{s}"
                )
            )
    return out


def error_null_scenarios(seeds: range = range(5)) -> list[ErrorScenario]:
    """No shift (steady noise), 4000 buckets each, several base rates and volumes."""
    out = []
    for s in seeds:
        for k, (p0, vol) in enumerate([(0.01, 200.0), (0.02, 50.0), (0.05, 100.0)]):
            out.append(
                error_stream(
                    1000 + 100 * s + k, 4000, p0, volume=vol, name=f"null_{p0}_v{int(vol)}_s{s}"
                )
            )
    return out


def counter_samples(
    sc: ErrorScenario,
    entity: str = "svc-1",
    scrape_seconds: float = 15.0,
    reset_at_bucket: int | None = None,
) -> list[Sample]:
    """``requests_total``/``errors_total`` scrapes; a counter reset (restart) if asked."""
    per = int(sc.bucket_seconds // scrape_seconds)
    out: list[Sample] = []
    req = err = 0.0
    for b in range(len(sc.totals)):
        if reset_at_bucket is not None and b == reset_at_bucket:
            req = err = 0.0
        tot, e = int(sc.totals[b]), int(sc.errors[b])
        for k in range(per):
            # spread the bucket's counts over its scrapes (the last one takes the remainder)
            req += tot // per + (tot % per if k == per - 1 else 0)
            err += e // per + (e % per if k == per - 1 else 0)
            ts = sc.bucket_start(b) + (k + 1) * scrape_seconds - 0.5
            out.append(Sample(ts, entity, "requests_total", req))
            out.append(Sample(ts, entity, "errors_total", err))
    return out


def log_lines(sc: ErrorScenario, entity: str = "svc-1", seed: int = 0) -> list[LogLine]:
    """One line per request; error lines are ERROR or CRITICAL, the rest INFO or WARNING."""
    rng = np.random.default_rng(seed)
    out: list[LogLine] = []
    for b in range(len(sc.totals)):
        tot, e = int(sc.totals[b]), int(sc.errors[b])
        offs = np.sort(rng.uniform(0.0, sc.bucket_seconds, tot))
        is_err = np.zeros(tot, dtype=bool)
        is_err[rng.choice(tot, size=e, replace=False)] = True
        start = sc.bucket_start(b)
        for off, bad in zip(offs.tolist(), is_err.tolist(), strict=True):
            lvl = (
                (LogLevel.ERROR if off % 1.0 < 0.8 else LogLevel.CRITICAL)
                if bad
                else (LogLevel.INFO if off % 1.0 < 0.9 else LogLevel.WARNING)
            )
            out.append(LogLine(start + off, entity, lvl, "request failed" if bad else "ok"))
    return out
