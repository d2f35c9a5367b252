"""NAB benchmark of the latency model: cross-validated score, and a river HST baseline.

Usage::

    .venv/bin/python benchmarks/nab.py                 # full protocol, 40 files (cached scores)
    .venv/bin/python benchmarks/nab.py --files 8 --grid small --runs 1   # quick subset
    .venv/bin/python benchmarks/nab.py --cad           # + CAD OSE experiment (#14, minutes)
    .venv/bin/python benchmarks/nab.py --discord       # + discord scorer experiment (#14)
    .venv/bin/python benchmarks/nab.py --artime        # + ARTime experiment (#14)

Protocol (the figure that predicts a user's unseen services, ``benchmarks/crossval.py``):
every setting of the grid (:data:`GRIDS`, the shipped configuration first) scores every file of
``../shared/data/nab/data`` once through ``selfheal.pipeline.core.scoring.score_series`` (the
``selfheal score`` path); per-file scores are cached in ``benchmarks/.cache/nab`` under a hash
of the model's source and the setting, so re-runs only re-aggregate. Then 5-fold (files dealt
round robin in name order, so every category is in several folds) and leave-one-category-out
cross-validation choose the setting, and its threshold, on the training files only and score the
held-out files with the NAB standard profile (``benchmarks/nab_scoring.py``):

- ``shipped threshold``: the setting's own alarm threshold ``z_to_score(alarm_z)``, as deployed;
- ``swept threshold``: the best corpus threshold of the training files.

Baseline, same run: river ``HalfSpaceTrees`` with river's defaults (``n_trees=10, height=8,
window_size=250``) on the value scaled online by ``MinMaxScaler``, its threshold chosen by the
same cross-validation and timed in alternation with the latency model.
``--cad`` adds CAD OSE (``benchmarks/nab_cad.py``) alone and combined with the latency model,
every weight and threshold chosen on training folds; ``--discord`` the online discord scorer
(left matrix profile, ``benchmarks/nab_discord.py``) the same way; ``--artime`` ARTime
(``benchmarks/nab_artime.py``, section in ``benchmarks/nab_artime_report.py``) the same way.
Writes ``benchmarks/results/nab.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfheal.models.latency import LatencyConfig, z_to_score  # noqa: E402
from selfheal.pipeline.core.scoring import parse_timestamp, read_nab_csv, score_series  # noqa: E402

from benchmarks.common import nproc, publish  # noqa: E402
from benchmarks.crossval import (  # noqa: E402
    CVResult,
    category_folds,
    nab_cross_validate,
    spread_folds,
)
from benchmarks.nab_artime import artime_scores  # noqa: E402
from benchmarks.nab_cad import WEIGHTS, cad_scores, combine  # noqa: E402
from benchmarks.nab_discord import (  # noqa: E402
    RATIOS,
    SETTINGS,
    SHARES,
    DiscordScorer,
    discord_distances,
    discord_likelihood,
    distance_source,
    mixed_latency,
    record_alarms,
    setting_label,
)
from benchmarks.nab_discord import WEIGHTS as DISCORD_WEIGHTS  # noqa: E402
from benchmarks.nab_scoring import (  # noqa: E402
    STANDARD,
    FileLayout,
    load_windows,
    normalised_score,
    score_corpus_at,
    window_indices,
)

DATA = ROOT / ".." / "shared" / "data" / "nab"
RESULTS = ROOT / "benchmarks" / "results" / "nab.md"
CACHE = ROOT / "benchmarks" / ".cache" / "nab"
#: source files whose content keys the score cache (a model edit invalidates it)
SOURCES = (ROOT / "models" / "latency.py", ROOT / "pipeline" / "core" / "scoring.py")
CAD_SOURCE = ROOT / "benchmarks" / "nab_cad.py"
ARTIME_SOURCE = ROOT / "benchmarks" / "nab_artime.py"

#: candidate settings: departures from the shipped ``LatencyConfig`` (shipped first: it wins ties)
GRIDS: dict[str, list[dict[str, Any]]] = {
    "small": [{}, {"alarm_z": 3.0}],
    "full": [
        {},
        *(
            {"alarm_z": z, "suppress": s}
            for z in (2.5, 2.75, 3.0, 3.25)
            for s in (40, 75, 150)
            if (z, s) != (2.75, 75)
        ),
        {"daily_bins": 0},
        {"average": 10},
        {"memory": 1600},
    ],
}

Series = tuple[str, list[float], list[float], FileLayout]


def load_corpus(limit: int | None = None, data: Path = DATA) -> list[Series]:
    windows = load_windows(data / "labels" / "combined_windows.json")
    out: list[Series] = []
    for rel in sorted(windows):
        _, ts, values = read_nab_csv(data / "data" / rel)
        wts = [(parse_timestamp(a), parse_timestamp(b)) for a, b in windows[rel]]
        out.append((rel, ts, values, FileLayout.build(len(ts), window_indices(ts, wts))))
    if limit is not None:
        # a spread subset: every k-th file, so each NAB category stays represented
        step = max(1, len(out) // limit)
        out = out[::step][:limit]
    return out


def label(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "shipped"


def _source_hash() -> str:
    h = hashlib.sha1()
    for p in SOURCES:
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _latency_job(args: tuple[dict[str, Any], list[float], list[float]]) -> np.ndarray:
    overrides, ts, values = args
    cfg = dataclasses.replace(LatencyConfig(), **overrides)
    return np.asarray(score_series(ts, values, cfg), dtype=np.float64)


def _hst_job(args: tuple[dict[str, Any], list[float], list[float]]) -> np.ndarray:
    overrides, _, values = args
    return np.asarray(hst_scores(values, **overrides), dtype=np.float64)


def _cad_job(args: tuple[dict[str, Any], list[float], list[float]]) -> np.ndarray:
    overrides, _, values = args
    return np.asarray(cad_scores(values, **overrides), dtype=np.float64)


def _artime_job(args: tuple[dict[str, Any], list[float], list[float]]) -> np.ndarray:
    overrides, _, values = args
    return np.asarray(artime_scores(values, **overrides), dtype=np.float64)


def _discord_job(args: tuple[dict[str, Any], list[float], list[float]]) -> np.ndarray:
    overrides, _, values = args
    return discord_distances(values, **overrides)


def _job(model: str) -> tuple[Callable[[tuple[dict[str, Any], list[float], list[float]]],
                                       np.ndarray], str]:  # fmt: skip
    """The scoring function of ``model`` and the cache key of its source."""
    if model == "latency":
        return _latency_job, _source_hash()
    if model == "cad":
        return _cad_job, hashlib.sha1(CAD_SOURCE.read_bytes()).hexdigest()[:12]
    if model == "artime":
        return _artime_job, hashlib.sha1(ARTIME_SOURCE.read_bytes()).hexdigest()[:12]
    if model == "discord":  # raw distances: keyed by the code computing them, not the module
        return _discord_job, distance_source()
    return _hst_job, "river"


def cached_scores(
    corpus: Sequence[Series],
    overrides: dict[str, Any],
    *,
    model: str = "latency",
    jobs: int = 2,
    cache: Path | None = CACHE,
) -> list[np.ndarray]:
    """Per-file scores of one setting, from the cache or computed (``jobs`` <= 2 processes:
    this one and at most one worker, the machine is shared)."""
    job, src = _job(model)
    key = hashlib.sha1(repr((model, src, sorted(overrides.items()))).encode()).hexdigest()[:16]
    out: dict[str, np.ndarray] = {}
    path = None if cache is None else cache / f"{key}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            out = {k: z[k] for k in z.files}
    todo = [s for s in corpus if s[0].replace("/", "__") not in out]
    if todo:
        tasks = [(overrides, ts, values) for _, ts, values, _ in todo]
        if jobs > 1 and len(tasks) > 1:
            # one worker takes every other file, this process the rest
            with ProcessPoolExecutor(max_workers=1) as pool:
                futs = [pool.submit(job, t) for t in tasks[1::2]]
                mine = [job(t) for t in tasks[::2]]
                theirs = [f.result() for f in futs]
            results = [None] * len(tasks)
            results[::2], results[1::2] = mine, theirs
        else:
            results = [job(t) for t in tasks]
        for s, r in zip(todo, results, strict=True):
            out[s[0].replace("/", "__")] = r  # type: ignore[assignment]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / ".gitignore").write_text("*\n")
            np.savez_compressed(path, **out)
    return [out[s[0].replace("/", "__")] for s in corpus]


def hst_scores(
    values: Sequence[float], n_trees: int = 10, height: int = 8, window_size: int = 250
) -> list[float]:
    """river ``HalfSpaceTrees`` (river's defaults) on the value scaled online to [0, 1]."""
    from river import anomaly, preprocessing

    scaler = preprocessing.MinMaxScaler()
    hst = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=42)
    out: list[float] = []
    for v in values:
        x = {"value": v}
        scaler.learn_one(x)  # online: the range of the points seen so far, this one included
        xs = scaler.transform_one(x)
        out.append(hst.score_one(xs))
        hst.learn_one(xs)
    return out


