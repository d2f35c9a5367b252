"""Which judges watch which series: the routing table from samples to detectors.

The runner keeps a bounded bank of judges keyed by ``SeriesKey``; this module says, for a new
series, which judges to create. Static rules and online models sit side by side:

- memory metrics: the ``memory_high`` rule and the memory-growth regression (``memory_leak``);
- the other resources with a limit (disk, file descriptors, connection and thread pools,
  queues: ``selfheal.models.resources``): the same time-to-limit forecast
  (``resource_exhaustion``), one per usage series, fed its paired limit metric too, so it is
  kept per entity under a name made of the usage metric and the shared labels;
- ``requests_total`` / ``errors_total`` counters and every log line: the per-entity error-rate
  drift judge (``error_rate_drift``, ``error_burst``);
- log lines: the drain3 log analyzer (``log_pattern``, ``security``);
- latency-like metrics (and, with ``generic_metrics``, any metric no rule or model covers):
  the latency anomaly score (``latency_anomaly``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from selfheal.models.base import Judge, LogJudge
from selfheal.models.error_rate import ErrorRateConfig, ErrorRateJudge
from selfheal.models.forecast import GROWTH_PARAMS, ResourceForecastConfig, ResourceForecastJudge
from selfheal.models.latency import LatencyConfig, LatencyJudge
from selfheal.models.logs import LogAnalyzerConfig, LogAnalyzerJudge
from selfheal.models.memory import MemoryLeakConfig, MemoryLeakJudge
from selfheal.models.resources import RESOURCES
from selfheal.models.rules import RuleSpec
from selfheal.pipeline.kernel.types import LogLine, Sample

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]] | tuple[str, str]


def series_key(sample: Sample) -> SeriesKey:
    labels = sample.labels
    if not labels:
        return (sample.entity, sample.metric)
    return (sample.entity, sample.metric, tuple(sorted(labels.items())))


def series_keys(samples: Iterable[tuple[object, Sample]]) -> list[SeriesKey]:
    """``series_key`` of each (envelope, sample) pair: the stage's hot path, one comprehension
    instead of a call per sample (the same expressions)."""
    return [
        (s.entity, s.metric, tuple(sorted(s.labels.items()))) if s.labels else (s.entity, s.metric)
        for _, s in samples
    ]


@dataclass(frozen=True, slots=True)
class DetectorsConfig:
    """Hyperparameters of the online models (one configuration for every series)."""

    memory: MemoryLeakConfig = field(default_factory=MemoryLeakConfig)
    error_rate: ErrorRateConfig = field(default_factory=ErrorRateConfig)
    resources: ResourceForecastConfig = field(default_factory=ResourceForecastConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    logs: LogAnalyzerConfig = field(default_factory=LogAnalyzerConfig)
    #: glob patterns of metrics scored by the latency model
    latency_metrics: tuple[str, ...] = ("*latency*", "*duration*")
    #: also score every metric that no rule and no other model covers
    generic_metrics: bool = False


def _kwargs(cfg: object) -> dict[str, object]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]


class Router:
    """Builds the judges for a new series and names the per-entity judges."""

    def __init__(
        self, rules: tuple[RuleSpec, ...], models: DetectorsConfig, *, models_enabled: bool = True
    ) -> None:
        self.rules = rules
        self.models = models
        self.models_enabled = models_enabled
        self._memory_kw = _kwargs(models.memory)
        self._error_kw = _kwargs(models.error_rate)
        self._latency_kw = _kwargs(models.latency)
        self._logs_kw = _kwargs(models.logs)
        self._counters = {models.error_rate.requests_metric, models.error_rate.errors_metric}
        self._memory = set(models.memory.metrics)
        # usage or limit metric -> (resource, usage metric, judge factory)
        self._forecasts: dict[str, tuple[str, str, Callable[[], Judge]]] = {}
        hyper = {k: getattr(models.resources, k) for k in GROWTH_PARAMS}
        for name in models.resources.resources:
            for usage, limit in RESOURCES[name].metrics.items():
                make = functools.partial(
                    ResourceForecastJudge, resource=name, metrics=(usage,), **hyper
                )
                self._forecasts[usage] = (name, usage, make)
                if limit:
                    self._forecasts[limit] = (name, usage, make)
        #: metrics feeding a per-entity judge: one set lookup per sample on the hot path
        self.entity_metrics: frozenset[str] = (
            frozenset(self._counters | set(self._forecasts)) if models_enabled else frozenset()
        )

    def _latency_applies(self, metric: str, covered: bool) -> bool:
        if any(fnmatch.fnmatchcase(metric, p) for p in self.models.latency_metrics):
            return True
        return self.models.generic_metrics and not covered

    def series_judges(self, sample: Sample) -> list[Judge]:
        judges: list[Judge] = [rule.judge() for rule in self.rules if rule.applies(sample)]
        if not self.models_enabled:
            return judges
        metric = sample.metric
        if metric in self._memory:
            judges.append(MemoryLeakJudge(**self._memory_kw))  # type: ignore[arg-type]
        elif metric not in self._counters and self._latency_applies(
            metric, bool(judges) or metric in self._forecasts
        ):
            judges.append(LatencyJudge(**self._latency_kw))  # type: ignore[arg-type]
        return judges

    def entity_judges(self, sample: Sample) -> list[tuple[str, Callable[[], Judge]]]:
        """Judges kept per entity: the error ratio from counters, and the resource forecasts
        (a usage series and its paired limit series feed the same judge)."""
        forecast = self._forecasts.get(sample.metric)
        if forecast is None:
            return [("error_rate", self._error_rate)]
        name, usage, make = forecast
        resource = RESOURCES[name]
        labels = sample.labels
        if not labels:
            return [(f"forecast:{usage}", make)]
        if not resource.counts(labels):
            return []  # e.g. idle connections, free disk space: not usage
        shared = ",".join(f"{k}={v}" for k, v in resource.pairing(labels))
        return [(f"forecast:{usage}|{shared}", make)]

    def log_judges(self, line: LogLine) -> list[tuple[str, Callable[[], LogJudge]]]:
        """Per-entity log judges, as (bank key suffix, factory)."""
        if not self.models_enabled:
            return []
        return [("error_rate", self._error_rate), ("logs", self._log_analyzer)]

    def entity_factory(self, name: str) -> Callable[[], Judge | LogJudge] | None:
        """The factory of a per-entity bank entry named ``name`` by ``entity_judges`` or
        ``log_judges``, under these settings; None when they no longer build it (a restore
        drops such a judge)."""
        if not self.models_enabled:
            return None
        if name == "error_rate":
            return self._error_rate
        if name == "logs":
            return self._log_analyzer
        if name.startswith("forecast:"):
            usage = name.removeprefix("forecast:").split("|", 1)[0]
            forecast = self._forecasts.get(usage)
            if forecast is not None and forecast[1] == usage:
                return forecast[2]
        return None

    def _error_rate(self) -> ErrorRateJudge:
        return ErrorRateJudge(**self._error_kw)  # type: ignore[arg-type]

    def _log_analyzer(self) -> LogAnalyzerJudge:
        return LogAnalyzerJudge(**self._logs_kw)  # type: ignore[arg-type]
