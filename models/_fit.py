"""Exact fast paths for the time-to-limit forecast's robust fits (``selfheal.models.forecast``).

The forecast runs a few dozen Theil-Sen fits of at most ``max_fit_points`` floors every time a
bucket closes; at that size the cost is numpy's per-call overhead, not arithmetic. These helpers
return *bit-identical* results to the textbook versions (``np.triu_indices`` rebuilt per call,
``np.median``) while doing less per call: the pair and decimation indices are cached per size,
and the median is a direct ``np.partition`` that keeps ``np.median``'s rules (mean of the two
middle values for an even count, NaN if any value is NaN). ``tests/test_forecast_fastpaths.py``
pins the equivalence against the naive implementations.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=256)
def pair_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j for every pair of n points, as ``np.triu_indices(n, k=1)``; read-only
    because the cached arrays are shared by every caller."""
    i, j = np.triu_indices(n, k=1)
    i.flags.writeable = False
    j.flags.writeable = False
    return i, j


@lru_cache(maxsize=256)
def decimation_indices(n: int, cap: int) -> np.ndarray:
    """An even stride of ``cap`` of n indices (first and last kept), cached and read-only."""
    idx = np.linspace(0, n - 1, cap).round().astype(int)
    idx.flags.writeable = False
    return idx


def median(a: np.ndarray, *, overwrite: bool = False) -> float:
    """``float(np.median(a))`` for a 1-D float array, without its generic-axis machinery;
    ``overwrite`` partitions ``a`` in place (for temporaries: saves a copy)."""
    n = a.shape[0]
    if n == 0:
        return float(np.median(a))  # NaN and numpy's warning, as before
    k = n >> 1
    # np.median averages the middle value(s) with np.mean, whose sum starts from +0.0
    # (-0.0 comes out as 0.0): the same operations in the same order, bit for bit
    part = a if overwrite else a.copy()
    if n & 1:
        part.partition((k, n - 1))
        mid = 0.0 + part[k]
    else:
        part.partition((k - 1, k, n - 1))
        mid = (0.0 + part[k - 1] + part[k]) / 2
    # NaN sorts last: np.median returns NaN when the partition's last value is NaN
    last = part[n - 1]
    return float("nan") if last != last else float(mid)


def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept (at x=0) from the median of pairwise slopes (pairs with dx > 0)."""
    i, j = pair_indices(len(x))
    dx = x[j] - x[i]
    ok = dx > 0
    n_ok = int(np.count_nonzero(ok))
    if n_ok == 0:
        return 0.0, median(y)
    dy = y[j] - y[i]
    # floors are nearly always in time order: skip the masking when every pair counts
    slopes = dy / dx if n_ok == len(ok) else dy[ok] / dx[ok]
    slope = median(slopes, overwrite=True)
    return slope, median(y - slope * x, overwrite=True)


def decimate(x: np.ndarray, y: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``cap`` points at an even stride (Theil-Sen is O(n^2): long windows cost the same
    as short ones)."""
    if len(x) <= cap:
        return x, y
    idx = decimation_indices(len(x), cap)
    return x[idx], y[idx]