def cross_validate(
    corpus: Sequence[Series], candidates: dict[str, list[np.ndarray]], k: int,
    thresholds: dict[str, float] | None,
) -> dict[str, CVResult]:  # fmt: skip
    """5-fold (``k``) and leave-one-category-out results of one candidate set."""
    names = [s[0] for s in corpus]
    layouts = [s[3] for s in corpus]
    folds = {
        f"{k}-fold": spread_folds(names, k),
        "leave one category out": category_folds(names),
    }
    return {
        name: nab_cross_validate(candidates, layouts, fs, thresholds=thresholds)
        for name, fs in folds.items()
    }


def fixed_score(corpus: Sequence[Series], scores: list[np.ndarray], threshold: float) -> float:
    layouts = [s[3] for s in corpus]
    raw, _ = score_corpus_at(list(zip(scores, layouts, strict=True)), STANDARD, threshold)
    return normalised_score(raw, layouts, STANDARD)


def _prefix(corpus: Sequence[Series], budget: int) -> tuple[list[float], list[float]]:
    """The first ``budget`` points of the corpus, file after file."""
    ts_all: list[float] = []
    vals: list[float] = []
    for _, ts, values, _ in corpus:
        take = budget - len(vals)
        ts_all += ts[:take]
        vals += values[:take]
        if len(vals) >= budget:
            break
    return ts_all, vals


