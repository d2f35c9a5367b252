"""Error-rate drift and error bursts, from request counters or from log levels.

Per entity, two independent streams (``source``):

* ``counters``: ``requests_total`` / ``errors_total`` monotonic counters; per-bucket deltas
  (a value below the previous one is a counter reset: the new value is the delta, as
  Prometheus' ``increase`` does).
* ``logs``: lines with level >= ERROR over all lines.

Buckets of ``bucket_seconds`` close on event time (a record in a later bucket closes the open
one; ``tick(watermark)`` closes a bucket whose end has passed). Buckets with fewer than
``min_requests`` requests/lines carry no information and are skipped.

Each closed bucket's error ratio feeds a drift detector. **KSWIN (alpha=1e-4, this module's
``KSWin``) is the default**, chosen on the measurements in ``benchmarks/results/error_drift.md``
(alternatives measured with the 360-bucket history they were tuned with):

* ADWIN's cut threshold carries a ``2/(3m) ln(2/delta)`` term that assumes values spread over
  [0, 1]; per-bucket ratios around 1 % move by ~0.02, so it needs hundreds of buckets after a
  shift (it caught 10/25 shifts, median delay 239 buckets) although it never false-alarmed.
* PageHinkley is a CUSUM whose ``delta``/``threshold`` are in ratio units: one setting cannot
  suit a 0.5 % and a 5 % baseline at different volumes (threshold 0.1: 8 buckets delay but
  30 false findings per 10k buckets; 0.3: 19 buckets, 1.7 per 10k).
* KSWIN compares the last ``stat_size`` ratios with older ones from its window by a
  Kolmogorov-Smirnov test. Ranks are invariant to the base rate and its scale, so one alpha
  works on every stream. river's ``drift.KSWIN`` tests against a random draw of 30 of the 70
  older ratios: 24/25 shifts, median 18 buckets, 0.13 false findings per 10k, ~165 us per
  closed bucket and a 2.5 KB ``random.Random`` per detector. ``KSWin`` tests against all 70
  (deterministic, no seed): 25/25 shifts, median 15 buckets (p90 21 vs 24), 0.13 false
  findings per 10k at the shipped 100-bucket history (0.00 at 360), 0.3 raw alarms per 10k
  (1.3), ~17 us per closed bucket.

State per stream is a few KB whatever the stream length (about 11 KB in memory and 8 KB
pickled for a judge fed counters and logs): ``array`` rings for the last ``history_buckets``
(bucket, errors, requests), the last ``baseline_buckets`` baseline (errors, requests) and the
KSWIN window, ``__slots__`` and tuple pickles. A record inside the open bucket only adds to
two counters; the work happens when a bucket closes.

On a drift the change point is re-estimated on a bounded history of (errors, requests) by the
binomial two-segment likelihood ratio (ADWIN's window only tells us roughly where), giving
``rate_before``, ``rate_after`` (volume-weighted) and ``shift_began``. Only upward shifts of
at least ``min_increase_abs`` and ``min_increase_ratio`` produce an ``error_rate_drift``
finding; a drop is good news, but the burst baseline follows it either way.

Bursts: a bucket whose error count is ``burst_z`` standard deviations above the binomial
expectation under the recent baseline rate (pooled over the last ``baseline_buckets``
non-burst buckets), with ``burst_min_errors`` errors and ``burst_min_ratio`` x the baseline,
is an ``error_burst`` (re-emitted at most every ``burst_cooldown_buckets``).

>>> from selfheal.pipeline.kernel.types import LogLevel, LogLine
>>> judge = ErrorRateJudge(min_requests=10)
>>> t0 = 1_795_842_000.0
>>> found = []
>>> for b in range(240):  # 50 lines a minute, 2 errors until minute 120, then 12
...     for k in range(50):
...         bad = k < (2 if b < 120 else 12)
...         lvl = LogLevel.ERROR if bad else LogLevel.INFO
...         found += judge.observe_log(LogLine(t0 + 60 * b + k, "api-1", lvl, "x"))
>>> drift = [f for f in found if f.kind.value == "error_rate_drift"]
>>> d = drift[0].evidence
>>> d["source"], d["rate_before"] < d["rate_after"], abs(d["shift_began"] - (t0 + 7200)) <= 600
('logs', True, True)
"""

from __future__ import annotations

import math
import warnings
from array import array
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from itertools import accumulate, compress, islice
from operator import ne
from typing import Any

import numpy as np
from river import drift
from scipy import stats
from selfheal.models.base import Judge, LogJudge
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, LogLevel, LogLine, Sample, Severity

