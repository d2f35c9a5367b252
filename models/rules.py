"""Static threshold rules: the classic SRE checks, next to the online models.

Each rule is a frozen dataclass spec (validated from YAML at the edge) plus a per-series
``Judge``. Rules are edge-triggered: they report when a series enters a bad state or its
severity rises, then at most once per ``repeat_seconds`` of event time while it stays bad, so
the policy sees a steady signal without a finding per sample.

>>> from selfheal.pipeline.kernel.types import Sample
>>> rule = RatioOfLimitRule(name="memory", metrics=("mem",), kind="memory_high")
>>> judge = rule.judge()
>>> [f.severity.value for f in judge.observe(Sample(0.0, "a", "mem", 96.0, limit=100.0))]
['critical']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from selfheal.models.base import Judge
from selfheal.models.resources import MEMORY_METRICS
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, Sample, Severity


def _matches(patterns: tuple[str, ...], metric: str) -> bool:
    return any(p == metric or fnmatch.fnmatchcase(metric, p) for p in patterns)


class _Rule:
    """What every rule spec shares: the metric globs it watches."""

    __slots__ = ()
    metrics: tuple[str, ...]

    def applies(self, sample: Sample) -> bool:
        return _matches(self.metrics, sample.metric)


@dataclass(frozen=True, slots=True)
class RatioOfLimitRule(_Rule):
    """``value / limit`` above ``warning`` / ``critical`` (memory > 80 % / 95 %, queue > 80 %)."""

    name: str
    metrics: tuple[str, ...]
    kind: AnomalyKind
    type: Literal["ratio_of_limit"] = "ratio_of_limit"
    warning: float = 0.80
    critical: float = 0.95
    limit: float | None = None  # used when samples carry no limit
    repeat_seconds: float = 300.0

    def judge(self) -> Judge:
        return RatioOfLimitJudge(self)


@dataclass(frozen=True, slots=True)
class ConsecutiveRule(_Rule):
    """``count`` consecutive failures (value <= ``fail_at_or_below``): breaker, health checks."""

    name: str
    metrics: tuple[str, ...]
    kind: AnomalyKind
    count: int
    type: Literal["consecutive"] = "consecutive"
    fail_at_or_below: float = 0.0
    severity: Severity = Severity.CRITICAL
    repeat_seconds: float = 300.0

    def judge(self) -> Judge:
        return ConsecutiveJudge(self)


@dataclass(frozen=True, slots=True)
class LoopRule(_Rule):
    """Loop health: iteration duration vs its interval (``limit``) and absence of iterations.

    ``slow_warning`` / ``slow_critical`` are fractions of the interval; ``stuck_intervals`` is
    how many intervals without an iteration make the loop stuck (checked on ``tick`` against
    the watermark, so a replay finds the same gaps as the live run).
    """

    name: str
    metrics: tuple[str, ...]
    type: Literal["loop"] = "loop"
    slow_warning: float = 0.90
    slow_critical: float = 1.0
    stuck_intervals: float = 2.0
    interval: float | None = None  # used when samples carry no limit
    repeat_seconds: float = 300.0

    def judge(self) -> Judge:
        return LoopJudge(self)


@dataclass(frozen=True, slots=True)
class ThresholdRule(_Rule):
    """A plain ``value > above`` / ``value < below`` check on any metric."""

    name: str
    metrics: tuple[str, ...]
    type: Literal["threshold"] = "threshold"
    kind: AnomalyKind = AnomalyKind.THRESHOLD
    above: float | None = None
    below: float | None = None
    severity: Severity = Severity.WARNING
    repeat_seconds: float = 300.0

    def judge(self) -> Judge:
        return ThresholdJudge(self)


RuleSpec = RatioOfLimitRule | ConsecutiveRule | LoopRule | ThresholdRule

DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RatioOfLimitRule(name="memory_high", metrics=MEMORY_METRICS, kind=AnomalyKind.MEMORY_HIGH),
    RatioOfLimitRule(
        name="queue_high",
        metrics=("queue_depth",),
        kind=AnomalyKind.QUEUE_HIGH,
        warning=0.80,
        critical=0.95,
    ),
    ConsecutiveRule(
        name="breaker_open",
        metrics=("dependency_request_ok",),
        kind=AnomalyKind.BREAKER_OPEN,
        count=5,
    ),
    # "more than 3 consecutive failed health checks": the 4th failure fires
    ConsecutiveRule(
        name="health_check_failed",
        metrics=("health_check_ok",),
        kind=AnomalyKind.HEALTH_CHECK_FAILED,
        count=4,
    ),
    LoopRule(name="loop", metrics=("loop_iteration_seconds",)),
)


class _EdgeJudge(Judge):
    """Shared edge-trigger bookkeeping: report on entering a state, a rise, or every repeat.

    A series' state is its newest sample's: a sample older than one already judged (a retry,
    an at-least-once redelivery) changes nothing. Taken in, a reading from before a repair
    flagged the repaired entity again (and cleared a flagged one).
    """

    #: the newest sample's event time (the class default for judges restored from snapshots
    #: taken before it was kept)
    _newest = float("-inf")

    def __init__(self, rule: RuleSpec) -> None:
        self.rule = rule
        self.name = rule.name
        self._active: Severity | None = None
        self._last_report = float("-inf")

    def _finding(
        self,
        sample: Sample,
        *,
        kind: AnomalyKind,
        severity: Severity,
        score: float,
        threshold: float,
        evidence: dict[str, Any],
        ts: float | None = None,
    ) -> list[Finding]:
        return [
            Finding(
                ts=sample.ts if ts is None else ts,
                entity=sample.entity,
                metric=sample.metric,
                detector=f"rule:{self.rule.name}",
                kind=kind,
                severity=severity,
                score=score,
                threshold=threshold,
                value=sample.value,
                evidence=evidence,
                labels=sample.labels,
            )
        ]

    def conditions(self) -> tuple[tuple[AnomalyKind, bool], ...]:
        """The kind this rule watches and whether it flags it now (the policy's verification
        judges this state, not the absence of a new finding)."""
        return ((self.rule.kind, self._active is not None),)  # type: ignore[union-attr]

    def _edge(self, severity: Severity | None, ts: float) -> bool:
        prev, self._active = self._active, severity
        if severity is None:
            return False
        rising = prev is None or severity.rank > prev.rank
        if rising or ts - self._last_report >= self.rule.repeat_seconds:
            self._last_report = ts
            return True
        return False


def _default_rules(spec: type) -> Iterator[dict[str, Any]]:
    # the contract tests build every rule judge from the shipped rules of its spec type
    for rule in DEFAULT_RULES:
        if isinstance(rule, spec):
            yield {"rule": rule}


class RatioOfLimitJudge(_EdgeJudge):
    """``value / limit`` against the rule's warning and critical fractions.

    >>> judge = DEFAULT_RULES[1].judge()  # queue_high: > 80 % warning, > 95 % critical
    >>> [judge.observe(Sample(t, "q", "queue_depth", v, limit=100.0)) != [] for t, v in
    ...  enumerate([50.0, 85.0, 86.0, 99.0])]
    [False, True, False, True]
    """

    rule: RatioOfLimitRule

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield from _default_rules(RatioOfLimitRule)

    def observe(self, sample: Sample) -> list[Finding]:
        if sample.ts < self._newest:
            return []  # late (``_EdgeJudge``)
        self._newest = sample.ts
        rule = self.rule
        limit = sample.limit or rule.limit
        if not limit:
            return []
        ratio = sample.value / limit
        sev = (
            Severity.CRITICAL
            if ratio > rule.critical
            else Severity.WARNING
            if ratio > rule.warning
            else None
        )
        if sev is None and self._active is None:
            return []  # still fine: what ``_edge`` would conclude, without the call
        if not self._edge(sev, sample.ts):
            return []
        assert sev is not None
        threshold = rule.critical if sev is Severity.CRITICAL else rule.warning
        return self._finding(
            sample,
            kind=rule.kind,
            severity=sev,
            score=ratio,
            threshold=threshold,
            evidence={
                "ratio": round(ratio, 6),
                "limit": limit,
                "warning": rule.warning,
                "critical": rule.critical,
            },
        )


class ConsecutiveJudge(_EdgeJudge):
    """``count`` failures in a row (a success resets the run).

    >>> rule = ConsecutiveRule("hc", ("ok",), AnomalyKind.HEALTH_CHECK_FAILED, count=3)
    >>> judge = rule.judge()
    >>> [len(judge.observe(Sample(t, "a", "ok", v))) for t, v in enumerate([0, 0, 1, 0, 0, 0])]
    [0, 0, 0, 0, 0, 1]
    """

    rule: ConsecutiveRule

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield from _default_rules(ConsecutiveRule)

    def __init__(self, rule: RuleSpec) -> None:
        super().__init__(rule)
        self._run = 0
        self._run_start = 0.0

    def observe(self, sample: Sample) -> list[Finding]:
        if sample.ts < self._newest:
            return []  # late (``_EdgeJudge``): not part of the run of failures
        self._newest = sample.ts
        rule = self.rule
        if sample.value <= rule.fail_at_or_below:
            if self._run == 0:
                self._run_start = sample.ts
            self._run += 1
        else:
            if self._run == 0 and self._active is None:
                return []  # healthy and was healthy: what ``_edge`` would conclude
            self._run = 0
        sev = rule.severity if self._run >= rule.count else None
        if not self._edge(sev, sample.ts):
            return []
        return self._finding(
            sample,
            kind=rule.kind,
            severity=rule.severity,
            score=float(self._run),
            threshold=float(rule.count),
            evidence={
                "consecutive_failures": self._run,
                "since": self._run_start,
                **{k: v for k, v in sample.labels.items() if k == "dependency"},
            },
        )


class ThresholdJudge(_EdgeJudge):
    """A plain bound on the value.

    >>> judge = ThresholdRule(name="cpu_high", metrics=("cpu",), above=0.9).judge()
    >>> [f.kind.value for f in judge.observe(Sample(0.0, "a", "cpu", 0.97))]
    ['threshold']
    """

    rule: ThresholdRule

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"rule": ThresholdRule(name="cpu_high", metrics=("process_cpu_usage",), above=0.9)}

    def observe(self, sample: Sample) -> list[Finding]:
        if sample.ts < self._newest:
            return []  # late (``_EdgeJudge``)
        self._newest = sample.ts
        rule = self.rule
        bad = (rule.above is not None and sample.value > rule.above) or (
            rule.below is not None and sample.value < rule.below
        )
        if not self._edge(rule.severity if bad else None, sample.ts):
            return []
        threshold = rule.above if rule.above is not None else rule.below
        return self._finding(
            sample,
            kind=rule.kind,
            severity=rule.severity,
            score=sample.value,
            threshold=float(threshold if threshold is not None else 0.0),
            evidence={"above": rule.above, "below": rule.below},
        )


class LoopJudge(_EdgeJudge):
    """A loop too slow for its interval, or silent for ``stuck_intervals`` (on ``tick``).

    >>> judge = LoopRule(name="loop", metrics=("loop_iteration_seconds",)).judge()
    >>> judge.observe(Sample(0.0, "a", "loop_iteration_seconds", 1.0, limit=10.0))
    []
    >>> [f.kind.value for f in judge.tick(25.0)]
    ['loop_stuck']
    """

    rule: LoopRule

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield from _default_rules(LoopRule)

    def __init__(self, rule: RuleSpec) -> None:
        super().__init__(rule)
        self._last: Sample | None = None
        self._stuck_reported = False

    def observe(self, sample: Sample) -> list[Finding]:
        rule = self.rule
        if self._last is not None and sample.ts < self._last.ts:
            # a late iteration (a retry, a buffered agent) is not the loop's latest: taken as
            # its last heartbeat, a running loop looked silent since and was restarted
            return []
        self._last = sample
        self._stuck_reported = False
        interval = sample.limit or rule.interval
        if not interval:
            return []
        frac = sample.value / interval
        sev = (
            Severity.CRITICAL
            if frac > rule.slow_critical
            else Severity.WARNING
            if frac > rule.slow_warning
            else None
        )
        if not self._edge(sev, sample.ts):
            return []
        assert sev is not None
        return self._finding(
            sample,
            kind=AnomalyKind.LOOP_SLOW,
            severity=sev,
            score=frac,
            threshold=rule.slow_critical if sev is Severity.CRITICAL else rule.slow_warning,
            evidence={
                "duration_seconds": sample.value,
                "interval_seconds": interval,
                "fraction_of_interval": round(frac, 6),
            },
        )

    def conditions(self) -> tuple[tuple[AnomalyKind, bool], ...]:
        # an iteration just arrived: the loop is not stuck, and slow only if flagged
        return ((AnomalyKind.LOOP_SLOW, self._active is not None), (AnomalyKind.LOOP_STUCK, False))

    def tick(self, watermark: float) -> list[Finding]:
        last = self._last
        if last is None or self._stuck_reported:
            return []
        interval = last.limit or self.rule.interval
        if not interval:
            return []
        deadline = last.ts + self.rule.stuck_intervals * interval
        if watermark <= deadline:
            return []
        self._stuck_reported = True
        return self._finding(
            last,
            kind=AnomalyKind.LOOP_STUCK,
            severity=Severity.CRITICAL,
            score=(watermark - last.ts) / interval,
            threshold=self.rule.stuck_intervals,
            evidence={
                "last_iteration": last.ts,
                "interval_seconds": interval,
                "silent_intervals": self.rule.stuck_intervals,
            },
            ts=deadline,
        )
