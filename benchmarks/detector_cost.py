"""Cost of every detector in the pipeline: time per sample and bytes of state per series.

Usage::

    .venv/bin/python benchmarks/detector_cost.py               # full run (about 2 minutes)
    .venv/bin/python benchmarks/detector_cost.py --points 2000 --series 20000 --no-write

For each judge the pipeline creates (the static rules of ``selfheal.models.rules.DEFAULT_RULES``,
``MemoryLeakJudge``, ``ErrorRateJudge`` on counters and on logs, ``LatencyJudge``,
``LogAnalyzerJudge``) on a realistic synthetic stream of ``--points`` samples, 30 s apart:

- microseconds per sample: median of ``--runs`` timed passes of a fresh judge over the stream;
- state per series at steady state (after the stream): the pickled size of one judge, and the
  in-memory size from ``tracemalloc`` (bytes allocated by ``--instances`` judges fed the same
  stream, divided by their number; the shared input samples are allocated before tracing).

Baseline, same run: river ``HalfSpaceTrees`` with river's defaults (``n_trees=10, height=8``)
on the online-scaled value (:class:`RiverHSTJudge`), on the latency stream.

Then the 100,000-series check against the product target (detector state < 1 GiB): a
projection from the steady-state figures for a mix of 25 % memory series (the ``memory_high``
rule + ``MemoryLeakJudge``), 50 % latency series (``LatencyJudge``), 25 % rule-only series
(one rule judge each), plus per-entity judges (``ErrorRateJudge`` + ``LogAnalyzerJudge``) for
one entity per ``--series-per-entity`` series (the bank shares one ``ErrorRateJudge`` per entity
for counters and logs); and a direct measurement: ``--series`` series of
that mix built through ``selfheal.models.registry.Router.series_judges`` (default rules and models)
and
fed ``--short`` samples each, kept in a dict like the runner's bank, measured in two fresh
subprocesses (RSS growth without tracing; ``tracemalloc`` with tracing).
Writes the Markdown section to ``benchmarks/results/detector_cost.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pickle
import platform
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfheal.models.error_rate import ErrorRateJudge  # noqa: E402
from selfheal.models.latency import LatencyJudge  # noqa: E402
from selfheal.models.logs import LogAnalyzerJudge  # noqa: E402
from selfheal.models.memory import MemoryLeakJudge  # noqa: E402
from selfheal.models.registry import DetectorsConfig, Router  # noqa: E402
from selfheal.models.rules import DEFAULT_RULES  # noqa: E402
from selfheal.pipeline.kernel.types import LogLevel, LogLine, Sample  # noqa: E402

from benchmarks.common import nproc, publish  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "detector_cost.md"
STEP = 30.0
T0 = 1_700_000_000.0
GIB = 1 << 30

Event = Sample | LogLine


@dataclass
class Cost:
    name: str
    us_per_sample: float
    pickled: int
    in_memory: float


# ----------------------------------------------------------------------------- streams


def memory_stream(n: int, seed: int = 0) -> list[Event]:
    """Working set with a daily cycle, noise and a slow leak, under a 2 GiB limit."""
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        t = T0 + STEP * i
        v = 6e8 + 1e8 * math.sin(2 * math.pi * t / 86400) + 2e3 * i + rng.gauss(0, 5e6)
        out.append(
            Sample(
                ts=t,
                entity="svc",
                metric="container_memory_working_set_bytes",
                value=v,
                limit=2.0 * GIB,
            )
        )
    return out


def latency_stream(n: int, seed: int = 1) -> list[Event]:
    rng = random.Random(seed)
    return [
        Sample(
            ts=T0 + STEP * i,
            entity="svc",
            metric="http_request_duration_seconds",
            value=round(0.12 * rng.lognormvariate(0.0, 0.08), 6),
        )
        for i in range(n)
    ]


def rule_stream(metric: str, n: int, seed: int = 2) -> list[Event]:
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        t = T0 + STEP * i
        if metric == "queue_depth":
            out.append(
                Sample(ts=t, entity="svc", metric=metric, value=rng.uniform(50, 300), limit=1000.0)
            )
        elif metric == "loop_iteration_seconds":
            out.append(
                Sample(
                    ts=t,
                    entity="svc",
                    metric=metric,
                    value=rng.uniform(0.2, 0.5),
                    labels={"loop": "worker"},
                    limit=1.0,
                )
            )
        else:  # 0/1 checks, mostly passing
            out.append(
                Sample(ts=t, entity="svc", metric=metric, value=0.0 if rng.random() < 0.02 else 1.0)
            )
    return out


def counter_stream(n: int, seed: int = 3) -> list[Event]:
    rng = random.Random(seed)
    req = err = 0.0
    out: list[Event] = []
    for i in range(n // 2):
        t = T0 + 2 * STEP * i
        r = rng.randint(800, 1200)
        req += r
        err += sum(1 for _ in range(r // 100) if rng.random() < 0.5)
        out.append(Sample(ts=t, entity="svc", metric="requests_total", value=req))
        out.append(Sample(ts=t, entity="svc", metric="errors_total", value=err))
    return out


_TEMPLATES = (
    (LogLevel.INFO, "GET /api/v1/items/{} 200 {}ms"),
    (LogLevel.INFO, "user {} logged in from 10.0.{}.{}"),
    (LogLevel.INFO, "cache hit ratio {} for shard {}"),
    (LogLevel.WARNING, "slow query took {} ms on table orders_{}"),
    (LogLevel.ERROR, "upstream timeout after {} ms calling payments-{}"),
    (LogLevel.INFO, "worker {} finished batch {} in {} s"),
)


def log_stream(n: int, seed: int = 4) -> list[Event]:
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        level, tpl = _TEMPLATES[rng.choices(range(len(_TEMPLATES)), [40, 10, 10, 5, 2, 20])[0]]
        msg = tpl.format(*(rng.randint(1, 999) for _ in range(tpl.count("{}"))))
        out.append(LogLine(ts=T0 + STEP * i / 10, entity="svc", level=level, message=msg))
    return out


# ----------------------------------------------------------------------------- measuring


def feed(judge: Any, events: list[Event]) -> None:
    for ev in events:
        if isinstance(ev, LogLine):
            judge.observe_log(ev)
        else:
            judge.observe(ev)


def measure(
    name: str, factory: Callable[[], Any], events: list[Event], runs: int, instances: int
) -> Cost:
    times: list[float] = []
    judge: Any = None
    for _ in range(max(1, runs)):
        judge = factory()
        t0 = time.perf_counter()
        feed(judge, events)
        times.append((time.perf_counter() - t0) / len(events) * 1e6)
    pickled = len(pickle.dumps(judge, protocol=pickle.HIGHEST_PROTOCOL))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [factory() for _ in range(instances)]
    for j in kept:
        feed(j, events)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return Cost(name, statistics.median(times), pickled, (after - before) / instances)


class RiverHSTJudge:
    """Same-run alternative to ``LatencyJudge``: river ``HalfSpaceTrees`` with river's defaults
    (``n_trees=10, height=8, window_size=250``) on the value scaled online by ``MinMaxScaler``,
    scored then learned per sample (what ``benchmarks/nab.py`` scores)."""

    def __init__(self) -> None:
        from river import anomaly, preprocessing

        self.scaler = preprocessing.MinMaxScaler()
        self.hst = anomaly.HalfSpaceTrees(seed=42)

    def observe(self, sample: Sample) -> list[Any]:
        x = {"value": sample.value}
        self.scaler.learn_one(x)
        xs = self.scaler.transform_one(x)
        self.hst.score_one(xs)
        self.hst.learn_one(xs)
        return []


def paired_ratio(
    a: Callable[[], Any], b: Callable[[], Any], events: list[Event], runs: int
) -> float:
    """Median over runs of time(b) / time(a), the two fed the same stream back to back (a
    shared machine slows both alike within a run)."""
    ratios: list[float] = []
    for _ in range(max(1, runs)):
        spent = []
        for factory in (a, b):
            judge = factory()
            t0 = time.perf_counter()
            feed(judge, events)
            spent.append(time.perf_counter() - t0)
        ratios.append(spent[1] / spent[0])
    return statistics.median(ratios)


BASELINE = "baseline: river `HalfSpaceTrees` defaults + `MinMaxScaler` (latency stream)"

# ----------------------------------------------------------------------------- 100k build

MIX = (("memory", 0.25), ("latency", 0.50), ("rule", 0.25))
_RULE_METRICS = (
    "queue_depth",
    "health_check_ok",
    "dependency_request_ok",
    "loop_iteration_seconds",
)


def _series_sample(kind: str, idx: int, i: int, rng: random.Random) -> Sample:
    entity = f"svc-{idx // 8}"
    t = T0 + STEP * i
    if kind == "memory":
        return Sample(
            ts=t,
            entity=entity,
            metric="container_memory_working_set_bytes",
            value=6e8 + 2e3 * i + rng.gauss(0, 5e6),
            labels={"pod": str(idx)},
            limit=2.0 * GIB,
        )
    if kind == "latency":
        return Sample(
            ts=t,
            entity=entity,
            metric="http_request_duration_seconds",
            value=0.12 * rng.lognormvariate(0.0, 0.08),
            labels={"route": str(idx)},
        )
    metric = _RULE_METRICS[idx % len(_RULE_METRICS)]
    value = rng.uniform(0.2, 0.5) if metric == "loop_iteration_seconds" else 1.0
    limit = (
        1.0 if metric == "loop_iteration_seconds" else (1000.0 if metric == "queue_depth" else None)
    )
    if metric == "queue_depth":
        value = rng.uniform(50, 300)
    return Sample(
        ts=t, entity=entity, metric=metric, value=value, labels={"id": str(idx)}, limit=limit
    )


def build_bank(n_series: int, short: int) -> tuple[dict[Any, list[Any]], dict[str, int]]:
    router = Router(DEFAULT_RULES, DetectorsConfig())
    rng = random.Random(7)
    kinds = [k for k, share in MIX for _ in range(round(share * 100))]
    bank: dict[Any, list[Any]] = {}
    counts: dict[str, int] = {}
    for idx in range(n_series):
        kind = kinds[idx % len(kinds)]
        first = _series_sample(kind, idx, 0, rng)
        judges = router.series_judges(first)
        key = (first.entity, first.metric, tuple(sorted(first.labels.items())))
        bank[key] = judges
        for j in judges:
            counts[type(j).__name__] = counts.get(type(j).__name__, 0) + 1
        for i in range(short):
            s = first if i == 0 else _series_sample(kind, idx, i, rng)
            for j in judges:
                j.observe(s)
    return bank, counts


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(mode: str, n_series: int, short: int) -> None:
    """Subprocess body: build the bank and print the measured bytes as JSON."""
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    rss0 = _rss()
    t0 = time.perf_counter()
    bank, counts = build_bank(n_series, short)
    elapsed = time.perf_counter() - t0
    gc.collect()
    out: dict[str, Any] = {"series": len(bank), "judges": counts, "seconds": elapsed}
    if mode == "tracemalloc":
        out["bytes"] = tracemalloc.get_traced_memory()[0] - before
    else:
        out["bytes"] = _rss() - rss0
    print(json.dumps(out))


def direct(mode: str, n_series: int, short: int) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--series",
            str(n_series),
            "--short",
            str(short),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(ROOT),
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ----------------------------------------------------------------------------- report


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--points", type=int, default=5000, help="samples per steady-state stream")
    ap.add_argument("--runs", type=int, default=3, help="timed passes per judge (median)")
    ap.add_argument("--instances", type=int, default=20, help="judges traced for memory")
    ap.add_argument("--series", type=int, default=100_000, help="series in the direct build")
    ap.add_argument("--short", type=int, default=16, help="samples per series, direct build")
    ap.add_argument("--series-per-entity", type=int, default=8, help="for the projection")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    ap.add_argument("--child", choices=("rss", "tracemalloc"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.series, args.short)
        return 0

    n = args.points
    rules = {r.name: r for r in DEFAULT_RULES}
    rule_metric = {
        "memory_high": "container_memory_working_set_bytes",
        "queue_high": "queue_depth",
        "breaker_open": "dependency_request_ok",
        "health_check_failed": "health_check_ok",
        "loop": "loop_iteration_seconds",
    }
    jobs: list[tuple[str, Callable[[], Any], list[Event]]] = []
    for name, rule in rules.items():
        metric = rule_metric.get(name)
        if metric is None:
            continue
        events = memory_stream(n) if name == "memory_high" else rule_stream(metric, n)
        jobs.append((f"rule `{name}` ({type(rule.judge()).__name__})", rule.judge, events))
    jobs += [
        ("`MemoryLeakJudge`", MemoryLeakJudge, memory_stream(n)),
        ("`ErrorRateJudge` (counters)", ErrorRateJudge, counter_stream(n)),
        ("`ErrorRateJudge` (logs)", ErrorRateJudge, log_stream(n)),
        (
            "`ErrorRateJudge` (counters + logs, as deployed: one per entity)",
            ErrorRateJudge,
            sorted(counter_stream(n) + log_stream(n), key=lambda ev: ev.ts),
        ),
        ("`LatencyJudge`", LatencyJudge, latency_stream(n)),
        ("`LogAnalyzerJudge` (logs)", LogAnalyzerJudge, log_stream(n)),
    ]
    jobs.append((BASELINE, RiverHSTJudge, latency_stream(n)))
    costs: dict[str, Cost] = {}
    for name, factory, events in jobs:
        costs[name] = c = measure(name, factory, events, args.runs, args.instances)
        print(
            f"measured {name}: {c.us_per_sample:.2f} us, {c.pickled} B pickled, "
            f"{c.in_memory:.0f} B in memory",
            file=sys.stderr,
            flush=True,
        )

    # projection for 100k series at steady state
    def mem(name: str) -> float:
        return costs[name].in_memory

    def pk(name: str) -> float:
        return float(costs[name].pickled)

    n100k = 100_000
    rule_names = [k for k in costs if k.startswith("rule ") and "memory_high" not in k]
    mem_rule = next(k for k in costs if "memory_high" in k)
    per_series = {
        "memory (memory_high rule + MemoryLeakJudge)": (
            0.25,
            mem(mem_rule) + mem("`MemoryLeakJudge`"),
            pk(mem_rule) + pk("`MemoryLeakJudge`"),
        ),
        "latency (LatencyJudge)": (0.50, mem("`LatencyJudge`"), pk("`LatencyJudge`")),
        "rule-only (one rule judge, mean of the 4)": (
            0.25,
            statistics.mean(mem(k) for k in rule_names),
            statistics.mean(pk(k) for k in rule_names),
        ),
    }
    entities = n100k / args.series_per_entity
    both = "`ErrorRateJudge` (counters + logs, as deployed: one per entity)"
    entity_mem = mem(both) + mem("`LogAnalyzerJudge` (logs)")
    entity_pk = pk(both) + pk("`LogAnalyzerJudge` (logs)")
    proj_series = sum(share * n100k * m for share, m, _ in per_series.values())
    proj_series_pk = sum(share * n100k * p for share, _, p in per_series.values())
    proj_total = proj_series + entities * entity_mem
    proj_total_pk = proj_series_pk + entities * entity_pk

    print(f"direct build of {args.series} series (rss) ...", file=sys.stderr, flush=True)
    d_rss = direct("rss", args.series, args.short)
    print(f"direct build of {args.series} series (tracemalloc) ...", file=sys.stderr, flush=True)
    d_tm = direct("tracemalloc", args.series, args.short)
    scale = n100k / args.series

    argv_s = (" " + " ".join(argv)) if argv else ""
    lines = [
        "## Detector cost: time per sample and state per series",
        "",
        f"Command: `.venv/bin/python benchmarks/detector_cost.py{argv_s}`  ",
        f"Machine: {platform.machine()} {platform.processor() or ''}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"nproc={nproc()} (shared, single-threaded run)  ",
        f"Streams: {n} samples per judge, {STEP:.0f} s apart (memory: daily cycle + slow leak; "
        "latency: lognormal; rules: in-range values; counters: ~1 % errors; logs: 6 templates). "
        f"Time: median of {args.runs} passes. In-memory: tracemalloc over {args.instances} judges "
        "at steady state, per judge. Pickled: one judge, highest protocol.",
        "",
        "| detector | us / sample | pickled bytes | in-memory bytes |",
        "| --- | --- | --- | --- |",
    ]
    for c in costs.values():
        lines.append(f"| {c.name} | {c.us_per_sample:.2f} | {c.pickled:,} | {c.in_memory:,.0f} |")
    b, c = costs[BASELINE], costs["`LatencyJudge`"]
    faster = paired_ratio(LatencyJudge, RiverHSTJudge, latency_stream(n), max(3, args.runs))
    lines += [
        "",
        f"`LatencyJudge` against the baseline: {faster:.1f}x faster per sample (median of "
        "back-to-back pairs on the same stream), state "
        f"{b.in_memory / c.in_memory:.0f}x smaller in memory, "
        f"{b.pickled / c.pickled:.0f}x smaller pickled.",
    ]
    lines += [
        "",
        "### 100,000 series (target: detector state < 1 GiB)",
        "",
        f"Projection from the steady-state figures above, one entity per "
        f"{args.series_per_entity} series ({entities:,.0f} entities with `ErrorRateJudge` + "
        "`LogAnalyzerJudge`):",
        "",
        "| series kind | share | in-memory bytes / series | pickled bytes / series |",
        "| --- | --- | --- | --- |",
    ]
    for kind, (share, m, p) in per_series.items():
        lines.append(f"| {kind} | {share:.0%} | {m:,.0f} | {p:,.0f} |")
    lines += [
        f"| per entity (ErrorRateJudge + LogAnalyzerJudge) | {entities:,.0f} entities | "
        f"{entity_mem:,.0f} | {entity_pk:,.0f} |",
        "",
        f"Projected: series judges {proj_series / 2**20:,.1f} MiB in memory "
        f"**{'within' if proj_series < GIB else 'OVER'} 1 GiB** "
        f"({proj_series_pk / 2**20:,.1f} MiB pickled); with per-entity judges "
        f"{proj_total / 2**20:,.1f} MiB ({proj_total_pk / 2**20:,.1f} MiB pickled): "
        f"**{'within' if proj_total < GIB else 'OVER'} 1 GiB** "
        f"({proj_total / GIB:.1%} of it).",
        "",
        f"Direct: {d_tm['series']:,} series built through `Router.series_judges` (default rules "
        f"and models) and fed {args.short} samples each, judges "
        + ", ".join(f"{k} x{v:,}" for k, v in sorted(d_tm["judges"].items()))
        + f"; tracemalloc {d_tm['bytes'] / 2**20:,.1f} MiB "
        f"({d_tm['bytes'] / d_tm['series']:,.0f} B per series, bank dict and keys included), "
        f"RSS growth {d_rss['bytes'] / 2**20:,.1f} MiB (untraced run, {d_rss['seconds']:.1f} s)"
        + (
            f"; scaled to 100,000 series: {d_tm['bytes'] * scale / 2**20:,.1f} MiB"
            if scale != 1
            else ""
        )
        + ". Short streams leave the memory-growth judge below its steady-state size (its "
        "history grows to 26 h of 5-minute buckets), hence the projection above.",
        "",
    ]
    text = "\n".join(lines)
    publish(text, None if args.no_write else RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
