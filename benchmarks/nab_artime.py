"""ARTime (adaptive resonance over windows), re-implemented for the NAB experiment of #14.

Not shipped: ``benchmarks/nab.py --artime`` scores it alone and as a second model family next
to the latency model, every choice made on training folds (BENCHMARKS.md, NAB section). A
re-implementation in numpy from the description of Mark Hampton's ARTimeNAB.jl (ARTime, 74.9
on all 58 NAB files) and of its compact dual-vigilance fuzzy ART; no code copied.

Per point, ARTime keeps a window of the last ``sstep`` raw values; every ``sstep`` points it
emits one downsampled value and may report an anomaly there (other points score 0):

1. **Downsample.** The window's extreme farthest from a running average of window means (a
   spike), unless it is within 10 % of the window mean, then the mean.
2. **Discretise.** Normalised by ``(lo, hi)`` (NAB hands the original the file's minimum and
   maximum, future values included), rounded to one of 81 levels (0..80), then snapped to an
   approximate running median level when within 0.075 of it.
3. **Features.** The last 8 downsampled values, min-max normalised, through a full orthonormal
   Haar DWT (min-max normalised again), followed by the 8 values themselves: 16 features.
4. **DVFA.** Complement-coded features against every category at once: match
   ``(|x ^ w| / |w|) ** 3 * energy ** 2`` where ``energy`` is the same ratio on the newest
   value and its complement only. Categories matching at least ``rho_ub`` learn (fast commit);
   otherwise the best match at least ``rho_lb`` adds a category to its cluster; otherwise a
   new cluster is born: that is the anomaly, reported with a confidence from the match, the two
   vigilances and the energy, unless masked (just after a new cluster or a vigilance update,
   unless the match is far below the last anomaly's).
5. **Vigilance.** The probation period (15 % of the file, at most 750 points, as NAB's
   scorer) is batch-learned once: ``rho`` starts at the mean match of its windows presented in
   order of increasing similarity to the rest; afterwards ``rho_ub`` follows the running mean
   match (capped at 0.97) and ``rho_lb`` moves towards the smallest recent match, every half
   probation and shortly after each anomaly.

Normalisation modes of :func:`artime_scores`: ``lookahead=True`` (the original's NAB setup, a
reference, not deployable); online, ``headroom=None``: the range seen so far (this point
included); online, ``headroom=h``: the range of the probation's raw values widened by ``h`` x
its span on each side, frozen, later values clipped into it (the probation is buffered: the
original learns it in one batch at its end anyway). Every mode takes the probation length from
NAB's rule (15 % of the file, at most 750 points): the scorer ignores the same points, while a
fixed 750 would keep the detector silent past the scorer's probation in the 29 of the 40 files
shorter than 5,000 points. This uses the file's length, a mild look-ahead: a deployment would
set the probation (750, the rule's value for every file of 5,000 points or more).

>>> x = np.array([1.0, 3.0, 0.0, 0.0, 2.0, 2.0, 5.0, 1.0])
>>> np.round(haar_dwt(x)[:2] * np.sqrt(8), 6).tolist()  # sum; second half minus first half
[14.0, 6.0]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

WINDOW = 8  # downsampled values per feature window
WINDOWS_PER_PROBATION = 13
LEVELS = 80
CHOMP = 0.075  # snap to the running median level within this distance
INITIAL_RHO = 0.80
#: combination weights tried by ``benchmarks/nab.py --artime`` (0: the latency model alone,
#: first so that it wins ties): ``max(latency score, w * ARTime confidence)``; chosen a priori
#: around the latency model's threshold 0.2225 (w=1: any reported confidence alarms)
WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
#: headrooms of the frozen-range online variant (share of the probation's span added on each
#: side), candidates among which the training folds choose
HEADROOMS: tuple[float, ...] = (0.1, 0.5, 1.0)


def haar_dwt(x: Sequence[float] | FloatArray) -> FloatArray:
    """Full orthonormal Haar DWT of a power-of-two length, Wavelets.jl layout: the scaling
    coefficient, then details from the coarsest level to the finest; a detail is
    ``(second - first) / sqrt(2)`` of its pair."""
    out = np.asarray(x, dtype=np.float64).copy()
    n = len(out)
    if n & (n - 1) or n == 0:
        raise ValueError("length must be a power of two")
    while n > 1:
        pairs = out[:n].reshape(-1, 2).copy()
        half = n // 2
        out[half:n] = (pairs[:, 1] - pairs[:, 0]) / np.sqrt(2.0)
        out[:half] = (pairs[:, 0] + pairs[:, 1]) / np.sqrt(2.0)
        n = half
    return out


def _minmax(x: FloatArray) -> FloatArray:
    x = x - x.min()
    top = x.max()
    return x / top if top != 0 else x


class DVFA:
    """Dual-vigilance fuzzy ART over complement-coded features, every category scanned at once.

    :meth:`train` returns ``(new_cluster, match, energy)``: whether no category resonated (a
    new cluster, the anomaly), the best match and its energy similarity.
    """

    def __init__(self, dim: int, rho_lb: float = 0.0, rho_ub: float = 0.0) -> None:
        self.dim = dim
        self.rho_lb = rho_lb
        self.rho_ub = rho_ub
        self._w = np.empty((64, 2 * dim))
        self.n = 0

    @property
    def weights(self) -> FloatArray:
        return self._w[: self.n]

    def _add(self, row: FloatArray) -> None:
        if self.n == len(self._w):
            self._w = np.concatenate([self._w, np.empty_like(self._w)])
        self._w[self.n] = row
        self.n += 1

    def train(self, features: FloatArray, *, learn: bool = True) -> tuple[bool, float, float]:
        x = np.concatenate([features, 1.0 - features])
        if self.n == 0:  # the first category is all ones; the first sample is skipped
            self._add(np.ones(2 * self.dim))
            return False, 0.0, 0.0
        w = self.weights
        em = np.minimum(w, x)
        nw = w.sum(axis=1)
        nw[nw == 0] = 0.001
        e = self.dim - 1, 2 * self.dim - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            energy = (em[:, e[0]] + em[:, e[1]]) / (w[:, e[0]] + w[:, e[1]])
        match = (em.sum(axis=1) / nw) ** 3 * energy**2
        if np.isnan(match).any():
            if learn:  # an undefined match ranks first and stops the search: a new cluster
                self._add(x)
                return True, 0.0, 0.0
            match = np.nan_to_num(match, nan=0.0)
        j = int(np.argmax(match))
        best = float(match[j])
        best_energy = float(energy[j]) if best > 0 else 0.0
        best = max(best, 0.0)
        if not learn:
            return True, best, best_energy
        resonant = match >= self.rho_ub
        if resonant.any():
            self._w[: self.n][resonant] = em[resonant]
            return False, best, best_energy
        self._add(x)
        return best < self.rho_lb, best, best_energy


def similarity_sums(feats: FloatArray) -> FloatArray:
    """Per window (row), the sum of its near-cosine similarities to every window, itself 1."""
    norms = np.linalg.norm(feats, axis=1)
    safe = np.where(norms == 0, 1.0, norms)
    sim = (feats @ feats.T) / np.outer(safe, safe)
    zero = norms == 0
    sim[zero, :] = (1.0 - norms)[None, :].repeat(zero.sum(), axis=0)
    sim[:, zero] = (1.0 - norms)[:, None].repeat(zero.sum(), axis=1)
    np.fill_diagonal(sim, 1.0)
    return sim.sum(axis=0)


def initial_rho(feats: FloatArray, trend: int) -> float:
    """Mean match of the windows after the first half probation, learned at ``INITIAL_RHO``
    in order of increasing similarity to the others."""
    order = np.argsort(similarity_sums(feats), kind="stable")
    art = DVFA(feats.shape[1], INITIAL_RHO, INITIAL_RHO)
    matches = [art.train(feats[i])[1] for i in order]
    return float(np.mean(matches[trend // 2 - 1 :]))


def confidence(match: float, energy: float, rho_lb: float, rho_ub: float) -> float:
    m = min(0.999, match)
    ub = ((1 - m) - (1 - rho_ub)) / (1 - m)
    lb = ((1 - m) - (1 - rho_lb)) / (1 - m)
    return round(min(1.0, ub * 0.35 + lb * 0.65 + (1.0 - energy) * 1.5), 6)


def probation_of(length: int) -> int:
    """NAB's probation (15 % of the file, at most 750 points), made even as the original."""
    p = int(np.floor(0.15 * length)) if length < 5000 else 750
    return p - p % 2


