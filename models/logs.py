"""Per-entity log analyzer: new-template bursts, error-template rate jumps, attack patterns.

Every line is mined into a template (``selfheal.models.log_templates``: drain3 with masking). Per
template the judge keeps time-bucketed counts (a fixed-size ring of ``history_buckets``
buckets of ``bucket_seconds`` event time, all levels and level >= ERROR separately) and reports
``AnomalyKind.LOG_PATTERN`` when

* a template first seen after the entity's warm-up bursts: at least ``new_template_min_count``
  lines within the window (``window_buckets`` buckets) while it is younger than
  ``novelty_seconds``;
* an ERROR-level template's rate in the window jumps to ``error_jump_factor`` times its own
  baseline (its rate in the earlier buckets of the ring, floored at ``error_baseline_floor``
  per bucket), with at least ``error_min_count`` errors in the window.

One finding per template per burst: a template that fired stays silent for ``cooldown_seconds``
of event time. With ``security=True`` the judge also runs ``selfheal.models.security.SecurityJudge``
(``AnomalyKind.SECURITY``: SQL injection, path traversal, brute force).

State is bounded: at most ``max_templates`` templates (drain3's LRU of clusters); the counters
of an evicted template are dropped with it.

>>> from selfheal.pipeline.kernel.types import LogLine, LogLevel
>>> judge = LogAnalyzerJudge(warmup_lines=10, warmup_seconds=60.0)
>>> for i in range(100):
...     _ = judge.observe_log(LogLine(float(i), "api", LogLevel.INFO, f"served request {i} ok"))
>>> out = []
>>> for i in range(6):
...     out += judge.observe_log(LogLine(200.0 + i, "api", LogLevel.ERROR, f"disk sda{i} failed"))
>>> [(f.kind.value, f.evidence["reason"], f.evidence["count_in_window"]) for f in out]
[('log_pattern', 'new_template', 5)]
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Any

from selfheal.models.base import LogJudge
from selfheal.models.log_templates import LogTemplateMiner
from selfheal.models.security import SecurityJudge
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, LogLevel, LogLine, Severity

__all__ = ["LogAnalyzerConfig", "LogAnalyzerJudge"]

EXAMPLE_CHARS = 300


@dataclass(frozen=True, slots=True)
class LogAnalyzerConfig:
    """Shipped defaults."""

    # template mining (see selfheal.models.log_templates)
    sim_th: float = 0.9
    depth: int = 5
    max_children: int = 100
    max_templates: int = 500
    # time buckets
    bucket_seconds: float = 60.0
    window_buckets: int = 5
    history_buckets: int = 60
    # new template bursts
    warmup_lines: int = 500
    warmup_seconds: float = 1800.0
    novelty_seconds: float = 3600.0
    new_template_min_count: int = 5
    # error-template rate jumps
    error_min_count: int = 5
    error_jump_factor: float = 3.0
    error_baseline_floor: float = 0.2
    cooldown_seconds: float = 900.0
    # attack patterns (selfheal.models.security)
    security: bool = True
    brute_force_threshold: int = 5
    brute_force_critical: int = 20
    brute_force_window_seconds: float = 300.0
    security_cooldown_seconds: float = 600.0
    max_sources: int = 1000


_D = LogAnalyzerConfig()


class _Ring:
    """Counts per time bucket over the last ``size`` buckets (fixed memory).

    The counts are an ``array('I')``: 4 bytes a bucket instead of a list's 8-byte pointer.
    A bucket past 2**32 - 1 lines (never seen: 70 M lines/s into one template for 60 s buckets)
    widens the array to 8 bytes instead of failing, so the counts are exact whatever the load.
    """

    __slots__ = ("counts", "last", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.counts = array("I", [0]) * size
        self.last = -1  # absolute index of the newest bucket written

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        # written as a list, as before the arrays: snapshots keep their format (any version
        # restores them) and size (a list of small counts encodes shorter than the raw bytes)
        return None, {"counts": list(self.counts), "last": self.last, "size": self.size}

    def __setstate__(self, state: Any) -> None:
        # ``(None, slots)`` as ``__getstate__`` gives it: the counts back into an array
        slots = state[1] if isinstance(state, tuple) else state
        size, last, counts = int(slots["size"]), int(slots["last"]), slots["counts"]
        if len(counts) != size:
            raise ValueError("ring counts do not match its size")
        self.size, self.last = size, last
        self.counts = _counts(counts)

    def _advance(self, bucket: int) -> None:
        if self.last < 0:
            self.last = bucket
            return
        gap = bucket - self.last
        if gap <= 0:
            return
        for b in range(self.last + 1, self.last + 1 + min(gap, self.size)):
            self.counts[b % self.size] = 0
        self.last = bucket

    def add(self, bucket: int) -> None:
        self._advance(bucket)
        if self.last - bucket < self.size:  # late lines older than the ring are dropped
            i = bucket % self.size
            try:
                self.counts[i] += 1
            except OverflowError:
                self.counts = array("q", self.counts)
                self.counts[i] += 1

    def total(self, first: int, last: int) -> int:
        """Sum over absolute buckets ``first..last`` (inclusive), as of ``self.last``."""
        lo = max(first, self.last - self.size + 1)
        hi = min(last, self.last)
        if hi < lo:
            return 0
        # at most ``size`` buckets: one slice, or two when the span wraps around the ring
        i, j, c = lo % self.size, hi % self.size, self.counts
        return sum(c[i : j + 1]) if i <= j else sum(c[i:]) + sum(c[: j + 1])


def _counts(counts: Any) -> array[int]:
    try:
        return array("I", counts)
    except OverflowError:  # a count beyond 2**32 - 1 (or a negative one) in an old list
        return array("q", counts)


class _TemplateStats:
    __slots__ = ("all", "errors", "first_bucket", "first_seen", "last_alert", "novel")

    def __init__(self, ts: float, bucket: int, novel: bool, size: int) -> None:
        self.first_seen = ts
        self.first_bucket = bucket
        self.novel = novel  # first seen after the entity's warm-up
        self.last_alert = -math.inf
        self.all = _Ring(size)
        self.errors = _Ring(size)


class LogAnalyzerJudge(LogJudge):
    """Per-entity log judge (template patterns and, optionally, attack patterns)."""

    name = "log_analyzer"

    def __init__(
        self,
        sim_th: float = _D.sim_th,
        depth: int = _D.depth,
        max_children: int = _D.max_children,
        max_templates: int = _D.max_templates,
        bucket_seconds: float = _D.bucket_seconds,
        window_buckets: int = _D.window_buckets,
        history_buckets: int = _D.history_buckets,
        warmup_lines: int = _D.warmup_lines,
        warmup_seconds: float = _D.warmup_seconds,
        novelty_seconds: float = _D.novelty_seconds,
        new_template_min_count: int = _D.new_template_min_count,
        error_min_count: int = _D.error_min_count,
        error_jump_factor: float = _D.error_jump_factor,
        error_baseline_floor: float = _D.error_baseline_floor,
        cooldown_seconds: float = _D.cooldown_seconds,
        security: bool = _D.security,
        brute_force_threshold: int = _D.brute_force_threshold,
        brute_force_critical: int = _D.brute_force_critical,
        brute_force_window_seconds: float = _D.brute_force_window_seconds,
        security_cooldown_seconds: float = _D.security_cooldown_seconds,
        max_sources: int = _D.max_sources,
    ) -> None:
        if not 1 <= window_buckets < history_buckets:
            raise ValueError("need 1 <= window_buckets < history_buckets")
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be > 0")
        self.sim_th = sim_th
        self.depth = depth
        self.max_children = max_children
        self.max_templates = max_templates
        self.bucket_seconds = bucket_seconds
        self.window_buckets = window_buckets
        self.history_buckets = history_buckets
        self.warmup_lines = warmup_lines
        self.warmup_seconds = warmup_seconds
        self.novelty_seconds = novelty_seconds
        self.new_template_min_count = new_template_min_count
        self.error_min_count = error_min_count
        self.error_jump_factor = error_jump_factor
        self.error_baseline_floor = error_baseline_floor
        self.cooldown_seconds = cooldown_seconds
        self.security = security
        self.brute_force_threshold = brute_force_threshold
        self.brute_force_critical = brute_force_critical
        self.brute_force_window_seconds = brute_force_window_seconds
        self.security_cooldown_seconds = security_cooldown_seconds
        self.max_sources = max_sources

        self._miner = LogTemplateMiner(
            sim_th=sim_th, depth=depth, max_children=max_children, max_clusters=max_templates
        )
        self._stats: dict[int, _TemplateStats] = {}
        self._lines = 0
        self._first_ts: float | None = None
        self._last_ts = -math.inf
        self._security = (
            SecurityJudge(
                brute_force_threshold=brute_force_threshold,
                brute_force_critical=brute_force_critical,
                brute_force_window_seconds=brute_force_window_seconds,
                cooldown_seconds=security_cooldown_seconds,
                max_sources=max_sources,
            )
            if security
            else None
        )

    # -- public -------------------------------------------------------------------------
    @property
    def n_templates(self) -> int:
        return len(self._miner)

    @property
    def warmed_up(self) -> bool:
        return self._warm(self._last_ts)

    def templates(self) -> dict[int, str]:
        return self._miner.templates()

    def observe_log(self, line: LogLine) -> list[Finding]:
        findings: list[Finding] = []
        if self._security is not None:
            findings += self._security.observe_log(line)
        pattern = self._observe_template(line)
        if pattern is not None:
            findings.append(pattern)
        return findings

    # -- internals ----------------------------------------------------------------------
    def _warm(self, ts: float) -> bool:
        return (
            self._first_ts is not None
            and self._lines >= self.warmup_lines
            and ts - self._first_ts >= self.warmup_seconds
        )

    def _observe_template(self, line: LogLine) -> Finding | None:
        ts = line.ts
        if self._first_ts is None:
            self._first_ts = ts
        self._last_ts = max(self._last_ts, ts)
        warm = self._warm(ts)
        self._lines += 1
        bucket = math.floor(ts / self.bucket_seconds)
        match = self._miner.add(line.message)
        cid = match.cluster_id
        stats = self._stats.get(cid)
        if stats is None:
            stats = _TemplateStats(ts, bucket, warm and match.is_new, self.history_buckets)
            self._stats[cid] = stats
            if len(self._stats) > self.max_templates:
                # drain3 evicted a cluster (LRU): drop the counters that went with it
                for old in [k for k in self._stats if k not in self._miner]:
                    del self._stats[old]
        is_error = line.level >= LogLevel.ERROR
        stats.all.add(bucket)
        if is_error:
            stats.errors.add(bucket)
        if ts - stats.last_alert < self.cooldown_seconds:
            return None

        now = stats.all.last
        win_lo = now - self.window_buckets + 1
        if stats.novel and ts - stats.first_seen <= self.novelty_seconds:
            count = stats.all.total(win_lo, now)
            if count >= self.new_template_min_count:
                stats.last_alert = ts
                sev = Severity.CRITICAL if is_error else Severity.WARNING
                return self._finding(
                    line, match.template, cid, count, 0.0, "new_template", sev,
                    score=float(count), threshold=float(self.new_template_min_count),
                )  # fmt: skip
        if is_error and warm and win_lo > stats.first_bucket:
            count = stats.errors.total(win_lo, now)
            if count >= self.error_min_count:
                # baseline: error rate per bucket before the window, since the template appeared
                base_lo = max(stats.first_bucket, now - self.history_buckets + 1)
                n_base = win_lo - base_lo
                baseline = stats.errors.total(base_lo, win_lo - 1) / max(n_base, 1)
                rate = count / self.window_buckets
                ratio = rate / max(baseline, self.error_baseline_floor)
                if ratio >= self.error_jump_factor:
                    stats.last_alert = ts
                    sev = (
                        Severity.CRITICAL
                        if ratio >= 2 * self.error_jump_factor
                        else Severity.WARNING
                    )
                    return self._finding(
                        line, match.template, cid, count, baseline, "error_rate_jump", sev,
                        score=ratio, threshold=self.error_jump_factor,
                    )  # fmt: skip
        return None

    def _finding(
        self,
        line: LogLine,
        template: str,
        cid: int,
        count: int,
        baseline: float,
        reason: str,
        severity: Severity,
        score: float,
        threshold: float,
    ) -> Finding:
        evidence: dict[str, Any] = {
            "reason": reason,
            "template": template,
            "cluster_id": cid,
            "count_in_window": count,
            "window_seconds": self.window_buckets * self.bucket_seconds,
            "baseline_per_bucket": round(baseline, 6),
            "bucket_seconds": self.bucket_seconds,
            "level": line.level.name,
            "example": line.message[:EXAMPLE_CHARS],
        }
        return Finding(
            ts=line.ts,
            entity=line.entity,
            metric="logs",
            detector=self.name,
            kind=AnomalyKind.LOG_PATTERN,
            severity=severity,
            score=float(score),
            threshold=float(threshold),
            value=float(count),
            evidence=evidence,
        )
