"""Error-rate drift and error bursts, from request counters or from log levels.

Per entity, two independent streams (``source``):

* ``counters``: ``requests_total`` / ``errors_total`` monotonic counters; per-bucket deltas
  (a value below the previous one is a counter reset: the new value is the delta, as
  Prometheus' ``increase`` does).
* ``logs``: lines with level >= ERROR over all lines.

Buckets of ``bucket_seconds`` close on event time (a record in a later bucket closes the open
one; ``tick(watermark)`` closes a bucket whose end has passed). Buckets with fewer than
``min_requests`` requests/lines carry no information and are skipped.

Each closed bucket's error ratio feeds a river drift detector. **KSWIN (alpha=1e-4) is the
default**, chosen on the measurements in ``benchmarks/results/error_drift.md``:

* ADWIN's cut threshold carries a ``2/(3m) ln(2/delta)`` term that assumes values spread over
  [0, 1]; per-bucket ratios around 1 % move by ~0.02, so it needs hundreds of buckets after a
  shift (it caught 10/25 shifts, median delay 239 buckets) although it never false-alarmed.
* PageHinkley is a CUSUM whose ``delta``/``threshold`` are in ratio units: one setting cannot
  suit a 0.5 % and a 5 % baseline at different volumes (threshold 0.1: 8 buckets delay but
  30 false findings per 10k buckets; 0.3: 19 buckets, 1.7 per 10k).
* KSWIN compares the last ``stat_size`` ratios with older ones from its window by a
  Kolmogorov-Smirnov test. Ranks are invariant to the base rate and its scale, so one alpha
  works on every stream: 24/25 shifts, median 18 buckets, 0.13 false findings per 10k. Its
  cost (~0.2 ms per closed bucket, i.e. per minute) is irrelevant at bucket granularity.

On a drift the change point is re-estimated on a bounded history of (errors, requests) by the
binomial two-segment likelihood ratio (ADWIN's window only tells us roughly where), giving
``rate_before``, ``rate_after`` (volume-weighted) and ``shift_began``. Only upward shifts of
at least ``min_increase_abs`` and ``min_increase_ratio`` produce an ``error_rate_drift``
finding; a drop is good news, but the burst baseline follows it either way.

Bursts: a bucket whose error count is ``burst_z`` standard deviations above the binomial
expectation under the recent baseline rate (pooled over the last ``baseline_buckets``
non-burst buckets), with ``burst_min_errors`` errors and ``burst_min_ratio`` x the baseline,
is an ``error_burst`` (re-emitted at most every ``burst_cooldown_buckets``).

>>> from pipeline.types import LogLevel, LogLine
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
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from river import drift

from models.base import Judge, LogJudge
from pipeline.types import AnomalyKind, Finding, LogLevel, LogLine, Sample, Severity

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
    seed: int = 7
    min_increase_abs: float = 0.005
    min_increase_ratio: float = 1.25
    history_buckets: int = 360
    baseline_buckets: int = 60
    burst_z: float = 6.0
    burst_min_errors: int = 10
    burst_min_ratio: float = 3.0
    burst_floor_rate: float = 0.001
    burst_cooldown_buckets: int = 10
    critical_error_rate: float = 0.25


_D = ErrorRateConfig()


class _Stream:
    """Bucketed error counts of one source, its drift detector and its burst baseline."""

    def __init__(self, detector: Any, history: int, baseline: int) -> None:
        self.bucket: int | None = None
        self.closed_through: int | None = None
        self.err = 0.0
        self.tot = 0.0
        self.hist: deque[tuple[int, float, float]] = deque(maxlen=history)
        self.since_change = 0
        self.base: deque[tuple[float, float]] = deque(maxlen=baseline)
        self.detector = detector
        self.last_burst: int | None = None
        self.entity = ""
        self.labels: dict[str, str] = {}


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
        seed: int = _D.seed,
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
        self.seed = seed
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
        self._last_counter: dict[str, float] = {}

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
                min_instances=self.ph_min_instances, delta=self.ph_delta,
                threshold=self.ph_threshold, mode="up",
            )
        return drift.KSWIN(
            alpha=self.kswin_alpha, window_size=self.kswin_window, stat_size=self.kswin_stat,
            seed=self.seed,
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

    # ------------------------------------------------------------------ inputs
    def observe(self, sample: Sample) -> list[Finding]:
        if sample.metric not in (self.requests_metric, self.errors_metric):
            return []
        st = self._stream("counters")
        out = self._advance(st, sample.ts, "counters")
        st.entity, st.labels = sample.entity, dict(sample.labels)
        last = self._last_counter.get(sample.metric)
        self._last_counter[sample.metric] = sample.value
        if last is None or not math.isfinite(sample.value):
            return out
        delta = sample.value - last if sample.value >= last else sample.value  # reset
        if sample.metric == self.requests_metric:
            st.tot += delta
        else:
            st.err += delta
        return out

    def observe_log(self, line: LogLine) -> list[Finding]:
        st = self._stream("logs")
        out = self._advance(st, line.ts, "logs")
        st.entity, st.labels = line.entity, dict(line.labels)
        st.tot += 1.0
        if line.level >= LogLevel.ERROR:
            st.err += 1.0
        return out

    def observe_bucket(
        self, bucket_start: float, errors: float, total: float, entity: str,
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
            st.base.append((e, n))  # flagged buckets are not learned into the baseline
        st.hist.append((b, e, n))
        st.since_change = min(st.since_change + 1, len(st.hist))
        st.detector.update(rate)
        if st.detector.drift_detected:
            found = self._on_drift(st, rate, end, source)
            if found is not None:
                out.append(found)
        return out

    def _burst(
        self, st: _Stream, b: int, e: float, n: float, rate: float, end: float, source: str
    ) -> tuple[bool, Finding | None]:
        be = sum(x for x, _ in st.base)
        bn = sum(x for _, x in st.base)
        if bn < 5 * self.min_requests:
            return False, None  # no baseline yet
        p0 = max(be / bn, self.burst_floor_rate)
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
                "rate": rate, "baseline_rate": be / bn, "errors": e, "requests": n,
                "z": z, "bucket_start": end - self.bucket_seconds, "source": source,
            },
            labels=st.labels,
        )

    def _metric(self, source: str) -> str:
        return self.errors_metric if source == "counters" else "log_error_ratio"

    def _on_drift(self, st: _Stream, rate: float, end: float, source: str) -> Finding | None:
        seg = list(st.hist)[-max(st.since_change, 4):]
        bs = np.array([x[0] for x in seg])
        es = np.array([x[1] for x in seg])
        ns = np.array([x[2] for x in seg])
        cp = change_point(es, ns)
        before = float(es[:cp].sum() / max(ns[:cp].sum(), 1e-12))
        after = float(es[cp:].sum() / max(ns[cp:].sum(), 1e-12))
        # the baseline follows the new level in both directions
        st.since_change = len(seg) - cp
        st.base.clear()
        st.base.extend(zip(es[cp:].tolist(), ns[cp:].tolist(), strict=True))
        if not (
            after - before >= self.min_increase_abs
            and after >= self.min_increase_ratio * before
        ):
            return None
        sev = Severity.CRITICAL if after >= self.critical_error_rate else Severity.WARNING
        evidence: dict[str, Any] = {
            "rate_before": before,
            "rate_after": after,
            "shift_began": float(bs[cp] * self.bucket_seconds),
            "source": source,
            "drift_detector": self.detector,
            "buckets_before": int(cp),
            "buckets_after": int(len(seg) - cp),
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
            labels=st.labels,
        )
