"""The Numenta Anomaly Benchmark (NAB v1.1) scoring rules, implemented from the published spec.

Rules (``../shared/data/nab/README.md``, semantics checked against NAB's ``nab/sweeper.py``):

- the first ``min(floor(0.15 * rows), 750)`` rows of a file are a probation period: not scored;
  a window none of whose rows is scorable does not count at all;
- a *detection* is a row whose anomaly score is ``>= threshold``;
- inside a labelled window ``[left, right]`` (row indices, inclusive, width ``right - left + 1``)
  the earliest detection counts, worth ``tp * S(p) / S(-1)`` with
  ``p = -(right - i + 1) / width`` and the scaled sigmoid ``S(p) = 2 / (1 + exp(5 p)) - 1``;
  a window without detection costs ``-fn``;
- every detection outside a window costs ``fp * S(p)`` (``S`` is negative there) with
  ``p = (i - prev_right) / (prev_width - 1)`` for the closest window that ended before ``i``,
  and ``S = -1`` when there is no such window or when ``p > 3`` (NAB's code says ``p >= 3``;
  the two differ by < 7e-7 per point, we follow the README);
- one threshold for the whole corpus, chosen by an exact sweep over every score value;
- normalised score ``100 * (raw - null) / (perfect - null)``: ``null`` never fires
  (``-fn`` per window), ``perfect`` has one earliest true positive per window (``tp`` each).

Pure numpy, no I/O except :func:`load_windows` / :func:`window_indices` helpers.

>>> layout = FileLayout.build(n=100, windows=[(40, 49)])
>>> perfect = np.zeros(100); perfect[40] = 1.0
>>> round(normalised_score(sweep_corpus([(perfect, layout)], STANDARD).raw,
...                        [layout], STANDARD), 6)
100.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PROBATION_PERCENT = 0.15
PROBATION_CAP = 750  # 0.15 * 5000 in NAB's code


@dataclass(frozen=True, slots=True)
class Profile:
    """An application profile: the weights of a true positive, false positive, false negative."""

    name: str
    tp: float
    fp: float
    fn: float


STANDARD = Profile("standard", 1.0, 0.11, 1.0)
REWARD_LOW_FP = Profile("reward_low_FP_rate", 1.0, 0.22, 1.0)
REWARD_LOW_FN = Profile("reward_low_FN_rate", 1.0, 0.11, 2.0)
PROFILES: tuple[Profile, ...] = (STANDARD, REWARD_LOW_FP, REWARD_LOW_FN)


def scaled_sigmoid(p: float) -> float:
    """NAB's scaled sigmoid: 0.9866 at p = -1 (window start), 0 at p = 0, -1 far after."""
    if p > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * p)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probation_length(rows: int) -> int:
    return int(min(math.floor(PROBATION_PERCENT * rows), PROBATION_CAP))


@dataclass(frozen=True)
class FileLayout:
    """Where one file's windows are, independent of detector and profile.

    ``window_of[i]`` is the index of the window row ``i`` lies in, ``-1`` outside any window,
    ``-2`` during probation. ``windows`` lists the scorable windows as ``(left, right)``.
    """

    n: int
    probation: int
    windows: tuple[tuple[int, int], ...]
    window_of: IntArray
    # per point: 0-based unweighted sigmoid value (before multiplying by the profile weights)
    unweighted: FloatArray

    @classmethod
    def build(cls, n: int, windows: Sequence[tuple[int, int]]) -> FileLayout:
        prob = probation_length(n)
        wins = sorted((int(a), int(b)) for a, b in windows)
        for j, (a, b) in enumerate(wins):
            if not 0 <= a <= b < n:
                raise ValueError(f"window {(a, b)} outside 0..{n - 1}")
            nxt = wins[j + 1] if j + 1 < len(wins) else None
            if nxt is not None and nxt[0] <= b:
                raise ValueError(f"overlapping windows {(a, b)} and {nxt}")
        window_of = np.full(n, -1, dtype=np.int64)
        unweighted = np.empty(n, dtype=np.float64)
        # window rows: relative position p = -(right - i + 1) / width
        for k, (a, b) in enumerate(wins):
            width = b - a + 1
            window_of[a : b + 1] = k
            for i in range(a, b + 1):
                unweighted[i] = scaled_sigmoid(-(b - i + 1) / width) / MAX_TP
        # rows outside windows: distance past the previous window's right edge
        prev_right: int | None = None
        prev_width = 0
        for i in range(n):
            k = int(window_of[i])
            if k >= 0:
                if i == wins[k][1]:  # leaving the window: it becomes the previous one
                    prev_right, prev_width = i, wins[k][1] - wins[k][0] + 1
                continue
            if prev_right is None:
                unweighted[i] = -1.0
            else:
                # width 1 would divide by zero in NAB; such windows do not occur in the corpus
                unweighted[i] = scaled_sigmoid((i - prev_right) / max(prev_width - 1, 1))
        window_of[:prob] = -2
        scorable = tuple(w for kk, w in enumerate(wins) if np.any(window_of == kk))
        # renumber so window ids index ``scorable``
        if len(scorable) != len(wins):
            remap = {wins.index(w): j for j, w in enumerate(scorable)}
            window_of = np.array(
                [remap.get(int(v), -2) if v >= 0 else int(v) for v in window_of], dtype=np.int64
            )
        return cls(n, prob, scorable, window_of, unweighted)

    def sweep_scores(self, profile: Profile) -> FloatArray:
        """Per-row contribution of a detection under ``profile`` (NAB's ``sweepScore``)."""
        weight = np.where(self.window_of >= 0, profile.tp, profile.fp)
        return self.unweighted * weight


