"""Cross-validation for the detector benchmarks: settings chosen on training folds only.

A user's services are unseen data, so the figure that predicts what they see is the score on
held-out files of settings chosen without looking at them. Both corpora use the same protocol:

1. every candidate setting is run once over every item (a NAB file, a Loghub system): the
   per-item results are cached by the caller, the folds only re-aggregate them;
2. for each fold, the candidate with the best *training* score is chosen (ties: the earliest
   candidate, so list the shipped defaults first) and only then scored on the held-out items;
3. the cross-validated figure pools the held-out results of every fold.

NAB (``nab_cross_validate``): the training score is the NAB normalised score of the training
files; the detection threshold is either the candidate's own shipped threshold (``fixed``) or
swept on the training files (``sweep``); held-out raw scores are summed over folds and
normalised over all files (the NAB corpus score of the held-out predictions). Loghub
(``loso_cross_validate``): leave one system out, mean grouping accuracy.

>>> folds = spread_folds(["a/1", "a/2", "b/1", "b/2", "c/1"], 2)
>>> folds
[[0, 2, 4], [1, 3]]
>>> category_folds(["a/1", "b/1", "a/2"])
[[0, 2], [1]]
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchmarks.nab_scoring import (
    STANDARD,
    FileLayout,
    Profile,
    normalised_score,
    score_corpus_at,
    sweep_corpus,
)

FloatArray = npt.NDArray[np.float64]


def spread_folds(names: Sequence[str], k: int) -> list[list[int]]:
    """``k`` folds dealt round robin over the names in sorted order (categories spread)."""
    if not 2 <= k <= len(names):
        raise ValueError(f"k must be in [2, {len(names)}], got {k}")
    order = sorted(range(len(names)), key=lambda i: names[i])
    return [sorted(order[j::k]) for j in range(k)]


def category_folds(names: Sequence[str]) -> list[list[int]]:
    """One fold per category (the folder of ``category/file``): leave one category out."""
    cats: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        cats.setdefault(name.rsplit("/", 1)[0], []).append(i)
    return list(cats.values())


@dataclass(frozen=True, slots=True)
class FoldResult:
    held_out: tuple[int, ...]
    chosen: str
    threshold: float
    train_score: float
    test_score: float  # normalised score (NAB) or mean accuracy (Loghub) of the held-out items
    test_raw: float  # NAB raw total of the held-out files (0 for Loghub)


@dataclass(frozen=True, slots=True)
class CVResult:
    folds: tuple[FoldResult, ...]
    score: float  # the cross-validated figure (pooled over held-out items)
    in_sample: float  # the best candidate's score when chosen and scored on every item
    in_sample_choice: str

    @property
    def fold_mean(self) -> float:
        return statistics.fmean(f.test_score for f in self.folds)


def _nab_fit(
    scores: Sequence[FloatArray],
    layouts: Sequence[FileLayout],
    idx: Sequence[int],
    profile: Profile,
    threshold: float | None,
) -> tuple[float, float]:
    """(normalised score, threshold) on files ``idx``: at ``threshold``, or swept if None."""
    items = [(scores[i], layouts[i]) for i in idx]
    lays = [layouts[i] for i in idx]
    if threshold is None:
        sw = sweep_corpus(items, profile)
        return normalised_score(sw.raw, lays, profile), sw.threshold
    raw, _ = score_corpus_at(items, profile, threshold)
    return normalised_score(raw, lays, profile), threshold


def _has_windows(layouts: Sequence[FileLayout], idx: Sequence[int]) -> bool:
    return any(layouts[i].windows for i in idx)


def nab_cross_validate(
    candidates: Mapping[str, Sequence[FloatArray]],
    layouts: Sequence[FileLayout],
    folds: Sequence[Sequence[int]],
    *,
    thresholds: Mapping[str, float] | None = None,
    profile: Profile = STANDARD,
) -> CVResult:
    """Choose a candidate (and with ``thresholds=None`` its threshold) on each fold's training
    files, score the held-out files with it; pooled over folds, normalised over all files.

    ``candidates``: label -> per-file score arrays (same order as ``layouts``).
    ``thresholds``: label -> the candidate's fixed (shipped) threshold; None sweeps it.
    """
    everything = list(range(len(layouts)))
    fold_results: list[FoldResult] = []
    pooled_raw = 0.0
    for held in folds:
        held_set = set(held)
        train = [i for i in everything if i not in held_set]
        if not _has_windows(layouts, train):
            raise ValueError("a training fold has no labelled window")
        best: tuple[float, str, float] | None = None
        for label, scores in candidates.items():
            thr = None if thresholds is None else thresholds[label]
            s, t = _nab_fit(scores, layouts, train, profile, thr)
            if best is None or s > best[0]:
                best = (s, label, t)
        assert best is not None, "no candidates"
        train_score, label, thr = best
        items = [(candidates[label][i], layouts[i]) for i in held]
        raw, _ = score_corpus_at(items, profile, thr)
        pooled_raw += raw
        lays = [layouts[i] for i in held]
        test = normalised_score(raw, lays, profile) if _has_windows(layouts, held) else math.nan
        fold_results.append(FoldResult(tuple(held), label, thr, train_score, test, raw))
    score = normalised_score(pooled_raw, layouts, profile)
    ins = max(
        (
            (
                _nab_fit(
                    s, layouts, everything, profile, None if thresholds is None else thresholds[c]
                )[0],
                c,
            )
            for c, s in candidates.items()
        ),
        key=lambda p: p[0],
    )
    return CVResult(tuple(fold_results), score, ins[0], ins[1])


def loso_cross_validate(accuracy: Mapping[str, Mapping[str, float]]) -> CVResult:
    """Leave one system out: ``accuracy[candidate][system]``; choose on the other systems by
    mean accuracy, report the held-out system's accuracy; the figure is their mean."""
    labels = list(accuracy)
    systems = list(accuracy[labels[0]])
    results: list[FoldResult] = []
    for k, held in enumerate(systems):
        train = [s for s in systems if s != held]
        train_scores = {c: statistics.fmean(accuracy[c][s] for s in train) for c in labels}
        label = max(labels, key=lambda c: train_scores[c])  # first maximum: earliest candidate
        results.append(
            FoldResult((k,), label, math.nan, train_scores[label], accuracy[label][held], 0.0)
        )
    means = {c: statistics.fmean(accuracy[c].values()) for c in labels}
    best = max(labels, key=lambda c: means[c])
    return CVResult(
        tuple(results), statistics.fmean(f.test_score for f in results), means[best], best
    )