def speeds(
    corpus: Sequence[Series],
    fns: Sequence[tuple[Callable[[list[float], list[float]], Any], int]],
    runs: int,
) -> list[float]:
    """Median points/s of each ``(fn(ts, values), points)``; the models take turns in every
    run, so a noisy neighbour slows them alike (the machine is shared)."""
    data = [_prefix(corpus, n) for _, n in fns]
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, runs)):
        for (fn, _), (ts, vals), out in zip(fns, data, rates, strict=True):
            t0 = time.perf_counter()
            fn(ts, vals)
            out.append(len(vals) / (time.perf_counter() - t0))
    return [statistics.median(r) for r in rates]


def per_file_speeds(
    corpus: Sequence[Series], fns: Sequence[Callable[[list[float], list[float]], Any]],
    runs: int, files: int = 10, head: int = 2000,
) -> list[float]:  # fmt: skip
    """Median points/s of each ``fn(ts, values)`` over the first ``head`` points of ``files``
    files spread over the corpus (each file its own series); the models take turns."""
    step = max(1, len(corpus) // files)
    sample = [(ts[:head], vals[:head]) for _, ts, vals, _ in corpus[::step][:files]]
    n = sum(len(v) for _, v in sample)
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, runs)):
        for fn, out in zip(fns, rates, strict=True):
            t0 = time.perf_counter()
            for ts, vals in sample:
                fn(ts, vals)
            out.append(n / (time.perf_counter() - t0))
    return [statistics.median(r) for r in rates]