class Downsampler:
    """Steps 1-2: one discretised, median-snapped value in [0, 1] per ``sstep`` raw values."""

    def __init__(self, sstep: int, lo: float, hi: float) -> None:
        self.sstep = sstep
        self.lo, self.hi = lo, hi
        self._raw: deque[float] = deque([0.0] * sstep, maxlen=sstep)
        self.i = 0  # raw points seen
        self.n = 0  # downsampled values emitted
        self._avg = 0.0
        self._bins = np.zeros(LEVELS + 1, dtype=np.int64)
        self._med = 0
        self._below = 0
        self._above = 0

    def push(self, x: float) -> float | None:
        self._raw.append(x)
        self.i += 1
        if self.i % self.sstep:
            return None
        self.n += 1
        mean, top, bottom = sum(self._raw) / self.sstep, max(self._raw), min(self._raw)
        if self.n == 1:
            self._avg = mean
        self._avg = (self._avg + mean) / 2
        ds = bottom if abs(top - self._avg) < abs(bottom - self._avg) else top
        if abs(ds - mean) < 0.1 * mean:  # a spike must be at least 10 % (as the original)
            ds = mean
        ds -= self.lo
        if self.hi - self.lo != 0:
            ds /= self.hi - self.lo
        level = min(max(int(np.round(ds * LEVELS)), 0), LEVELS)
        med = self._median(level) / LEVELS
        ds = level / LEVELS
        return med if abs(ds - med) < CHOMP else ds

    def _median(self, level: int) -> int:
        """An approximate running median level: one step towards the half count per value."""
        bins = self._bins
        bins[level] += 1
        if self.n == 1:
            self._med = level
        if self._med > level:
            self._below += 1
        elif self._med < level:
            self._above += 1
        half = self.n // 2
        if half < self._above:
            self._below += bins[self._med]
            self._med += 1
            while bins[self._med] == 0:
                self._med += 1
            self._above -= bins[self._med]
        elif half < self._below:
            self._above += bins[self._med]
            self._med -= 1
            while bins[self._med] == 0:
                self._med -= 1
            self._below -= bins[self._med]
        return self._med


