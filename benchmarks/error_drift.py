"""Error-rate drift: the binomial CUSUM judge vs the previous KSWIN judge and river's ADWIN.

Streams: ``benchmarks/drift_streams.py`` (per-minute buckets, Poisson volume with a daily
cycle, over-dispersed binomial errors). The CUSUM defaults were chosen with ``--tune`` on
``TUNING_SEEDS``; the table is computed on ``HELD_OUT_SEEDS`` only. Every detector runs inside
``ErrorRateJudge`` (``observe_bucket``: the code path of counters and logs once a bucket
closes), so a finding is what a user gets: an upward shift after the change-point re-estimate.

Targets (issue #14): every rise of 3x or more flagged within 3 minutes of event time, 2x
within 10, no false alarm on the stable, daily-swinging and rare-error controls.

Run: ``.venv/bin/python -m benchmarks.error_drift`` (writes benchmarks/results/error_drift.md);
``--tune`` prints the sweep on the tuning seeds instead.
"""

from __future__ import annotations

import itertools
import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from river import drift
from selfheal.models.base import DriftDetector
from selfheal.models.error_rate import ErrorRateJudge
from selfheal.pipeline.kernel.types import AnomalyKind

from benchmarks.common import publish
from benchmarks.drift_floor import floor_section
from benchmarks.drift_streams import (
    FACTORS,
    HELD_OUT_SEEDS,
    TAIL,
    TUNING_SEEDS,
    controls,
    rises,
)
from benchmarks.scenarios import ErrorScenario, counter_samples, error_stream, log_lines

ROOT = Path(__file__).resolve().parents[1]


class RiverDrift(DriftDetector):
    """A ``river.drift`` detector fed each bucket's error ratio (a baseline, not shipped:
    river's compiled detectors are not data the snapshot codec can carry)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector

    @property
    def drift_detected(self) -> bool:  # type: ignore[override]
        return bool(self.detector.drift_detected)

    def update(self, errors: float, total: float) -> None:
        self.detector.update(errors / total)


class ADWINJudge(ErrorRateJudge):
    """The same judge with river's ADWIN (delta 0.002) on the bucket ratios."""

    def _make_detector(self) -> DriftDetector:
        return RiverDrift(drift.ADWIN(delta=0.002))


CONFIGS: list[tuple[str, dict[str, Any], type[ErrorRateJudge]]] = [
    ("binomial CUSUM (shipped default)", {}, ErrorRateJudge),
    (
        "binomial CUSUM, learning delay 10, threshold 8.5 (best on the tuning seeds)",
        {"cusum_threshold": 8.5, "cusum_learn_delay": 10},
        ErrorRateJudge,
    ),
    (
        "KSWIN alpha=0.0001 (previous default)",
        {"detector": "kswin", "min_increase_abs": 0.005},
        ErrorRateJudge,
    ),
    ("river ADWIN delta=0.002", {"history_buckets": 360}, ADWINJudge),
]


def run(sc: ErrorScenario, params: dict[str, Any], cls: type[ErrorRateJudge]) -> list[Any]:
    """Drift findings of one judge over one stream."""
    judge = cls(**params)
    found: list[Any] = []
    for i in range(len(sc.totals)):
        found += judge.observe_bucket(
            sc.bucket_start(i), float(sc.errors[i]), float(sc.totals[i]), "svc-1"
        )
    return [f for f in found if f.kind == AnomalyKind.ERROR_RATE_DRIFT]


def evaluate(
    seeds: tuple[int, ...], params: dict[str, Any], cls: type[ErrorRateJudge] = ErrorRateJudge
) -> dict[str, Any]:
    delays: dict[str, list[int]] = {"big": [], "2x": []}
    false_alarms: dict[str, int] = {"stable": 0, "daily": 0, "rare": 0, "before rises": 0}
    buckets = 0
    t0 = time.perf_counter()
    for sc in rises(seeds):
        assert sc.shift_bucket is not None
        shift_ts = sc.bucket_start(sc.shift_bucket)
        found = run(sc, params, cls)
        buckets += len(sc.totals)
        false_alarms["before rises"] += sum(f.ts <= shift_ts for f in found)
        post = [f for f in found if f.ts > shift_ts]
        # the finding is stamped with the end of the bucket that completed the evidence
        delay = round((post[0].ts - shift_ts) / sc.bucket_seconds) if post else TAIL + 1
        delays["2x" if sc.p_after < 2.5 * sc.p_before else "big"].append(delay)
    for sc in controls(seeds):
        false_alarms[sc.name.split("_")[0]] += len(run(sc, params, cls))
        buckets += len(sc.totals)
    us = 1e6 * (time.perf_counter() - t0) / buckets
    big, two = delays["big"], delays["2x"]
    return {
        "big_ok": sum(d <= 3 for d in big),
        "big_n": len(big),
        "big_med": statistics.median(big),
        "big_max": max(big),
        "two_ok": sum(d <= 10 for d in two),
        "two_n": len(two),
        "two_med": statistics.median(two),
        "fa": false_alarms,
        "us": us,
    }


