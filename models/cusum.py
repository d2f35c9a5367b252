"""Binomial CUSUM: a sequential test for a rise of the error rate, on per-bucket counts.

Each closed bucket brings ``errors`` out of ``total``. Against the baseline rate ``p0`` (the
pooled rate of recent buckets, forgetting with a memory of ``baseline_buckets``, floored at
``floor_rate``) the bucket's log-likelihood ratio of "the rate is now ``ratio`` x ``p0``" is

    llr = errors * ln(p1 / p0) + (total - errors) * ln((1 - p1) / (1 - p0)),  p1 = ratio * p0

and Page's CUSUM ``S = max(0, S + llr)`` signals a drift when ``S >= threshold`` (Page 1954;
the Bernoulli CUSUM of Reynolds & Stoumbos 1999, one bucket at a time). A rise of ``k`` x
drifts ``S`` up by about ``total * p0 * (k ln(ratio) - ratio + 1)`` per bucket, so the delay
shrinks with the expected error count; anything below ``(ratio - 1) / ln(ratio)`` x (1.44x at
``ratio = 2``) drifts ``S`` down, which is what keeps daily swings and noise quiet.

With ``learn_delay`` > 0 the baseline learns a quiet bucket that many buckets after it closed:
a 2x rise at a few errors a minute needs several buckets of evidence, and a baseline that
learns at once has absorbed part of the rise by then (on the held-out streams of
``benchmarks/error_drift.py`` it did not pay, so the default learns at once). Learning is
paused while the test is suspicious (``S >= suspicious * threshold``): those buckets are kept
aside (two sums) and learned once ``S`` falls back (their errors capped at the tested rate
``p1``, so a burst does not inflate the baseline), or become the new baseline when the drift
is confirmed, so the detector restarts on the new level at once. One bucket
adds at most ``max_step * threshold``: a single bucket far above the baseline is a burst
(``error_burst``), a drift needs two or more.
Counts that vary more than binomial (estimated on learned buckets as the mean squared
Pearson residual ``phi``) weigh less: the log-likelihood ratio is divided by ``max(1, phi)``,
and ``p0`` is raised by ``margin`` standard errors of its estimate. Scoring starts when the
baseline holds ``warmup_buckets`` buckets and ``min_baseline_errors`` expected errors (the
floor counts), so a quiet start does not make a tiny ``p0``.

State: nine numbers and the ``learn_delay`` buckets waiting to be learned (none by default).
Only rises are tested: a drop of the error rate is good news, and the baseline follows it.

>>> det = BinomialCusum()
>>> alarms = []
>>> for b in range(200):
...     errors = [1, 3, 2, 2, 1, 2][b % 6] if b < 120 else 10  # ~1 % of 200, then 5 %
...     det.update(float(errors), 200.0)
...     alarms += [b] if det.drift_detected else []
>>> alarms  # the second bucket at 5 % completes the evidence
[121]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from selfheal.models.base import DriftDetector


class BinomialCusum(DriftDetector):
    """Upward Bernoulli CUSUM on bucket error counts against an online baseline rate."""

    __slots__ = (
        "_base_e",
        "_base_n",
        "_buckets",
        "_held_e",
        "_held_n",
        "_keep",
        "_phi",
        "_queue",
        "_s",
        "baseline_buckets",
        "drift_detected",
        "floor_rate",
        "learn_delay",
        "margin",
        "max_step",
        "min_baseline_errors",
        "ratio",
        "suspicious",
        "threshold",
        "warmup_buckets",
    )

    def __init__(
        self,
        ratio: float = 2.0,
        threshold: float = 8.0,
        baseline_buckets: int = 60,
        suspicious: float = 0.5,
        floor_rate: float = 0.001,
        warmup_buckets: int = 10,
        min_baseline_errors: float = 5.0,
        margin: float = 2.0,
        max_step: float = 0.5,
        learn_delay: int = 0,
    ) -> None:
        if ratio <= 1.0 or threshold <= 0.0 or baseline_buckets < 1:
            raise ValueError("need ratio > 1, threshold > 0 and baseline_buckets >= 1")
        if learn_delay < 0:
            raise ValueError("need learn_delay >= 0")
        if not 0.0 < floor_rate < 1.0 / ratio or not 0.0 < suspicious <= 1.0:
            raise ValueError("need 0 < floor_rate < 1 / ratio and 0 < suspicious <= 1")
        self.ratio = ratio
        self.threshold = threshold
        self.baseline_buckets = baseline_buckets
        self.suspicious = suspicious
        self.floor_rate = floor_rate
        self.warmup_buckets = warmup_buckets
        self.min_baseline_errors = min_baseline_errors
        self.margin = margin
        self.max_step = max_step
        self.learn_delay = learn_delay
        self._keep = 1.0 - 1.0 / baseline_buckets  # forgetting factor of the baseline sums
        self._base_e = self._base_n = 0.0  # discounted baseline errors / requests
        self._held_e = self._held_n = 0.0  # buckets held back while suspicious
        self._buckets = 0  # baseline buckets learned (capped at baseline_buckets)
        self._s = 0.0
        self._phi = 1.0  # over-dispersion: mean squared Pearson residual of learned buckets
        # quiet buckets wait learn_delay buckets before the baseline learns them: a slow rise
        # (2x at a few errors a minute) would otherwise be learned before it is proven
        self._queue: list[float] = []  # errors, total, errors, total, ... oldest first
        self.drift_detected = False

    @property
    def statistic(self) -> float:
        """The CUSUM statistic ``S`` (in nats of evidence for a rise)."""
        return self._s

    @property
    def baseline_rate(self) -> float | None:
        """The baseline rate the next bucket is tested against (None while warming up)."""
        n = self._base_n
        if self._buckets < self.warmup_buckets or n <= 0.0:
            return None
        e = self._base_e
        p0 = max(e / n, self.floor_rate)
        if n * p0 < self.min_baseline_errors:
            return None
        # test against the upper end of what the baseline allows: its estimate is noisy
        return p0 * (1.0 + self.margin / math.sqrt(max(e, 1.0)))

    def _learn(self, errors: float, total: float, p0: float | None = None) -> None:
        keep = self._keep
        if p0 is not None and total > 0:
            resid2 = (errors - total * p0) ** 2 / (total * p0 * (1.0 - p0))
            self._phi = keep * self._phi + (1.0 - keep) * resid2
        self._base_e = keep * self._base_e + errors
        self._base_n = keep * self._base_n + total
        self._buckets = min(self._buckets + 1, self.baseline_buckets)

    def update(self, errors: float, total: float) -> None:
        self.drift_detected = False
        p0 = self.baseline_rate
        if p0 is None or p0 >= 0.999:
            # warming up, or a baseline at the top (every request failing): no higher rate
            # to shift to, and the log-likelihood ratio would be undefined
            self._learn(errors, total)
            return
        p1 = min(self.ratio * p0, 0.999)
        llr = errors * math.log(p1 / p0) + (total - errors) * math.log((1.0 - p1) / (1.0 - p0))
        # quasi-likelihood: counts that vary more than binomial carry less evidence per bucket
        llr /= max(1.0, self._phi)
        # one bucket alone is a burst (the judge reports those), not a shift of the rate
        llr = min(llr, self.max_step * self.threshold)
        self._s = s = max(0.0, self._s + llr)
        if s >= self.threshold:
            # confirmed: the held buckets and this one are the new baseline
            self.drift_detected = True
            e, n = self._held_e + errors, self._held_n + total
            self._base_e = self._base_n = 0.0
            self._held_e = self._held_n = 0.0
            self._queue = []
            self._buckets = 0
            self._s = 0.0
            self._learn(e, n)
            self._buckets = self.warmup_buckets  # score the next bucket at once
        elif s >= self.suspicious * self.threshold:
            self._held_e += errors
            self._held_n += total
        else:
            if self._held_n:
                # the suspicion passed: learn what was held back (dropping it would bias the
                # baseline low), capped at the tested rate so a burst does not inflate it
                self._queue += [min(self._held_e, p1 * self._held_n), self._held_n]
                self._held_e = self._held_n = 0.0
            self._queue += [errors, total]
            while len(self._queue) > 2 * self.learn_delay:
                e, n = self._queue[0], self._queue[1]
                del self._queue[:2]
                self._learn(e, n, p0)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"ratio": 3.0, "threshold": 5.0, "baseline_buckets": 30, "learn_delay": 5}
