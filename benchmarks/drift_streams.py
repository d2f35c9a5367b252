"""Seeded per-minute error-count streams for the error-rate drift targets (issue #14).

Two disjoint seed sets: ``TUNING_SEEDS`` (the detector's defaults were chosen on these) and
``HELD_OUT_SEEDS`` (only ever evaluated). Every stream has Poisson request volume with a daily
cycle and mild over-dispersion of the error rate (each bucket's rate is the stream's rate
times a log-normal factor, sigma ``0.1``), as real services have.

* rises: base rate ``p0`` at ``volume`` requests a minute, multiplied by ``factor`` from a
  random bucket in [360, 600) on (2x, 3x, 5x, 10x over seven rate/volume cells);
* controls, no change at all: ``stable`` (several rates and volumes), ``daily`` (the error
  rate swings +-50 % and the volume +-60 % over 24 h, two days), ``rare`` (an error every
  few minutes to every few hours).

>>> sc = rises(TUNING_SEEDS[:1])[0]
>>> sc.shift_bucket is not None and sc.errors.shape == sc.totals.shape
True
"""

from __future__ import annotations

import numpy as np

from benchmarks.scenarios import ErrorScenario

TUNING_SEEDS: tuple[int, ...] = tuple(range(10))
HELD_OUT_SEEDS: tuple[int, ...] = (2000, 2001, 2002, 2003, 2004)
#: (base rate, requests per minute): expected errors per minute from 2 to 50
RISE_CELLS: tuple[tuple[float, float], ...] = (
    (0.01, 200.0),
    (0.005, 500.0),
    (0.02, 200.0),
    (0.05, 100.0),
    (0.01, 1000.0),
    (0.002, 2000.0),
    (0.05, 1000.0),
)
FACTORS: tuple[float, ...] = (2.0, 3.0, 5.0, 10.0)
DAY = 1440  # buckets
#: buckets after a rise: delays beyond this count as misses
TAIL = 60


def stream(
    seed: int,
    n: int,
    p0: float,
    volume: float,
    *,
    factor: float = 1.0,
    shift: int | None = None,
    rate_swing: float = 0.0,
    volume_swing: float = 0.3,
    dispersion: float = 0.1,
    name: str = "",
) -> ErrorScenario:
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    phase = rng.uniform(0.0, 2 * np.pi)
    cycle = np.sin(2 * np.pi * i / DAY + phase)
    totals = rng.poisson(volume * (1.0 + volume_swing * cycle))
    p = p0 * (1.0 + rate_swing * cycle) * rng.lognormal(-(dispersion**2) / 2, dispersion, n)
    if shift is not None:
        p[shift:] *= factor
    errors = rng.binomial(totals, np.clip(p, 0.0, 1.0))
    p1 = p0 * factor if shift is not None else p0
    return ErrorScenario(name or f"p{p0}", errors, totals, shift, p0, p1)


def rises(seeds: tuple[int, ...]) -> list[ErrorScenario]:
    out = []
    for s in seeds:
        for c, (p0, vol) in enumerate(RISE_CELLS):
            for f, factor in enumerate(FACTORS):
                seed = 10_000 * s + 100 * c + f
                shift = int(np.random.default_rng(seed + 7).integers(360, 600))
                name = f"rise_{factor:g}x_p{p0}_v{vol:g}_s{s}"
                out.append(
                    stream(seed, shift + TAIL, p0, vol, factor=factor, shift=shift, name=name)
                )
    return out


def controls(seeds: tuple[int, ...]) -> list[ErrorScenario]:
    out = []
    for s in seeds:
        base = 10_000 * s + 5000
        for k, (p0, vol) in enumerate(
            ((0.002, 1000.0), (0.01, 200.0), (0.05, 100.0), (0.02, 50.0))
        ):
            out.append(stream(base + k, 4000, p0, vol, name=f"stable_p{p0}_v{vol:g}_s{s}"))
        for k, (p0, vol) in enumerate(((0.01, 300.0), (0.03, 100.0), (0.003, 2000.0))):
            out.append(
                stream(
                    base + 10 + k,
                    2 * DAY,
                    p0,
                    vol,
                    rate_swing=0.5,
                    volume_swing=0.6,
                    name=f"daily_p{p0}_v{vol:g}_s{s}",
                )
            )
        for k, (p0, vol) in enumerate(((0.001, 100.0), (0.0002, 500.0), (0.00005, 200.0))):
            out.append(stream(base + 20 + k, 4000, p0, vol, name=f"rare_p{p0}_v{vol:g}_s{s}"))
    return out