def _d(x: float) -> str:
    return f"> {TAIL}" if x > TAIL else f"{x:g}"


def row(name: str, r: dict[str, Any]) -> str:
    fa = r["fa"]
    return (
        f"| {name} | {r['big_ok']}/{r['big_n']} | {_d(r['big_med'])} | {_d(r['big_max'])} "
        f"| {r['two_ok']}/{r['two_n']} | {_d(r['two_med'])} | {fa['stable']} | {fa['daily']} "
        f"| {fa['rare']} | {fa['before rises']} | {r['us']:.1f} |"
    )


def first_delays(seeds: tuple[int, ...]) -> dict[str, int]:
    """Shipped judge: minutes from each rise to its first drift finding (TAIL + 1 = missed)."""
    out = {}
    for sc in rises(seeds):
        assert sc.shift_bucket is not None
        shift_ts = sc.bucket_start(sc.shift_bucket)
        post = [f for f in run(sc, {}, ErrorRateJudge) if f.ts > shift_ts]
        out[sc.name] = round((post[0].ts - shift_ts) / sc.bucket_seconds) if post else TAIL + 1
    return out


def by_cell(seeds: tuple[int, ...], first: dict[str, int]) -> list[str]:
    """Shipped judge: delay (minutes) per rate/volume cell and factor, median (max)."""
    delays: dict[tuple[float, float, float], list[int]] = {}
    for sc in rises(seeds):
        # the cell's nominal volume and factor, from the stream's name (rise_<f>x_p<p>_v<v>_s<s>)
        parts = sc.name.split("_")
        key = (sc.p_before, float(parts[3][1:]), float(parts[1][:-1]))
        delays.setdefault(key, []).append(first[sc.name])
    cells = sorted({(p, v) for p, v, _ in delays}, key=lambda c: c[0] * c[1])
    out = [
        "| base rate | requests/min | expected errors/min | "
        + " | ".join(f"{f:g}x" for f in FACTORS)
        + " |",
        "| --- | --- | --- |" + " --- |" * len(FACTORS),
    ]
    for p, v in cells:
        cols = []
        for f in FACTORS:
            d = delays[(p, v, f)]
            cols.append(f"{_d(statistics.median(d))} ({_d(max(d))})")
        out.append(f"| {p:g} | {v:g} | {p * v:.1f} | " + " | ".join(cols) + " |")
    return out


def bursts() -> tuple[int, int]:
    """Single-bucket bursts (20 % errors on a 1 % base) found by the shipped judge."""
    hits = total = 0
    for s in range(5):
        spots = (300, 700, 1100, 1500, 1900)
        sc = error_stream(700 + s, 2000, 0.01, volume=200.0, bursts=spots, burst_p=0.2)
        judge = ErrorRateJudge()
        found = []
        for i in range(len(sc.totals)):
            found += judge.observe_bucket(
                sc.bucket_start(i), float(sc.errors[i]), float(sc.totals[i]), "svc-1"
            )
        got = {
            round((f.evidence["bucket_start"] - sc.bucket_start(0)) / 60.0)
            for f in found
            if f.kind == AnomalyKind.ERROR_BURST
        }
        hits += len(got & set(spots))
        total += len(spots)
    return hits, total


def end_to_end() -> dict[str, float]:
    """Shipped judge on raw counters and log lines: us per input, pickled state."""
    sc = error_stream(42, 600, 0.01, 0.05, 300, 100.0)
    samples = counter_samples(sc, reset_at_bucket=450)
    lines = log_lines(sc)
    judge = ErrorRateJudge()
    t0 = time.perf_counter()
    f1 = [f for s in samples for f in judge.observe(s)]
    us_c = 1e6 * (time.perf_counter() - t0) / len(samples)
    t0 = time.perf_counter()
    f2 = [f for ln in lines for f in judge.observe_log(ln)]
    us_l = 1e6 * (time.perf_counter() - t0) / len(lines)
    shift_ts = sc.bucket_start(300)
    first = [
        next((f.ts for f in fs if f.kind == AnomalyKind.ERROR_RATE_DRIFT), float("nan"))
        for fs in (f1, f2)
    ]
    return {
        "us_c": us_c,
        "us_l": us_l,
        "delay_c": (first[0] - shift_ts) / 60.0,
        "delay_l": (first[1] - shift_ts) / 60.0,
        "bytes": len(pickle.dumps(judge, protocol=pickle.HIGHEST_PROTOCOL)),
    }