def cad_section(
    corpus: Sequence[Series], latency: list[np.ndarray], k: int, jobs: int, runs: int
) -> list[str]:
    """CAD OSE alone and ``max(latency, w x CAD)`` (``w`` chosen on training folds), online and
    with NAB's look-ahead normalisation (reference), and CAD's cost against the latency model."""
    thr = z_to_score(LatencyConfig().alarm_z)
    rows: list[str] = []
    for lookahead, tag in ((False, "online"), (True, "NAB look-ahead")):
        cad = cached_scores(
            corpus, {"lookahead": True} if lookahead else {}, model="cad", jobs=jobs
        )
        alone = cross_validate(corpus, {"CAD": cad}, k, None)
        cands = combine(latency, cad)
        fixed = cross_validate(corpus, cands, k, dict.fromkeys(cands, thr))
        rows += _cv_rows(f"CAD OSE {tag}, threshold swept on training folds", alone)
        rows += _cv_rows(f"max(latency, w x CAD {tag}), shipped threshold", fixed)
        rows += _cv_rows(
            f"max(latency, w x CAD {tag}), threshold swept", cross_validate(corpus, cands, k, None)
        )
    lat_speed, cad_speed = per_file_speeds(
        corpus, [lambda t, v: score_series(t, v), lambda t, v: cad_scores(v)], runs
    )
    return [
        f"### CAD OSE as a second model family (`--cad`, #14): weights {list(WEIGHTS)}",
        "",
        "Online: range seen so far, rest period 150. NAB look-ahead: the original's setup in "
        "NAB (the file's minimum and maximum, future values included; rest period = probation "
        "/ 5): a reference, not deployable. `w=0.0` is the latency model alone.",
        "",
        "| model | folds | **cross-validated** | in-sample | settings chosen by the folds |",
        "| --- | --- | ---: | ---: | --- |",
        *rows,
        "",
        f"| cost (first 2,000 points of 10 spread files, median of {runs} runs) | points/s "
        "| ratio |",
        "| --- | ---: | ---: |",
        f"| latency model (`score_series`) | {lat_speed:,.0f} | 1.0x |",
        f"| CAD OSE online (`benchmarks/nab_cad.py`) | {cad_speed:,.0f} "
        f"| {lat_speed / cad_speed:.1f}x slower |",
        "",
    ]


def discord_candidates(
    corpus: Sequence[Series], latency: list[np.ndarray], jobs: int
) -> dict[str, dict[str, list[np.ndarray]]]:
    """Candidate sets of the discord experiment (every one but ``alone`` has the latency
    model first, so that it wins ties): per family, label -> per-file scores."""
    fam: dict[str, dict[str, list[np.ndarray]]] = {
        "alone": {}, "max": {"latency": latency}, "damp": {"latency": latency},
        "mix": {"latency": latency},
    }  # fmt: skip
    thr = z_to_score(LatencyConfig().alarm_z)
    for st in SETTINGS:
        raw = cached_scores(corpus, dict(st), model="discord", jobs=jobs)
        tag = setting_label(st)
        lik = [discord_likelihood(r) for r in raw]
        fam["alone"][tag] = lik
        for w in DISCORD_WEIGHTS:
            fam["max"][f"{tag}, w={w}"] = [
                np.maximum(a, w * b) for a, b in zip(latency, lik, strict=True)
            ]
        for c in RATIOS:
            fam["damp"][f"{tag}, ratio={c}"] = [
                np.maximum(a, thr * record_alarms(r, c)) for a, r in zip(latency, raw, strict=True)
            ]
        for share in SHARES:
            fam["mix"][f"{tag}, share={share}"] = [
                mixed_latency(ts, v, r, share) for (_, ts, v, _), r in zip(corpus, raw, strict=True)
            ]
    fam["all"] = {"latency": latency}
    for name in ("max", "damp", "mix"):
        fam["all"].update(fam[name])
    return fam