DETECTORS = ("adwin", "page_hinkley", "kswin")


@dataclass(frozen=True)
class ErrorRateConfig:
    """Shipped defaults."""

    bucket_seconds: float = 60.0
    min_requests: int = 20
    requests_metric: str = "requests_total"
    errors_metric: str = "errors_total"
    detector: str = "kswin"
    adwin_delta: float = 0.002
    adwin_clock: int = 1
    ph_delta: float = 0.005
    ph_threshold: float = 0.1
    ph_min_instances: int = 30
    kswin_alpha: float = 0.0001
    kswin_window: int = 100
    kswin_stat: int = 30
    min_increase_abs: float = 0.005
    min_increase_ratio: float = 1.25
    history_buckets: int = 100
    baseline_buckets: int = 60
    burst_z: float = 6.0
    burst_min_errors: int = 10
    burst_min_ratio: float = 3.0
    burst_floor_rate: float = 0.001
    burst_cooldown_buckets: int = 10
    critical_error_rate: float = 0.25


_D = ErrorRateConfig()
_PARAMS = tuple(f.name for f in fields(ErrorRateConfig))

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


class KSWin:
    """KSWIN (Raab et al. 2020) against the whole reference window, on a compact ring.

    Once ``window_size`` values are held, the last ``stat_size`` are compared with the
    ``window_size - stat_size`` older ones by a two-sample Kolmogorov-Smirnov test (exact
    p-value, as scipy computes it); a drift when ``p <= alpha`` and the statistic exceeds 0.1,
    after which the window starts empty. ``river.drift.KSWIN`` does the same but tests a random
    draw of ``stat_size`` older values: using all of them is deterministic (no seed, no 2.5 KB
    ``random.Random`` per detector) and more powerful at the same alpha (see the module
    docstring). The window is an ``array('d')`` ring; the exact p-value depends only on the
    two sizes and the statistic, so it is computed once per distinct statistic and cached.

    >>> det = KSWin(alpha=1e-4)
    >>> hits = []
    >>> for i in range(400):
    ...     det.update((i * 7919 % 100) / 1000 + (0.5 if i >= 200 else 0.0))
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

    def update(self, x: float) -> None:
        w = self.window_size
        if self.drift_detected:  # as river: the window restarts empty after a drift
            self.drift_detected = False
            self._n = self._pos = 0
        self._win[self._pos] = x
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


class _Stream:
    """Bucketed error counts of one source, its drift detector and its burst baseline.

    Histories are ``array`` rings (bucket index, errors, requests), so a stream costs a few
    KB whatever the stream length.
    """

    __slots__ = (
        "b_err",
        "b_len",
        "b_pos",
        "b_tot",
        "bucket",
        "closed_through",
        "detector",
        "entity",
        "err",
        "h_bkt",
        "h_err",
        "h_len",
        "h_origin",
        "h_pos",
        "h_tot",
        "labels",
        "last_burst",
        "since_change",
        "tot",
    )

    def __init__(self, detector: Any, history: int, baseline: int) -> None:
        self.bucket: int | None = None  # open bucket
        self.closed_through: int | None = None
        self.err = 0.0
        self.tot = 0.0
        self.h_origin: int | None = None  # h_bkt holds bucket - h_origin (4 bytes each)
        self.h_bkt = array("i", bytes(4 * history))
        self.h_err = array("d", bytes(8 * history))
        self.h_tot = array("d", bytes(8 * history))
        self.h_len = self.h_pos = 0
        self.since_change = 0
        self.b_err = array("d", bytes(8 * baseline))  # zeros in unused slots: sums stay right
        self.b_tot = array("d", bytes(8 * baseline))
        self.b_len = self.b_pos = 0
        self.detector = detector
        self.last_burst: int | None = None
        self.entity = ""
        self.labels: dict[str, str] = {}

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(
            getattr(self, k).tobytes() if isinstance(getattr(self, k), array) else getattr(self, k)
            for k in self.__slots__
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for k, v in zip(self.__slots__, state, strict=True):
            if k in _ARRAYS:
                v = array(_ARRAYS[k], v)
            setattr(self, k, v)

    def push_history(self, b: int, e: float, n: float) -> None:
        if self.h_origin is None:
            self.h_origin = b
        off = b - self.h_origin
        if off > _I32_MAX:  # 2**31 buckets later (4000 years of minutes): rebase, oldest saturate
            self.h_bkt = array("i", (max(x - off, -_I32_MAX - 1) for x in self.h_bkt))
            self.h_origin, off = b, 0
        i, cap = self.h_pos, len(self.h_bkt)
        self.h_bkt[i], self.h_err[i], self.h_tot[i] = off, e, n
        self.h_pos = (i + 1) % cap
        self.h_len = min(self.h_len + 1, cap)

    def history(self, k: int) -> tuple[list[int], list[float], list[float]]:
        """The last ``k`` (bucket, errors, requests), oldest first."""
        k, p, full = min(k, self.h_len), self.h_pos, self.h_len == len(self.h_bkt)

        def last(a: array[Any]) -> list[Any]:
            ordered = (a[p:] + a[:p]).tolist() if full else a[:p].tolist()
            return ordered[len(ordered) - k :]

        origin = self.h_origin or 0
        return [origin + x for x in last(self.h_bkt)], last(self.h_err), last(self.h_tot)

    def push_baseline(self, e: float, n: float) -> None:
        i, cap = self.b_pos, len(self.b_err)
        self.b_err[i], self.b_tot[i] = e, n
        self.b_pos = (i + 1) % cap
        self.b_len = min(self.b_len + 1, cap)

    def reset_baseline(self) -> None:
        cap = len(self.b_err)
        self.b_err = array("d", bytes(8 * cap))
        self.b_tot = array("d", bytes(8 * cap))
        self.b_len = self.b_pos = 0


_I32_MAX = 2**31 - 1
_ARRAYS = {"h_bkt": "i", "h_err": "d", "h_tot": "d", "b_err": "d", "b_tot": "d"}


def _loglik(e: np.ndarray, n: np.ndarray) -> np.ndarray:
    p = np.clip(e / np.maximum(n, 1e-12), 1e-9, 1 - 1e-9)
    return np.asarray(e * np.log(p) + (n - e) * np.log1p(-p))


def change_point(errors: np.ndarray, totals: np.ndarray, min_seg: int = 2) -> int:
    """Index of the first bucket after the best single split (binomial likelihood ratio)."""
    m = len(errors)
    if m < 2 * min_seg:
        return max(1, m // 2)
    ce, cn = np.cumsum(errors), np.cumsum(totals)
    s = np.arange(min_seg, m - min_seg + 1)
    left = _loglik(ce[s - 1], cn[s - 1])
    right = _loglik(ce[-1] - ce[s - 1], cn[-1] - cn[s - 1])
    return int(s[int(np.argmax(left + right))])


class ErrorRateJudge(Judge, LogJudge):
    """Per-entity error-rate drift + burst judge for counters (``observe``) and logs."""

    name = "error_rate"

    def __init__(
        self,
        bucket_seconds: float = _D.bucket_seconds,
        min_requests: int = _D.min_requests,
        requests_metric: str = _D.requests_metric,
        errors_metric: str = _D.errors_metric,
        detector: str = _D.detector,
        adwin_delta: float = _D.adwin_delta,
        adwin_clock: int = _D.adwin_clock,
        ph_delta: float = _D.ph_delta,
        ph_threshold: float = _D.ph_threshold,
        ph_min_instances: int = _D.ph_min_instances,
        kswin_alpha: float = _D.kswin_alpha,
        kswin_window: int = _D.kswin_window,
        kswin_stat: int = _D.kswin_stat,
        min_increase_abs: float = _D.min_increase_abs,
        min_increase_ratio: float = _D.min_increase_ratio,
        history_buckets: int = _D.history_buckets,
        baseline_buckets: int = _D.baseline_buckets,
        burst_z: float = _D.burst_z,
        burst_min_errors: int = _D.burst_min_errors,
        burst_min_ratio: float = _D.burst_min_ratio,
        burst_floor_rate: float = _D.burst_floor_rate,
        burst_cooldown_buckets: int = _D.burst_cooldown_buckets,
        critical_error_rate: float = _D.critical_error_rate,
    ) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        if history_buckets < 4 or baseline_buckets < 1:
            raise ValueError("history_buckets must be >= 4 and baseline_buckets >= 1")
        self.bucket_seconds = bucket_seconds
        self.min_requests = min_requests
        self.requests_metric = requests_metric
        self.errors_metric = errors_metric
        self.detector = detector
        self.adwin_delta = adwin_delta
        self.adwin_clock = adwin_clock
        self.ph_delta = ph_delta
        self.ph_threshold = ph_threshold
        self.ph_min_instances = ph_min_instances
        self.kswin_alpha = kswin_alpha
        self.kswin_window = kswin_window
        self.kswin_stat = kswin_stat
        self.min_increase_abs = min_increase_abs
        self.min_increase_ratio = min_increase_ratio
        self.history_buckets = history_buckets
        self.baseline_buckets = baseline_buckets
        self.burst_z = burst_z
        self.burst_min_errors = burst_min_errors
        self.burst_min_ratio = burst_min_ratio
        self.burst_floor_rate = burst_floor_rate
        self.burst_cooldown_buckets = burst_cooldown_buckets
        self.critical_error_rate = critical_error_rate
        self._streams: dict[str, _Stream] = {}
        self._last_req: float | None = None  # last counter values (deltas need them)
        self._last_err: float | None = None

    # compact pickles: hyperparameters as a tuple in signature order, then the state
    def __getstate__(self) -> tuple[Any, ...]:
        return (
            tuple(getattr(self, k) for k in _PARAMS),
            self._streams,
            self._last_req,
            self._last_err,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.__init__(*state[0])  # type: ignore[misc]
        self._streams, self._last_req, self._last_err = state[1:]

    @classmethod
    def from_config(cls, config: ErrorRateConfig) -> ErrorRateJudge:
        return cls(**asdict(config))

    def clone(self) -> ErrorRateJudge:
        return type(self)(**self._get_params())

    # ------------------------------------------------------------------ plumbing
    def _make_detector(self) -> Any:
        if self.detector == "adwin":
            return drift.ADWIN(delta=self.adwin_delta, clock=self.adwin_clock)
        if self.detector == "page_hinkley":
            return drift.PageHinkley(
                min_instances=self.ph_min_instances,
                delta=self.ph_delta,
                threshold=self.ph_threshold,
                mode="up",
            )
        return KSWin(
            alpha=self.kswin_alpha, window_size=self.kswin_window, stat_size=self.kswin_stat
        )

    def _stream(self, source: str) -> _Stream:
        st = self._streams.get(source)
        if st is None:
            st = _Stream(self._make_detector(), self.history_buckets, self.baseline_buckets)
            self._streams[source] = st
        return st

    def _advance(self, st: _Stream, ts: float, source: str) -> list[Finding]:
        """Move the open bucket to ``ts``'s bucket, closing the previous one."""
        b = int(ts // self.bucket_seconds)
        if st.closed_through is not None and b <= st.closed_through:
            b = st.closed_through + 1  # late record after a tick: count it in the next bucket
        if st.bucket is None:
            st.bucket = b
            return []
        if b <= st.bucket:
            return []  # same bucket, or late: fold into the open bucket
        out = self._close(st, source)
        st.bucket, st.err, st.tot = b, 0.0, 0.0
        return out

    @staticmethod
    def _relabel(st: _Stream, entity: str, labels: Mapping[str, str]) -> None:
        st.entity = entity
        if labels != st.labels:  # copied only when they change: the hot path stays cheap
            st.labels = dict(labels)

    # ------------------------------------------------------------------ inputs
    def observe(self, sample: Sample) -> list[Finding]:
        metric = sample.metric
        if metric == self.requests_metric:
            is_req = True
        elif metric == self.errors_metric:
            is_req = False
        else:
            return []
        st = self._streams.get("counters") or self._stream("counters")
        out = self._advance(st, sample.ts, "counters")
        self._relabel(st, sample.entity, sample.labels)
        value = sample.value
        if is_req:
            last, self._last_req = self._last_req, value
        else:
            last, self._last_err = self._last_err, value
        if last is None or not math.isfinite(value):
            return out
        delta = value - last if value >= last else value  # reset
        if is_req:
            st.tot += delta
        else:
            st.err += delta
        return out

    def observe_log(self, line: LogLine) -> list[Finding]:
        st = self._streams.get("logs") or self._stream("logs")
        out = self._advance(st, line.ts, "logs")
        self._relabel(st, line.entity, line.labels)
        st.tot += 1.0
        if line.level >= LogLevel.ERROR:
            st.err += 1.0
        return out

    def observe_bucket(
        self,
        bucket_start: float,
        errors: float,
        total: float,
        entity: str,
        source: str = "counters",
    ) -> list[Finding]:
        """Feed one already-aggregated bucket (replays, benchmarks); closes it at once."""
        st = self._stream(source)
        out = self._advance(st, bucket_start, source)
        st.entity = entity
        st.err += errors
        st.tot += total
        return out + self._close_open(st, source)

    def tick(self, watermark: float) -> list[Finding]:
        out: list[Finding] = []
        for source, st in self._streams.items():
            if st.bucket is not None and (st.bucket + 1) * self.bucket_seconds <= watermark:
                out += self._close_open(st, source)
        return out

    def _close_open(self, st: _Stream, source: str) -> list[Finding]:
        out = self._close(st, source)
        st.closed_through = st.bucket
        st.bucket, st.err, st.tot = None, 0.0, 0.0
        return out

    # ------------------------------------------------------------------ judgement
    def _close(self, st: _Stream, source: str) -> list[Finding]:
        assert st.bucket is not None
        b, n = st.bucket, st.tot
        e = min(max(st.err, 0.0), n)  # counters scraped apart can disagree by a few
        if n < self.min_requests:
            return []
        rate = e / n
        end = (b + 1) * self.bucket_seconds
        out: list[Finding] = []
        is_burst, burst = self._burst(st, b, e, n, rate, end, source)
        if burst is not None:
            out.append(burst)
        if not is_burst:
            st.push_baseline(e, n)  # flagged buckets are not learned into the baseline
        st.push_history(b, e, n)
        st.since_change = min(st.since_change + 1, st.h_len)
        st.detector.update(rate)
        if st.detector.drift_detected:
            found = self._on_drift(st, rate, end, source)
            if found is not None:
                out.append(found)
        return out

    def _burst(
        self, st: _Stream, b: int, e: float, n: float, rate: float, end: float, source: str
    ) -> tuple[bool, Finding | None]:
        bn = sum(st.b_tot)
        if bn < 5 * self.min_requests:
            return False, None  # no baseline yet
        be = sum(st.b_err)
        p0 = max(be / bn, self.burst_floor_rate)
        if p0 >= 1.0:
            return False, None  # every baselined request failed: nothing can burst above it
        z = (e - n * p0) / math.sqrt(n * p0 * (1.0 - p0))
        if not (
            z >= self.burst_z
            and e >= self.burst_min_errors
            and rate >= self.burst_min_ratio * p0
            and rate - p0 >= self.min_increase_abs
        ):
            return False, None
        if st.last_burst is not None and b - st.last_burst <= self.burst_cooldown_buckets:
            return True, None  # same burst still going: not re-emitted
        st.last_burst = b
        sev = Severity.CRITICAL if rate >= self.critical_error_rate else Severity.WARNING
        return True, Finding(
            ts=end,
            entity=st.entity,
            metric=self._metric(source),
            detector=self.name,
            kind=AnomalyKind.ERROR_BURST,
            severity=sev,
            score=z,
            threshold=self.burst_z,
            value=rate,
            evidence={
                "rate": rate,
                "baseline_rate": be / bn,
                "errors": e,
                "requests": n,
                "z": z,
                "bucket_start": end - self.bucket_seconds,
                "source": source,
            },
            labels=dict(st.labels),
        )

    def _metric(self, source: str) -> str:
        return self.errors_metric if source == "counters" else "log_error_ratio"

    def _on_drift(self, st: _Stream, rate: float, end: float, source: str) -> Finding | None:
        bkts, errs, tots = st.history(max(st.since_change, 4))
        es, ns = np.array(errs), np.array(tots)
        cp = change_point(es, ns)
        before = float(es[:cp].sum() / max(ns[:cp].sum(), 1e-12))
        after = float(es[cp:].sum() / max(ns[cp:].sum(), 1e-12))
        # the baseline follows the new level in both directions
        st.since_change = len(bkts) - cp
        st.reset_baseline()
        for e, n in zip(errs[cp:], tots[cp:], strict=True):
            st.push_baseline(e, n)
        if not (
            after - before >= self.min_increase_abs and after >= self.min_increase_ratio * before
        ):
            return None
        sev = Severity.CRITICAL if after >= self.critical_error_rate else Severity.WARNING
        evidence: dict[str, Any] = {
            "rate_before": before,
            "rate_after": after,
            "shift_began": float(bkts[cp] * self.bucket_seconds),
            "source": source,
            "drift_detector": self.detector,
            "buckets_before": int(cp),
            "buckets_after": int(len(bkts) - cp),
            "requests_after": float(ns[cp:].sum()),
            "bucket_seconds": self.bucket_seconds,
        }
        return Finding(
            ts=end,
            entity=st.entity,
            metric=self._metric(source),
            detector=self.name,
            kind=AnomalyKind.ERROR_RATE_DRIFT,
            severity=sev,
            score=after / max(before, 1e-12),
            threshold=self.min_increase_ratio,
            value=rate,
            evidence=evidence,
            labels=dict(st.labels),
        )
