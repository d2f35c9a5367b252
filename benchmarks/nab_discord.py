"""Online discord scorer (a left matrix profile), the NAB experiment of #14 (``--discord``).

Not shipped: ``benchmarks/nab.py --discord`` scores it alone and next to the latency model,
every weight, setting and threshold chosen on training folds (BENCHMARKS.md, NAB section).
The family behind DAMP (Lu et al. 2022): a point is anomalous when the shape of the last
``window`` points has no close neighbour among the shapes of the past ``history`` points.

1. **Windows.** The subsequence ending at each point is z-normalised by its own mean and
   standard deviation. A (nearly) flat window is not blown up to unit variance: its standard
   deviation is floored at ``flat`` times the range of the values seen so far (this window
   included, never the future), so noise far below the series' scale reads as flat; a window
   that is flat even for the floor (a constant series) normalises to zeros. Flat against flat
   is then distance 0, flat against a shape ``sqrt(window)``.
2. **Left nearest neighbour.** The Euclidean distance of the newest normalised window to every
   window ending in ``[t - history, t - exclusion]`` (``exclusion`` defaults to ``window``: no
   trivial, overlapping match); the minimum, divided by its maximum ``2 sqrt(window)``, is the
   raw discord score in [0, 1] (0 while no past window exists).
3. **Likelihood** (:func:`discord_likelihood`), as the latency model turns its raw novelty into a
   score: mean of the last ``average`` raw scores against their running mean / std (exact over
   the first ``long`` points, then exponentially weighted), ``z_to_score(z)``, 0 for the first
   ``learning_period`` points, and ``suppress`` quiet points after ``z >= alarm_z``.

:class:`DiscordScorer` is the online form (a ring of normalised windows, one matrix-vector
product per point); :func:`discord_distances` computes the same raw scores for a whole series
in blocks of matrix products (the benchmark's fast path; tested equal).

>>> import numpy as np
>>> x = np.tile([0.0, 1.0, 3.0, 7.0, 3.0, 1.0, 0.0, 0.0], 60)
>>> det = DiscordScorer(window=8, history=200)
>>> raw = [det.distance_learn_one(v) for v in x]
>>> max(raw[100:]) < 1e-6  # a repeating shape has a perfect match
True
>>> det.distance_learn_one(-4.0) > 0.2  # a new shape has none
True
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from selfheal.models.latency import LatencyDetector, z_to_score

FloatArray = npt.NDArray[np.float64]
#: a window whose standard deviation is below this share of its mean's magnitude is flat
_TINY = 1e-9


def _normalise(w: FloatArray, sd: FloatArray, mu: FloatArray, span: FloatArray, flat: float
               ) -> FloatArray:  # fmt: skip
    """Rows of ``w`` centred and divided by ``max(sd, flat * span)``; flat rows become 0."""
    den = np.maximum(sd, flat * span)
    is_flat = den <= _TINY * (1.0 + np.abs(mu))
    den = np.where(is_flat, 1.0, den)
    z = (w - mu[:, None]) / den[:, None]
    z[is_flat] = 0.0
    return z


class DiscordScorer:
    """Online left matrix profile: ``distance_learn_one(x)`` is the raw discord score of the
    window ending at ``x`` (see the module docstring), then the window is remembered.

    State: the last ``window`` values, a ring of ``history`` normalised windows and their
    squared norms (``history * (window + 1)`` floats), the range seen so far.
    """

    def __init__(
        self, window: int = 32, history: int = 3000, exclusion: int | None = None,
        flat: float = 0.01,
    ) -> None:  # fmt: skip
        exclusion = window if exclusion is None else exclusion
        if window < 2 or history < 1 or not 1 <= exclusion <= history or flat < 0:
            raise ValueError("window >= 2, 1 <= exclusion <= history, flat >= 0")
        self.window = window
        self.history = history
        self.exclusion = exclusion
        self.flat = flat
        self._buf = np.zeros(window)
        self._ring = np.zeros((history, window))
        self._norm = np.zeros(history)
        self.lo = math.inf
        self.hi = -math.inf
        self.n = 0  # points seen
        self.k = 0  # windows stored

    def distance_learn_one(self, x: float) -> float:
        x = float(x)
        m = self.window
        self._buf[self.n % m] = x
        self.n += 1
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)
        if self.n < m:
            return 0.0
        i = self.n % m
        w = np.concatenate((self._buf[i:], self._buf[:i]))[None, :]
        mu = w.mean(axis=1)
        z = _normalise(w, w.std(axis=1), mu, np.array([self.hi - self.lo]), self.flat)[0]
        nz = float(z @ z)
        k, h = self.k, self.history
        raw = 0.0
        eligible = k - self.exclusion + 1  # windows 0 .. k - exclusion
        if eligible > 0:
            d2 = self._norm + nz - 2.0 * (self._ring @ z)
            # the newest exclusion - 1 windows and the empty slots are not candidates
            d2[np.arange(max(0, k - self.exclusion + 1), k) % h] = np.inf
            d2[k:] = np.inf  # empty slots (none once the ring is full)
            raw = math.sqrt(max(float(d2.min()), 0.0)) / (2.0 * math.sqrt(m))
        self._ring[k % h] = z
        self._norm[k % h] = nz
        self.k = k + 1
        return raw


def discord_distances(
    values: npt.ArrayLike, window: int = 32, history: int = 3000,
    exclusion: int | None = None, flat: float = 0.01, block: int = 256,
) -> FloatArray:  # fmt: skip
    """Raw discord score of every point, equal to :class:`DiscordScorer` point by point."""
    x = np.asarray(values, dtype=np.float64)
    m, h = window, history
    excl = window if exclusion is None else exclusion
    out = np.zeros(len(x))
    if len(x) < m:
        return out
    w = sliding_window_view(x, m)  # window k ends at point k + m - 1
    span = (np.maximum.accumulate(x) - np.minimum.accumulate(x))[m - 1 :]
    z = _normalise(w, w.std(axis=1), w.mean(axis=1), span, flat)
    nrm = np.einsum("ij,ij->i", z, z)
    n_win = len(z)
    best = np.full(n_win, np.inf)
    for s in range(0, n_win, block):
        e = min(n_win, s + block)
        c0, c1 = max(0, s - h), e - excl
        if c1 <= c0:
            continue
        d2 = nrm[s:e, None] + nrm[None, c0:c1] - 2.0 * (z[s:e] @ z[c0:c1].T)
        rows = np.arange(s, e)[:, None]
        cols = np.arange(c0, c1)[None, :]
        d2[(cols < rows - h) | (cols > rows - excl)] = np.inf
        best[s:e] = d2.min(axis=1)
    raw = np.where(np.isfinite(best), np.sqrt(np.maximum(best, 0.0)), 0.0) / (2.0 * math.sqrt(m))
    out[m - 1 :] = raw
    return out


def discord_likelihood(
    raw: npt.ArrayLike, *, average: int = 5, long: int = 4000, std_floor: float = 0.02,
    learning_period: int = 300, alarm_z: float = 2.75, suppress: int = 75,
) -> FloatArray:  # fmt: skip
    """Anomaly scores of a raw score series, the latency model's likelihood and suppression:
    ``z`` of the mean of the last ``average`` raw scores against the running mean / std of
    those means (before this point), ``z_to_score(z)``, then ``suppress`` zeros after an alarm."""
    vals = np.asarray(raw, dtype=np.float64).tolist()
    out = np.zeros(len(vals))
    ring = [0.0] * average
    mean = var = 0.0
    hn = cooldown = 0
    for n, r in enumerate(vals):
        ring[n % average] = r
        avg = sum(ring) / min(n + 1, average)
        if cooldown > 0:
            cooldown -= 1
        elif n >= learning_period and hn:
            z = (avg - mean) / max(math.sqrt(var), std_floor)
            out[n] = z_to_score(z)
            if z >= alarm_z:
                cooldown = suppress
        hn = min(hn + 1, long)
        alpha = 1.0 / hn
        d = avg - mean
        mean += alpha * d
        var = (1.0 - alpha) * (var + d * alpha * d)
    return out


def distance_source() -> str:
    """Hash of the code computing the raw distances (the key of their cache)."""
    src = inspect.getsource(_normalise) + inspect.getsource(discord_distances)
    return hashlib.sha1(src.encode()).hexdigest()[:12]


def record_alarms(
    raw: npt.ArrayLike, ratio: float, *, warm: int = 300, start: int = 600, suppress: int = 150
) -> FloatArray:
    """DAMP-style alarms (1.0): the raw score reaches ``ratio`` times the largest raw score
    seen since point ``warm`` (the first windows have few neighbours, so large distances),
    from point ``start`` on; ``suppress`` quiet points after each alarm."""
    vals = np.asarray(raw, dtype=np.float64).tolist()
    out = np.zeros(len(vals))
    best = 0.0
    cooldown = 0
    for i, r in enumerate(vals):
        if cooldown > 0:
            cooldown -= 1
        elif i >= start and r >= ratio * best:
            out[i] = 1.0
            cooldown = suppress
        if i >= warm:
            best = max(best, r)
    return out


def mixed_latency(
    ts: Sequence[float], values: Sequence[float], raw: npt.ArrayLike, share: float
) -> FloatArray:
    """The shipped latency model with its raw novelty mixed with the discord raw score:
    ``(1 - share) * novelty + share * discord`` (a value outside the range stays 1.0)."""
    det = LatencyDetector()
    dist = np.asarray(raw, dtype=np.float64)
    out = np.zeros(len(values))
    for i, (t, x) in enumerate(zip(ts, values, strict=True)):
        pre = det._raw_score(float(x), float(t))
        if not pre[1]:
            pre = ((1.0 - share) * pre[0] + share * float(dist[i]), *pre[1:])
        out[i] = det._learn(float(x), float(t), True, pre)
    return out


#: raw-distance settings of ``benchmarks/nab.py --discord`` (history 3000, exclusion = window)
SETTINGS: tuple[dict[str, float], ...] = tuple(
    {"window": w, "flat": f} for w in (16, 32, 64) for f in (0.01, 0.15, 0.4)
)
#: ``max(latency, w * discord likelihood)`` weights, DAMP ratios, raw-novelty shares
WEIGHTS: tuple[float, ...] = (0.5, 0.75, 1.0)
RATIOS: tuple[float, ...] = (1.1, 1.25, 1.5)
SHARES: tuple[float, ...] = (0.1, 0.2)


def setting_label(setting: dict[str, float]) -> str:
    return f"m={setting['window']:g}, flat={setting['flat']:g}"
