"""Error-rate drift: ADWIN vs PageHinkley vs KSWIN inside ErrorRateJudge, plus bursts.

Streams (``benchmarks/scenarios.py``): per-minute buckets, Poisson volume with a daily cycle,
binomial errors. 25 upward shifts at bucket 600 of 1200 (5 sizes x 5 seeds), 5 downward
shifts, 15 null streams of 4000 buckets (3 base rates/volumes x 5 seeds), 5 streams with
single-bucket bursts. "Samples" below are buckets fed to the detector.

Run: ``.venv/bin/python benchmarks/error_drift.py`` (writes benchmarks/results/error_drift.md).
"""

from __future__ import annotations

import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.scenarios import (  # noqa: E402
    ErrorScenario,
    counter_samples,
    error_null_scenarios,
    error_shift_scenarios,
    error_stream,
    log_lines,
)
from models.error_rate import ErrorRateJudge  # noqa: E402
from pipeline.types import AnomalyKind  # noqa: E402

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("ADWIN delta=0.002", {"detector": "adwin"}),
    ("ADWIN delta=0.0002", {"detector": "adwin", "adwin_delta": 0.0002}),
    ("PageHinkley up d=0.005 l=0.1", {"detector": "page_hinkley"}),
    ("PageHinkley up d=0.005 l=0.3", {"detector": "page_hinkley", "ph_threshold": 0.3}),
    ("KSWIN alpha=0.005", {"detector": "kswin", "kswin_alpha": 0.005}),
    ("KSWIN alpha=0.001", {"detector": "kswin", "kswin_alpha": 0.001}),
    ("KSWIN alpha=0.0001 (default)", {"detector": "kswin"}),
]


def run_buckets(sc: ErrorScenario, params: dict[str, Any]) -> tuple[list[Any], int, float, int]:
    """(findings, raw detector alarms, seconds, pickled bytes)."""
    judge = ErrorRateJudge(**params)
    found: list[Any] = []
    raw = 0
    t0 = time.perf_counter()
    for i in range(len(sc.totals)):
        found += judge.observe_bucket(
            sc.bucket_start(i), float(sc.errors[i]), float(sc.totals[i]), "svc-1"
        )
        raw += bool(judge._streams["counters"].detector.drift_detected)
    spent = time.perf_counter() - t0
    return found, raw, spent, len(pickle.dumps(judge))


def evaluate(params: dict[str, Any]) -> dict[str, Any]:
    ups = error_shift_scenarios()
    nulls = error_null_scenarios()
    downs = [error_stream(500 + s, 1200, 0.04, 0.01, 600, 200.0) for s in range(5)]
    delays: list[int] = []
    cp_err: list[int] = []
    missed = 0
    pre_fa = 0
    pre_buckets = 0
    spent = 0.0
    n = 0
    sizes: list[int] = []
    for sc in ups:
        f, _, s, nb = run_buckets(sc, params)
        spent, n = spent + s, n + len(sc.totals)
        sizes.append(nb)
        assert sc.shift_bucket is not None
        shift_ts = sc.bucket_start(sc.shift_bucket)
        drifts = [x for x in f if x.kind == AnomalyKind.ERROR_RATE_DRIFT]
        pre_fa += sum(1 for x in drifts if x.ts <= shift_ts)
        pre_buckets += sc.shift_bucket
        post = [x for x in drifts if x.ts > shift_ts]
        if not post:
            missed += 1
            continue
        delays.append(round((post[0].ts - shift_ts) / sc.bucket_seconds))
        cp_err.append(round((post[0].evidence["shift_began"] - shift_ts) / sc.bucket_seconds))
    null_fa = null_raw = null_b = 0
    for sc in nulls:
        f, raw, s, nb = run_buckets(sc, params)
        spent, n = spent + s, n + len(sc.totals)
        sizes.append(nb)
        null_fa += sum(1 for x in f if x.kind == AnomalyKind.ERROR_RATE_DRIFT)
        null_raw += raw
        null_b += len(sc.totals)
    down_findings = 0
    for sc in downs:
        f, _, s, _ = run_buckets(sc, params)
        down_findings += sum(1 for x in f if x.kind == AnomalyKind.ERROR_RATE_DRIFT)
    return {
        "detected": len(ups) - missed,
        "n_up": len(ups),
        "delay_med": statistics.median(delays) if delays else float("nan"),
        "delay_p90": sorted(delays)[int(0.9 * (len(delays) - 1))] if delays else float("nan"),
        "cp_abs_med": statistics.median(abs(x) for x in cp_err) if cp_err else float("nan"),
        "fa_per_10k": 1e4 * (null_fa + pre_fa) / (null_b + pre_buckets),
        "raw_per_10k": 1e4 * null_raw / null_b,
        "down": down_findings,
        "us": 1e6 * spent / n,
        "bytes": int(statistics.median(sizes)),
    }