HEADER = [
    "| detector (in ErrorRateJudge) | >= 3x rises within 3 min | median delay (min) "
    "| max delay | 2x rises within 10 min | median delay 2x | false alarms: stable "
    "| daily swing | rare errors | before the rises | us/bucket |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def tune() -> str:
    """Sweep the CUSUM on the tuning seeds (never on the held-out ones)."""
    rows = []
    for delay, h, margin in itertools.product((0, 10), (8.0, 8.5, 9.0), (1.5, 2.0)):
        params = {"cusum_learn_delay": delay, "cusum_threshold": h, "cusum_margin": margin}
        rows.append(row(str(params), evaluate(TUNING_SEEDS, params)))
        print(rows[-1], flush=True)
    lines = [
        "## Error-rate drift: CUSUM sweep on the tuning seeds",
        "",
        "Command: `.venv/bin/python -m benchmarks.error_drift --tune`  ",
        f"Tuning seeds {TUNING_SEEDS} only. Rule: among the settings with no false alarm, the "
        "most >= 3x rises within 3 minutes, then the most 2x rises within 10 minutes. (Earlier "
        "sweeps over ratio 1.8-3.0, thresholds 5-11, margins 0.5-3, baseline memories of 30, "
        "60 and 180 buckets, learning delays of 5-30 buckets and min_increase_ratio 1.25/1.5 "
        "narrowed the grid to this one.)",
        "",
        *HEADER,
        *rows,
    ]
    return "\n".join(lines) + "\n"


def main() -> str:
    rows = []
    for name, params, cls in CONFIGS:
        rows.append(row(name, evaluate(HELD_OUT_SEEDS, params, cls)))
        print(rows[-1], flush=True)
    first = first_delays(HELD_OUT_SEEDS)
    hits, total = bursts()
    e2e = end_to_end()
    n_rise = len(rises(HELD_OUT_SEEDS))
    n_ctrl = len(controls(HELD_OUT_SEEDS))
    lines = [
        "## Error-rate drift (models/error_rate.py, models/cusum.py)",
        "",
        "Command: `.venv/bin/python -m benchmarks.error_drift` "
        "(`--tune` prints the sweep on the tuning seeds)  ",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}  ",
        f"Held-out streams (seeds {HELD_OUT_SEEDS}; defaults tuned on seeds {TUNING_SEEDS}): "
        f"{n_rise} rises (2x, 3x, 5x, 10x at 2-50 expected errors a minute, "
        f"`benchmarks/drift_streams.py`) and {n_ctrl} controls (stable 4000 min, daily swing "
        "of the rate +-50 % and volume +-60 % over 2 days, rare errors 4000 min). A delay is "
        f"the end of the bucket that raised the finding minus the rise; > {TAIL} = missed.",
        "",
        *HEADER,
        *rows,
        "",
        "Protocol note: an earlier version of this CUSUM, tuned on seeds 0-4, was evaluated "
        "once on seeds 1000-1004 and raised 2-4 false alarms there; the tuning set was then "
        "enlarged to seeds 0-9 and the held-out set replaced by fresh seeds 2000-2004, "
        "evaluated once with the defaults chosen by the rule in the sweep below.",
        "",
        "Shipped judge, delay in minutes per cell, median (max) over the held-out seeds:",
        "",
        *by_cell(HELD_OUT_SEEDS, first),
        "",
        *floor_section(HELD_OUT_SEEDS, first),
        "",
        f"- Bursts (single buckets at 20 % errors on a 1 % base), shipped judge: {hits}/{total}.",
        f"- End to end, shipped judge (0.01 -> 0.05 at ~100 requests/min, counter reset "
        f"later): first drift finding {e2e['delay_c']:.0f} min after the shift from counters, "
        f"{e2e['delay_l']:.0f} min from log lines; {e2e['us_c']:.2f} us per counter sample, "
        f"{e2e['us_l']:.2f} us per log line; {e2e['bytes']} B pickled for both sources.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if "--tune" in sys.argv:
        publish(tune(), ROOT / "benchmarks" / "results" / "error_drift_tuning.md")
    else:
        publish(main(), ROOT / "benchmarks" / "results" / "error_drift.md")
