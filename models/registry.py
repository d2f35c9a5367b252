"""Which judges watch which series: the routing table from samples to detectors.

The runner keeps a bounded bank of judges keyed by ``SeriesKey``; this module says, for a new
series, which judges to create. Static rules and online models sit side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from models.base import Judge, LogJudge
from models.rules import RuleSpec
from pipeline.types import LogLine, Sample

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]


def series_key(sample: Sample) -> SeriesKey:
    labels = sample.labels
    return (sample.entity, sample.metric, tuple(sorted(labels.items())) if labels else ())


@dataclass(frozen=True, slots=True)
class DetectorsConfig:
    """Hyperparameters of the online models (one configuration for every series)."""

    enabled: tuple[str, ...] = field(default=())


class Router:
    """Builds the judges for a new series and names the per-entity judges for logs."""

    def __init__(
        self, rules: tuple[RuleSpec, ...], models: DetectorsConfig, *, models_enabled: bool = True
    ) -> None:
        self.rules = rules
        self.models = models
        self.models_enabled = models_enabled

    def series_judges(self, sample: Sample) -> list[Judge]:
        return [rule.judge() for rule in self.rules if rule.applies(sample)]

    def entity_judges(self, sample: Sample) -> list[tuple[str, Callable[[], Judge]]]:
        """Judges shared by all series of one entity (e.g. error ratio from counters)."""
        return []

    def log_judges(self, line: LogLine) -> list[tuple[str, Callable[[], LogJudge]]]:
        """Per-entity log judges, as (bank key suffix, factory)."""
        return []
