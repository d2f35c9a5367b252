"""The ``--artime`` section of ``benchmarks/nab.py``: ARTime (``benchmarks/nab_artime.py``)
alone and as a second model family next to the latency model, every weight and threshold chosen
on training folds, in its three normalisation modes, and its cost against the latency model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from selfheal.models.latency import LatencyConfig, z_to_score
from selfheal.pipeline.core.scoring import score_series

from benchmarks.nab import Series, _cv_rows, cached_scores, cross_validate, per_file_speeds
from benchmarks.nab_artime import HEADROOMS, WEIGHTS, artime_scores

#: (label, per-candidate cache overrides of ``artime_scores``): the original's setup first,
#: then online; the folds choose among a mode's candidates (the frozen range's headroom)
MODES: tuple[tuple[str, dict[str, dict[str, Any]]], ...] = (
    ("NAB look-ahead", {"ARTime": {"lookahead": True}}),
    ("online, range seen so far", {"ARTime": {"lookahead": False}}),
    (
        "online, probation range frozen",
        {f"h={h}": {"lookahead": False, "headroom": h} for h in HEADROOMS},
    ),
)


def combine(
    latency: Sequence[np.ndarray], arts: dict[str, list[np.ndarray]]
) -> dict[str, list[np.ndarray]]:
    """Candidates ``max(latency, w * ARTime)`` per ARTime candidate and weight of
    :data:`WEIGHTS`, per file; ``w=0.0`` (the latency model alone) once, first."""
    out: dict[str, list[np.ndarray]] = {"w=0.0": list(latency)}
    for tag, art in arts.items():
        for w in WEIGHTS:
            if w:
                label = f"w={w}" if len(arts) == 1 else f"{tag}, w={w}"
                out[label] = [np.maximum(lat, w * a) for lat, a in zip(latency, art, strict=True)]
    return out


def artime_section(
    corpus: Sequence[Series], latency: list[np.ndarray], k: int, jobs: int, runs: int
) -> list[str]:
    """The table of the ARTime experiment (rows as the CAD section's)."""
    thr = z_to_score(LatencyConfig().alarm_z)
    rows: list[str] = []
    for tag, settings in MODES:
        arts = {
            name: cached_scores(corpus, overrides, model="artime", jobs=jobs)
            for name, overrides in settings.items()
        }
        cands = combine(latency, arts)
        rows += [
            *_cv_rows(f"ARTime {tag}, threshold swept on training folds",
                      cross_validate(corpus, arts, k, None)),
            *_cv_rows(f"max(latency, w x ARTime {tag}), shipped threshold",
                      cross_validate(corpus, cands, k, dict.fromkeys(cands, thr))),
            *_cv_rows(f"max(latency, w x ARTime {tag}), threshold swept",
                      cross_validate(corpus, cands, k, None)),
        ]  # fmt: skip
    lat_speed, la_speed, art_speed = per_file_speeds(
        corpus,
        [
            lambda t, v: score_series(t, v),
            lambda t, v: artime_scores(v),
            lambda t, v: artime_scores(v, lookahead=False),
        ],
        runs,
    )
    return [
        f"### ARTime as a second model family (`--artime`, #14): weights {list(WEIGHTS)}",
        "",
        "`benchmarks/nab_artime.py`, a numpy re-implementation of ARTimeNAB.jl (adaptive "
        "resonance over windows of downsampled values). NAB look-ahead: the original's setup "
        "(the file's minimum and maximum, future values included): a reference, not "
        "deployable. Online: the range seen so far, or the range of the probation's raw values "
        f"widened by `h` x its span on each side (h in {list(HEADROOMS)}, chosen by the "
        "folds) and frozen, values beyond it clipped. Every mode: probation 15 % of the "
        "file, at most 750 points (NAB's rule, as the scorer's). `w=0.0` is the latency model "
        "alone.",
        "",
        "| model | folds | **cross-validated** | in-sample | settings chosen by the folds |",
        "| --- | --- | ---: | ---: | --- |",
        *rows,
        "",
        f"| cost (first 2,000 points of 10 spread files, median of {runs} runs; probation "
        "15 % of 2,000) | points/s | ratio |",
        "| --- | ---: | ---: |",
        f"| latency model (`score_series`) | {lat_speed:,.0f} | 1.0x |",
        f"| ARTime NAB look-ahead | {la_speed:,.0f} | {lat_speed / la_speed:.1f}x slower |",
        f"| ARTime online, range seen so far | {art_speed:,.0f} "
        f"| {lat_speed / art_speed:.1f}x slower |",
        "",
    ]