def discord_section(
    corpus: Sequence[Series], latency: list[np.ndarray], k: int, jobs: int, runs: int
) -> list[str]:
    """The online discord scorer (left matrix profile) alone and with the latency model, every
    setting, weight and threshold chosen on training folds, and its cost per point."""
    thr = z_to_score(LatencyConfig().alarm_z)
    fam = discord_candidates(corpus, latency, jobs)
    fixed = {name: dict.fromkeys(c, thr) for name, c in fam.items()}
    rows = [
        *_cv_rows("discord likelihood alone, threshold swept", cross_validate(
            corpus, fam["alone"], k, None)),
        *_cv_rows("max(latency, w x discord likelihood), shipped threshold", cross_validate(
            corpus, fam["max"], k, fixed["max"])),
        *_cv_rows("max(latency, w x discord likelihood), threshold swept", cross_validate(
            corpus, fam["max"], k, None)),
        *_cv_rows("latency + DAMP-style record alarm, shipped threshold", cross_validate(
            corpus, fam["damp"], k, fixed["damp"])),
        *_cv_rows("latency, novelty mixed with discord raw, shipped threshold", cross_validate(
            corpus, fam["mix"], k, fixed["mix"])),
        *_cv_rows("all of the above with latency (one candidate set), shipped threshold",
                  cross_validate(corpus, fam["all"], k, fixed["all"])),
    ]  # fmt: skip

    def discord_only(_: list[float], v: list[float]) -> None:
        det = DiscordScorer()
        for x in v:
            det.distance_learn_one(x)

    lat_speed, disc_speed = per_file_speeds(
        corpus, [lambda t, v: score_series(t, v), discord_only], runs
    )
    return [
        f"### Online discord scorer (left matrix profile, `--discord`, #14): settings "
        f"{len(SETTINGS)} (window x flat floor), weights {list(DISCORD_WEIGHTS)}, record "
        f"ratios {list(RATIOS)}, novelty shares {list(SHARES)}",
        "",
        "`benchmarks/nab_discord.py`: z-normalised distance of the last `window` points to "
        "their nearest non-overlapping neighbour among the windows of the last 3,000 points, "
        "standard deviation floored at `flat` x the range seen so far; turned into a score "
        "by the latency model's likelihood (mean of 5, z, suppression 75 after z >= 2.75). "
        "Settings chosen by the folds are listed as `m=window, flat=floor, ...`.",
        "",
        "| model | folds | **cross-validated** | in-sample | settings chosen by the folds |",
        "| --- | --- | ---: | ---: | --- |",
        *rows,
        "",
        f"| cost (first 2,000 points of 10 spread files, median of {runs} runs) "
        "| points/s | us/point |",
        "| --- | ---: | ---: |",
        f"| latency model (`score_series`) | {lat_speed:,.0f} | {1e6 / lat_speed:.1f} |",
        f"| discord scorer alone (`DiscordScorer()`, window 32, history 3,000) "
        f"| {disc_speed:,.0f} | {1e6 / disc_speed:.1f} |",
        "",
    ]


