"""KSWIN on per-bucket error ratios (the error-rate judge's detector before the CUSUM).

:class:`KSWin` was the error-rate judge's shipped detector before the binomial CUSUM
(``selfheal.models.cusum``); it stays selectable (``detector="kswin"``) and is the same-run
baseline in ``benchmarks/error_drift.py``.
"""

from __future__ import annotations

import warnings
from array import array
from itertools import accumulate, compress, islice
from operator import ne
from typing import Any

from scipy import stats
from selfheal.models.base import DriftDetector

# exact two-sample KS p-value by (n, m, n*m*D): it depends on nothing else, so it is computed
# once per distinct statistic (by scipy, as river does) and shared by every judge; bounded by
# the n*m/gcd(n, m) + 1 possible statistics per window shape (211 at 70 vs 30)
_KS_P: dict[tuple[int, int, int], float] = {}


def ks_gap(values: list[float], cut: int) -> int:
    """``n * m`` times the two-sample KS statistic of ``values[:cut]`` vs ``values[cut:]``.

    Ties are treated as scipy does (the empirical CDFs compared after each distinct value);
    the walk over the merged order runs in builtins (``accumulate``/``compress``), not in a
    Python loop.

    >>> ks_gap([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], 3)  # disjoint samples: D = 1, n * m = 9
    9
    """
    n, m = cut, len(values) - cut
    order = sorted(range(n + m), key=values.__getitem__)
    steps = [m] * n + [-n] * m  # +m per value of the first sample, -n per value of the second
    cums = list(accumulate(map(steps.__getitem__, order)))
    ranked = list(map(values.__getitem__, order))
    ends = compress(cums, map(ne, ranked, islice(ranked, 1, None)))  # last of each tie group
    return max(map(abs, ends), default=0)


def _ks_pvalue(values: list[float], cut: int, gap: int) -> float:
    key = (cut, len(values) - cut, gap)
    p = _KS_P.get(key)
    if p is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            p = float(stats.ks_2samp(values[:cut], values[cut:], method="auto").pvalue)
        _KS_P[key] = p
    return p


class KSWin(DriftDetector):
    """KSWIN (Raab et al. 2020) on bucket error ratios, against the whole reference window.

    Once ``window_size`` ratios are held, the last ``stat_size`` are compared with the
    ``window_size - stat_size`` older ones by a two-sample Kolmogorov-Smirnov test (exact
    p-value, as scipy computes it); a drift when ``p <= alpha`` and the statistic exceeds 0.1,
    after which the window starts empty. ``river.drift.KSWIN`` does the same but tests a random
    draw of ``stat_size`` older values: using all of them is deterministic (no seed, no 2.5 KB
    ``random.Random`` per detector) and more powerful at the same alpha. The window is an
    ``array('d')`` ring; the exact p-value depends only on the two sizes and the statistic, so
    it is computed once per distinct statistic and cached.

    >>> det = KSWin(alpha=1e-4)
    >>> hits = []
    >>> for i in range(400):
    ...     det.update((i * 7919 % 100) + (500.0 if i >= 200 else 0.0), 1000.0)
    ...     hits += [i] if det.drift_detected else []
    >>> hits
    [214]
    """

    __slots__ = ("_n", "_pos", "_win", "alpha", "drift_detected", "stat_size", "window_size")

    def __init__(self, alpha: float = 0.005, window_size: int = 100, stat_size: int = 30) -> None:
        if not 0.0 <= alpha <= 1.0 or not 0 < stat_size < window_size:
            raise ValueError("need 0 <= alpha <= 1 and 0 < stat_size < window_size")
        self.alpha = alpha
        self.window_size = window_size
        self.stat_size = stat_size
        self._win = array("d", bytes(8 * window_size))
        self._n = 0  # values held (the ring is full at window_size)
        self._pos = 0  # next slot written
        self.drift_detected = False

    def __getstate__(self) -> tuple[Any, ...]:
        return (
            self.alpha,
            self.window_size,
            self.stat_size,
            self._win.tobytes(),
            self._n,
            self._pos,
            self.drift_detected,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (
            self.alpha,
            self.window_size,
            self.stat_size,
            win,
            self._n,
            self._pos,
            self.drift_detected,
        ) = state
        self._win = array("d", win)

    def update(self, errors: float, total: float) -> None:
        w = self.window_size
        if self.drift_detected:  # as river: the window restarts empty after a drift
            self.drift_detected = False
            self._n = self._pos = 0
        self._win[self._pos] = errors / total
        self._pos = (self._pos + 1) % w
        if self._n < w:
            self._n += 1
            if self._n < w:
                return
        win, pos = self._win, self._pos
        ordered = (win[pos:] + win[:pos]).tolist()
        cut = w - self.stat_size
        gap = ks_gap(ordered, cut)
        if gap * 10 <= cut * self.stat_size:  # statistic <= 0.1: never a drift
            return
        self.drift_detected = _ks_pvalue(ordered, cut, gap) <= self.alpha