@dataclass(frozen=True, slots=True)
class FileScore:
    raw: float
    tp: int  # windows detected
    fn: int  # windows missed
    fp: int  # detections outside windows (scored rows only)


def score_file(
    scores: npt.ArrayLike, layout: FileLayout, profile: Profile, threshold: float
) -> FileScore:
    """Raw NAB score of one file at a fixed threshold (detection: ``score >= threshold``)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (layout.n,):
        raise ValueError(f"expected {layout.n} scores, got {s.shape}")
    sweep = layout.sweep_scores(profile)
    det = s >= threshold
    outside = det & (layout.window_of == -1)
    raw = float(sweep[outside].sum())
    tp = 0
    for k in range(len(layout.windows)):
        hits = np.flatnonzero(det & (layout.window_of == k))
        if hits.size:
            tp += 1
            raw += float(sweep[hits[0]])  # earliest detection = highest value in the window
        else:
            raw -= profile.fn
    return FileScore(raw, tp, len(layout.windows) - tp, int(outside.sum()))


@dataclass(frozen=True, slots=True)
class SweepResult:
    threshold: float
    raw: float


def _events(
    scores: FloatArray, layout: FileLayout, profile: Profile
) -> tuple[FloatArray, FloatArray]:
    """(score, change of the file's total) for every row that changes it as the threshold drops.

    A false positive changes the total by its own (negative) sweep score; inside a window only the
    rows that raise the best detection so far change it (from ``-fn`` up to the earliest value).
    """
    sweep = layout.sweep_scores(profile)
    fp_mask = layout.window_of == -1
    ev_s = [scores[fp_mask]]
    ev_d = [sweep[fp_mask]]
    for k in range(len(layout.windows)):
        idx = np.flatnonzero(layout.window_of == k)
        order = np.argsort(-scores[idx], kind="stable")
        s_sorted = scores[idx][order]
        run = np.maximum.accumulate(np.concatenate(([-profile.fn], sweep[idx][order])))
        # rows with equal scores enter together, so the grouping at ties is exact after sorting
        delta = np.diff(run)
        keep = delta > 0
        ev_s.append(s_sorted[keep])
        ev_d.append(delta[keep])
    return np.concatenate(ev_s), np.concatenate(ev_d)


def sweep_corpus(
    items: Sequence[tuple[npt.ArrayLike, FileLayout]], profile: Profile
) -> SweepResult:
    """Best corpus-wide threshold and its raw total, by an exact sweep over all score values.

    Ties in total go to the highest threshold. A threshold above every score (never fire) is a
    candidate too, reported as ``inf``.
    """
    all_s: list[FloatArray] = []
    all_d: list[FloatArray] = []
    base = 0.0
    for scores, layout in items:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != (layout.n,):
            raise ValueError(f"expected {layout.n} scores, got {s.shape}")
        es, ed = _events(s, layout, profile)
        all_s.append(es)
        all_d.append(ed)
        base -= profile.fn * len(layout.windows)
    s_cat = np.concatenate(all_s) if all_s else np.empty(0)
    d_cat = np.concatenate(all_d) if all_d else np.empty(0)
    if s_cat.size == 0:
        return SweepResult(math.inf, base)
    order = np.argsort(-s_cat, kind="stable")
    s_sorted = s_cat[order]
    totals = base + np.cumsum(d_cat[order])
    # the total at threshold t counts every event with score >= t: last event of each tie group
    last_of_group = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    cand_totals = totals[last_of_group]
    best = int(np.argmax(cand_totals))  # first maximum = highest threshold
    if cand_totals[best] <= base:
        return SweepResult(math.inf, base)
    return SweepResult(float(s_sorted[last_of_group[best]]), float(cand_totals[best]))


def null_score(layouts: Sequence[FileLayout], profile: Profile) -> float:
    return -profile.fn * sum(len(lay.windows) for lay in layouts)


def perfect_score(layouts: Sequence[FileLayout], profile: Profile) -> float:
    return profile.tp * sum(len(lay.windows) for lay in layouts)


def normalised_score(raw: float, layouts: Sequence[FileLayout], profile: Profile) -> float:
    null = null_score(layouts, profile)
    perfect = perfect_score(layouts, profile)
    if perfect == null:
        raise ValueError("corpus has no scorable window")
    return 100.0 * (raw - null) / (perfect - null)


def score_corpus_at(
    items: Sequence[tuple[npt.ArrayLike, FileLayout]], profile: Profile, threshold: float
) -> tuple[float, list[FileScore]]:
    """Raw corpus total and per-file results at a fixed threshold."""
    per_file = [score_file(s, lay, profile, threshold) for s, lay in items]
    return sum(f.raw for f in per_file), per_file


# ----------------------------------------------------------------------------- label helpers


def load_windows(labels_path: Path) -> dict[str, list[tuple[str, str]]]:
    """``combined_windows.json``: relative file path -> list of ``(start, end)`` timestamps."""
    data = json.loads(labels_path.read_text())
    return {k: [(str(a), str(b)) for a, b in v] for k, v in data.items()}


def window_indices(
    timestamps: Sequence[float], windows: Sequence[tuple[float, float]]
) -> list[tuple[int, int]]:
    """Row index ranges of windows given in the same time unit as ``timestamps`` (sorted).

    ``left`` is the first row at or after the window start, ``right`` the last row at or before
    its end (NAB's labels are aligned to rows, so these are the rows carrying those timestamps).
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    out: list[tuple[int, int]] = []
    for a, b in windows:
        left = int(np.searchsorted(ts, a, side="left"))
        right = int(np.searchsorted(ts, b, side="right")) - 1
        if left <= right:
            out.append((left, right))
    return out