def _cv_rows(title: str, res: dict[str, CVResult]) -> list[str]:
    rows = []
    for name, r in res.items():
        chosen = sorted({f.chosen for f in r.folds})
        rows.append(
            f"| {title} | {name} | **{r.score:.1f}** | {r.in_sample:.1f} | {'; '.join(chosen)} |"
        )
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=None, help="score a spread subset of N files")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="full")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="timing runs (median)")
    ap.add_argument("--jobs", type=int, default=2, choices=(1, 2), help="processes for scoring")
    ap.add_argument("--speed-points", type=int, default=20000, help="points timed per model")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    ap.add_argument("--cad", action="store_true", help="add the CAD OSE experiment (slow)")
    ap.add_argument(
        "--discord", action="store_true", help="add the discord (left matrix profile) experiment"
    )
    ap.add_argument("--artime", action="store_true", help="add the ARTime experiment")
    args = ap.parse_args(argv)
    if not (DATA / "data").is_dir():
        print(f"SKIP: NAB data not found at {DATA.resolve()} (shared data absent)")
        return 0

    corpus = load_corpus(args.files)
    n_points = sum(len(v) for _, _, v, _ in corpus)
    grid = GRIDS[args.grid]
    cands = {label(o): cached_scores(corpus, o, jobs=args.jobs) for o in grid}
    shipped_thr = {
        label(o): z_to_score(dataclasses.replace(LatencyConfig(), **o).alarm_z) for o in grid
    }
    k = min(args.folds, len(corpus))
    ours_fixed = cross_validate(corpus, cands, k, shipped_thr)
    ours_swept = cross_validate(corpus, cands, k, None)
    hst = {"HST defaults": cached_scores(corpus, {}, model="hst", jobs=args.jobs)}
    hst_swept = cross_validate(corpus, hst, k, None)
    shipped_in_sample = fixed_score(corpus, cands["shipped"], shipped_thr["shipped"])

    pts = args.speed_points
    lat_speed, hst_speed = speeds(
        corpus,
        [(lambda t, v: score_series(t, v), pts), (lambda t, v: hst_scores(v), pts // 4)],
        args.runs,
    )
    cmd = "`.venv/bin/python benchmarks/nab.py" + (" " + " ".join(argv) if argv else "") + "`"
    lines = [
        f"## NAB (tuning split, {len(corpus)} files): latency model, cross-validated",
        "",
        f"Command: {cmd}  ",
        f"Machine: {platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, nproc={nproc()} (shared)  ",
        f"Corpus: {len(corpus)} files, {n_points} points, "
        f"{sum(len(lay.windows) for *_, lay in corpus)} windows; grid `{args.grid}`: "
        f"{len(grid)} settings (departures from `LatencyConfig()`, shipped first).  ",
        "Score: NAB standard profile, normalised, held-out predictions pooled over folds. "
        "In-sample: the best setting chosen and scored on all files (optimistic).",
        "",
        "| model | folds | **cross-validated** | in-sample | settings chosen by the folds |",
        "| --- | --- | ---: | ---: | --- |",
        *_cv_rows("latency, shipped threshold", ours_fixed),
        *_cv_rows("latency, threshold swept on training folds", ours_swept),
        *_cv_rows("river HST defaults, threshold swept on training folds", hst_swept),
        "",
        f"Shipped configuration at its shipped threshold {shipped_thr['shipped']:.4f}, scored on "
        f"all files (in-sample, no choice made): {shipped_in_sample:.1f}.",
        "",
        f"| throughput (one process, models alternating, median of {args.runs} runs) "
        "| points/s | ratio |",
        "| --- | ---: | ---: |",
        f"| latency model (`score_series`, {pts} points) | {lat_speed:,.0f} | 1.0x |",
        f"| river `HalfSpaceTrees` defaults (n_trees=10, height=8; {pts // 4} points) | "
        f"{hst_speed:,.0f} | "
        f"{lat_speed / hst_speed:.1f}x slower |",
        "",
        "Baseline: river `HalfSpaceTrees(seed=42)` on the value scaled by river `MinMaxScaler` "
        "learned online (no look-ahead), scored the same way in the same run. Per-fold choices "
        "and scores: `benchmarks/crossval.py` (`CVResult.folds`).",
        "",
    ]
    if args.cad:
        lines += cad_section(corpus, cands["shipped"], k, args.jobs, args.runs)
    if args.discord:
        lines += discord_section(corpus, cands["shipped"], k, args.jobs, args.runs)
    if args.artime:
        from benchmarks.nab_artime_report import artime_section

        lines += artime_section(corpus, cands["shipped"], k, args.jobs, args.runs)
    publish("\n".join(lines), None if args.no_write else RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