def bursts() -> tuple[int, int, int, int]:
    hits = total = 0
    for s in range(5):
        spots = (300, 700, 1100, 1500, 1900)
        sc = error_stream(700 + s, 2000, 0.01, volume=200.0, bursts=spots, burst_p=0.2)
        f, _, _, _ = run_buckets(sc, {})
        got = {round(x.evidence["bucket_start"] / 60.0 - sc.bucket_start(0) / 60.0)
               for x in f if x.kind == AnomalyKind.ERROR_BURST}
        hits += len(got & set(spots))
        total += len(spots)
    fa = nb = 0
    for sc in error_null_scenarios():
        f, _, _, _ = run_buckets(sc, {})
        fa += sum(1 for x in f if x.kind == AnomalyKind.ERROR_BURST)
        nb += len(sc.totals)
    return hits, total, fa, nb


def end_to_end() -> tuple[float, float, int, int, int, int]:
    """Default judge on raw inputs: us per counter sample / log line, findings, state bytes."""
    sc = error_stream(42, 600, 0.01, 0.05, 300, 100.0)
    samples = counter_samples(sc, reset_at_bucket=450)
    lines = log_lines(sc)
    j1 = ErrorRateJudge()
    t0 = time.perf_counter()
    f1 = [f for s in samples for f in j1.observe(s)]
    us_c = 1e6 * (time.perf_counter() - t0) / len(samples)
    j2 = ErrorRateJudge()
    t0 = time.perf_counter()
    f2 = [f for ln in lines for f in j2.observe_log(ln)]
    us_l = 1e6 * (time.perf_counter() - t0) / len(lines)
    d1 = sum(f.kind == AnomalyKind.ERROR_RATE_DRIFT for f in f1)
    d2 = sum(f.kind == AnomalyKind.ERROR_RATE_DRIFT for f in f2)
    return us_c, us_l, d1, d2, len(pickle.dumps(j1)), len(pickle.dumps(j2))


def main() -> str:
    rows = []
    results = {}
    for name, params in CONFIGS:
        r = evaluate(params)
        results[name] = r
        rows.append(
            f"| {name} | {r['detected']}/{r['n_up']} | {r['delay_med']:.0f} | {r['delay_p90']:.0f} "
            f"| {r['cp_abs_med']:.0f} | {r['fa_per_10k']:.2f} | {r['raw_per_10k']:.1f} "
            f"| {r['down']} | {r['us']:.1f} | {r['bytes']} |"
        )
        print(rows[-1], flush=True)
    hits, total, bfa, bnb = bursts()
    us_c, us_l, d1, d2, b1, b2 = end_to_end()
    lines = [
        "## Error-rate drift and bursts (models/error_rate.py)",
        "",
        "Command: `.venv/bin/python benchmarks/error_drift.py`  ",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}  ",
        "Streams: 1-minute buckets, Poisson volume (daily cycle) and binomial errors, seeded. "
        "25 upward shifts at bucket 600/1200 (0.01->0.03, 0.01->0.05, 0.02->0.04 at 200 "
        "req/bucket, 0.005->0.02 at 500, 0.05->0.10 at 100; 5 seeds), 15 null streams x 4000 "
        "buckets (0.01@200, 0.02@50, 0.05@100), 5 downward shifts 0.04->0.01. A sample = one "
        "bucket fed to the detector, through `ErrorRateJudge.observe_bucket` (same code path "
        "as counters/logs once a bucket closes).",
        "",
        "| detector (in the judge) | shifts detected | median delay (buckets) | p90 delay "
        "| median shift_began error (buckets) | drift findings per 10k null buckets "
        "| raw detector alarms per 10k null buckets | findings on drops | us/bucket "
        "| state bytes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Judge findings are upward shifts of >= 0.5 points and >= 1.25x after the change-point "
        "re-estimate, so raw detector alarms (either direction, no effect-size filter) are "
        "higher than findings. Baseline for the choice: the detectors themselves, same run.",
        "",
        f"- Bursts (single buckets at 20 % errors on a 1 % base, 200 req/bucket, 25 injected): "
        f"detected **{hits}/{total}**; burst findings on the null streams: **{bfa}** in {bnb} "
        f"buckets ({1e4 * bfa / bnb:.2f} per 10k).",
        f"- End to end (default KSWIN judge, 600 buckets, shift 0.01->0.05 at bucket 300, "
        f"counter reset at bucket 450): counters **{us_c:.1f} us/sample** ({d1} drift "
        f"finding(s)), logs **{us_l:.1f} us/line** ({d2} drift finding(s)); pickled state "
        f"{b1} B (counters) / {b2} B (logs).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = main()
    print(text)
    (ROOT / "benchmarks" / "results" / "error_drift.md").write_text(text)
