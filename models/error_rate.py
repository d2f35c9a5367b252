"""Error-rate drift and error bursts, from request counters or from log levels.

Per entity, two independent streams (``source``):

* ``counters``: ``requests_total`` / ``errors_total`` monotonic counters; per-bucket deltas
  (a value below the previous one is a counter reset: the new value is the delta, as
  Prometheus' ``increase`` does).
* ``logs``: lines with level >= ERROR over all lines.

Buckets of ``bucket_seconds`` close on event time (a record in a later bucket closes the open
one; ``tick(watermark)`` closes a bucket whose end has passed). Buckets with fewer than
``min_requests`` requests/lines carry no information and are skipped.

Each closed bucket's (errors, requests) feeds a drift detector (``selfheal.models.base.
DriftDetector``). **The binomial CUSUM (``selfheal.models.cusum``) is the default**: a
sequential test of "the rate is now ``cusum_ratio`` x the baseline" on the counts themselves,
so a 3x-10x rise is flagged within a few buckets where enough requests arrive (measured in
``benchmarks/results/error_drift.md`` on held-out streams, against the previous default, KSWIN,
and river's ADWIN). ``detector="kswin"`` (``selfheal.models.kswin.KSWin``: Kolmogorov-Smirnov
on the last 30 ratios against the 70 before them) remains selectable; ratio-based tests (it,
and river's ADWIN in the benchmark) need 15+ buckets after a shift because a bucket's ratio
carries little of the evidence its counts do.

State per stream is a few KB whatever the stream length: ``array`` rings for the last
``history_buckets`` (bucket, errors, requests) and the last ``baseline_buckets`` baseline
(errors, requests), the detector's state (nine numbers for the CUSUM), ``__slots__`` and
tuple pickles. A record inside the open bucket only adds to two counters; the work happens
when a bucket closes.

On a drift the change point is re-estimated on a bounded history of (errors, requests) by the
binomial two-segment likelihood ratio (a sequential test tells when, not where), giving
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
>>> drift[0].ts - (t0 + 7200) <= 180  # flagged within 3 minutes of the rise
True
"""

from __future__ import annotations

import inspect
import math
from array import array
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from selfheal.models.base import DriftDetector, Judge, LogJudge
from selfheal.models.cusum import BinomialCusum
from selfheal.models.kswin import KSWin
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, LogLevel, LogLine, Sample, Severity

DETECTORS = ("cusum", "kswin")
_CUSUM = inspect.signature(BinomialCusum).parameters


@dataclass(frozen=True)
class ErrorRateConfig:
    """Shipped defaults."""

    bucket_seconds: float = 60.0
    min_requests: int = 20
    requests_metric: str = "requests_total"
    errors_metric: str = "errors_total"
    detector: str = "cusum"
    # the CUSUM's own defaults (chosen in benchmarks/error_drift.py --tune), written once there
    cusum_ratio: float = _CUSUM["ratio"].default
    cusum_threshold: float = _CUSUM["threshold"].default
    cusum_baseline_buckets: int = _CUSUM["baseline_buckets"].default
    cusum_margin: float = _CUSUM["margin"].default
    cusum_learn_delay: int = _CUSUM["learn_delay"].default
    kswin_alpha: float = 0.0001
    kswin_window: int = 100
    kswin_stat: int = 30
    min_increase_abs: float = 0.001
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

    def __init__(self, detector: DriftDetector, history: int, baseline: int) -> None:
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
        cusum_ratio: float = _D.cusum_ratio,
        cusum_threshold: float = _D.cusum_threshold,
        cusum_baseline_buckets: int = _D.cusum_baseline_buckets,
        cusum_margin: float = _D.cusum_margin,
        cusum_learn_delay: int = _D.cusum_learn_delay,
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
        self.cusum_ratio = cusum_ratio
        self.cusum_threshold = cusum_threshold
        self.cusum_baseline_buckets = cusum_baseline_buckets
        self.cusum_margin = cusum_margin
        self.cusum_learn_delay = cusum_learn_delay
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
        #: their event times: an older reading arriving late is not a counter reset
        self._req_ts = -math.inf
        self._err_ts = -math.inf

    # compact pickles: hyperparameters as a tuple in signature order, then the state
    def __getstate__(self) -> tuple[Any, ...]:
        return (
            tuple(getattr(self, k) for k in _PARAMS),
            self._streams,
            self._last_req,
            self._last_err,
            self._req_ts,
            self._err_ts,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.__init__(*state[0])  # type: ignore[misc]
        self._streams, self._last_req, self._last_err = state[1:4]
        if len(state) > 4:  # (a snapshot taken before the times were kept has none)
            self._req_ts, self._err_ts = float(state[4]), float(state[5])

    @classmethod
    def from_config(cls, config: ErrorRateConfig) -> ErrorRateJudge:
        return cls(**asdict(config))

    def clone(self) -> ErrorRateJudge:
        return type(self)(**self._get_params())

    # ------------------------------------------------------------------ plumbing
    def _make_detector(self) -> DriftDetector:
        if self.detector == "cusum":
            return BinomialCusum(
                ratio=self.cusum_ratio,
                threshold=self.cusum_threshold,
                baseline_buckets=self.cusum_baseline_buckets,
                floor_rate=self.burst_floor_rate,
                margin=self.cusum_margin,
                learn_delay=self.cusum_learn_delay,
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
        ts = sample.ts
        if ts < (self._req_ts if is_req else self._err_ts):
            # an older reading delivered late (a retry, a redelivery): its increase is in the
            # later reading already. Taken as a counter reset, its whole value was counted:
            # one late errors_total made an error burst of a steady 1 %
            return []
        st = self._streams.get("counters") or self._stream("counters")
        out = self._advance(st, ts, "counters")
        self._relabel(st, sample.entity, sample.labels)
        value = sample.value
        if is_req:
            last, self._last_req, self._req_ts = self._last_req, value, ts
        else:
            last, self._last_err, self._err_ts = self._last_err, value, ts
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
        st.detector.update(e, n)
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