def window_features(window: FloatArray) -> FloatArray:
    """Step 3: the Haar DWT of the min-max normalised window (normalised again), then the
    window itself."""
    return np.concatenate([_minmax(haar_dwt(_minmax(window))), window])


class ARTimeDetector:
    """One file's ARTime: ``score(x)`` per raw point, in order. ``value_range`` fixes the
    normalisation (look-ahead, or frozen after the probation); None: the range seen so far."""

    def __init__(self, probation: int, value_range: tuple[float, float] | None = None) -> None:
        self.sstep = max(1, probation // (WINDOW * WINDOWS_PER_PROBATION))
        self.trend = probation // self.sstep  # downsampled values in the probation
        self.mask = int(WINDOW * 1.5)  # values masked after an anomaly
        self.fixed = value_range is not None
        lo, hi = value_range if value_range is not None else (np.inf, -np.inf)
        self.down = Downsampler(self.sstep, lo, hi)
        self.window = np.zeros(WINDOW)
        self.art = DVFA(2 * WINDOW)
        self._probation: list[FloatArray] = []
        self.matches: list[float] = []  # best match per downsampled value (rho_ub's mean)
        self.recent = np.ones(self.trend // 2 + 1)  # the last matches
        self.shortfall = np.zeros(self.trend + 1)  # the last rho_ub - match
        self.anomaly_matches: list[float] = []
        self.last_anomaly = 0
        self.last_match = 0.0
        self.last_update = 0
        self.masked = False
        self.quiet = 0  # values since the last new cluster

    def score(self, x: float) -> float:
        if not self.fixed:
            self.down.lo, self.down.hi = min(self.down.lo, x), max(self.down.hi, x)
        ds = self.down.push(x)
        if ds is None:
            return 0.0
        i = self.down.n
        self.window = np.append(self.window[1:], ds)
        feats = window_features(self.window) if i >= WINDOW else np.zeros(2 * WINDOW)
        if i > self.trend:
            return self._detect(feats, i)
        self._probation.append(feats)
        if i == self.trend:  # batch-learn the probation
            batch = np.array(self._probation)
            rho = initial_rho(batch[WINDOW - 1 :], self.trend)
            self.art.rho_lb = self.art.rho_ub = rho
            for j, f in enumerate(batch, start=1):
                self._detect(f, j)
            self._probation = []
        return 0.0

    def _detect(self, feats: FloatArray, i: int) -> float:
        """Steps 4-5 for downsampled value ``i`` (1-based): the confidence of a new cluster
        that is not masked, or 0."""
        since = i - self.last_anomaly
        update_after_anomaly = since == self.mask
        update_for_trend = i - self.last_update >= self.trend // 2
        masked_anomaly = since <= self.mask
        if i > self.trend + self.mask and self.masked and self.quiet >= self.mask:
            self.masked = False
        new, match, energy = self.art.train(feats, learn=i >= WINDOW)
        new = new or i < WINDOW
        self.quiet = 0 if new else self.quiet + 1
        self.matches.append(match)
        self.recent = np.append(self.recent[1:], match)
        self.shortfall = np.append(self.shortfall[1:], self.art.rho_ub - match)
        if since < self.mask and self.anomaly_matches:
            self.anomaly_matches[-1] = min(self.anomaly_matches[-1], match)
        below_last = match < self.last_match * (0.90 if masked_anomaly else 0.70)
        score = 0.0
        if i > self.trend and new and (not (self.masked or masked_anomaly) or below_last):
            score = confidence(match, energy, self.art.rho_lb, self.art.rho_ub)
            self.anomaly_matches.append(match)
            self.last_match = match
            self.last_anomaly = i
        self.masked = new or self.masked
        if i > self.trend and (update_after_anomaly or update_for_trend):
            self._update_rho(i)
        return score

    def _update_rho(self, i: int) -> None:
        """``rho_ub``: the running mean match (at most 0.97); ``rho_lb``: 19 % of the way up
        to the smallest recent match, or down by half the mean recent shortfall."""
        ub = min(0.97, float(np.mean(self.matches)))
        lb = self.art.rho_lb
        floor = float(self.recent.min())
        if lb <= floor:
            lb += (floor - lb) * 0.19
        else:
            decr = 0.0
            if i > self.trend * 2:
                below = self.shortfall[self.shortfall > 0.05]
                if len(below):
                    decr = float(np.minimum(below, 0.37).mean())
            lb -= max(0.01, decr) / 2
            if self.anomaly_matches:
                lb = max(float(np.mean(self.anomaly_matches)), lb)
        self.art.rho_lb, self.art.rho_ub = min(ub, lb), ub
        self.last_update = i
        self.masked = True


def artime_scores(
    values: Sequence[float], *, lookahead: bool = True, headroom: float | None = None
) -> list[float]:
    """ARTime confidences per point (0 where nothing is reported). ``lookahead=True``: the
    original's NAB setup (the file's minimum and maximum), a reference, not deployable.
    Online: the range seen so far (``headroom=None``), or the probation's range widened by
    ``headroom`` x its span on each side and then frozen."""
    vals = [float(v) for v in values]
    probation = probation_of(len(vals))
    if lookahead:
        det = ARTimeDetector(probation, (min(vals), max(vals)))
        return [det.score(v) for v in vals]
    if headroom is None:
        det = ARTimeDetector(probation)
        return [det.score(v) for v in vals]
    det = ARTimeDetector(probation)
    head = det.sstep * det.trend  # raw points before the probation's batch: buffered
    lo, hi = (min(vals[:head]), max(vals[:head])) if head else (0.0, 0.0)
    span = hi - lo
    det = ARTimeDetector(probation, (lo - headroom * span, hi + headroom * span))
    return [det.score(v) for v in vals]
