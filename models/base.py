"""The two small contracts every detector family follows.

``Detector`` is river's anomaly contract on one series: ``learn_one`` returns nothing,
``score_one`` returns a float and never mutates. ``Judge`` wraps detectors for one series
(one entity and metric, or one entity's logs): it scores, turns the score into an optional
``Finding`` and decides whether the point may be learned (flagged points are not learned,
so an anomaly cannot poison its own model). Judges are per-series objects created by a
factory; they must pickle (checkpoints) and keep bounded state.
"""

from __future__ import annotations

import abc
import copy
import inspect
from typing import Any, Protocol, runtime_checkable

from selfheal.pipeline.kernel.types import Finding, LogLine, Sample


@runtime_checkable
class Detector(Protocol):
    """river's contract for a univariate online anomaly detector on event time."""

    def learn_one(self, x: float, t: float) -> None: ...

    def score_one(self, x: float, t: float) -> float: ...


class Judge(abc.ABC):
    """Per-series wrapper: score, judge, learn unless flagged, report absence on tick."""

    #: name reported as ``detector`` in findings
    name: str = "judge"

    @abc.abstractmethod
    def observe(self, sample: Sample) -> list[Finding]:
        """Process one sample of this series (in event-time order) and return findings."""

    def tick(self, watermark: float) -> list[Finding]:
        """Absence checks: called with the event-time watermark (or the clock when live)."""
        return []

    def clone(self) -> Judge:
        """A fresh judge with the same hyperparameters (river's ``clone``)."""
        return type(self)(**self._get_params())

    def _get_params(self) -> dict[str, Any]:
        return _params(self)


class LogJudge(abc.ABC):
    """Per-entity wrapper for log lines."""

    name: str = "log_judge"

    @abc.abstractmethod
    def observe_log(self, line: LogLine) -> list[Finding]:
        """Process one log line of this entity (in event-time order) and return findings."""

    def tick(self, watermark: float) -> list[Finding]:
        return []

    def clone(self) -> LogJudge:
        """A fresh judge with the same hyperparameters (river's ``clone``)."""
        return type(self)(**self._get_params())

    def _get_params(self) -> dict[str, Any]:
        return _params(self)


def _params(judge: object) -> dict[str, Any]:
    # hyperparameters are stored under their argument names (river's convention)
    sig = inspect.signature(type(judge).__init__)
    return {
        name: copy.deepcopy(getattr(judge, name))
        for name in sig.parameters
        if name != "self" and hasattr(judge, name)
    }
