"""One small base class per detector family, all on river's ``Estimator`` conventions.

Every detector stores its hyperparameters once, as attributes named like its ``__init__``
arguments; ``_get_params`` reads them back by that signature (``_param_names``: a subclass
whose ``__init__`` passes ``**kwargs`` on adds its parent's) and ``clone()`` builds a fresh
detector from them (river's ``base.Base``). ``_unit_test_params`` yields the arguments the
generic contract tests (``tests/test_detector_contract.py``) build each discovered detector
with, as river's ``_unit_test_params`` does.

The families and their verbs:

* :class:`Judge`: one metric series (entity, metric, labels) or one entity's counters.
  ``observe(sample) -> findings`` in event-time order; ``tick(watermark) -> findings`` for
  absence checks. Flagged points are not learned, so an anomaly cannot poison its own model.
* :class:`LogJudge`: one entity's log lines. ``observe_log(line) -> findings``, ``tick``.
* :class:`DriftDetector`: a sequential change test on per-bucket counts (the error-rate
  judge's engine). ``update(errors, total)`` then read ``drift_detected``, as river's
  ``drift`` detectors (which take one value) do.

Detectors are per-series objects created by a factory; their state is bounded and holds no
configuration beyond the hyperparameters.
"""

from __future__ import annotations

import abc
import copy
import inspect
from collections.abc import Iterator
from typing import Any, Self

from selfheal.pipeline.kernel.types import Finding, LogLine, Sample


class Estimator:
    """river's base: hyperparameters are the ``__init__`` arguments, stored under their names."""

    __slots__ = ()

    @classmethod
    def _param_names(cls) -> list[str]:
        """The named ``__init__`` arguments and, where ``__init__`` hands ``**kwargs`` to its
        parent's, the parent's too: a subclass that changes a few defaults (the memory
        forecast) keeps the rest of the signature without repeating it."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = list(inspect.signature(init).parameters.values())
            names += [
                p.name
                for p in params
                if p.name != "self"
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and p.name not in names
            ]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    def _get_params(self) -> dict[str, Any]:
        """The hyperparameters, read back by the ``__init__`` signature (deep copies)."""
        return {
            name: copy.deepcopy(getattr(self, name))
            for name in self._param_names()
            if hasattr(self, name)
        }

    def clone(self) -> Self:
        """A fresh detector with the same hyperparameters and no learned state."""
        return type(self)(**self._get_params())

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        """Arguments the generic contract tests build this detector with (river's hook)."""
        yield {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({args})"


class Judge(Estimator, abc.ABC):
    """Per-series detector: score, judge, learn unless flagged, report absence on tick."""

    __slots__ = ()

    #: name reported as ``detector`` in findings
    name: str = "judge"

    @abc.abstractmethod
    def observe(self, sample: Sample) -> list[Finding]:
        """Process one sample of this series (in event-time order) and return findings."""

    def tick(self, watermark: float) -> list[Finding]:
        """Absence checks: called with the event-time watermark (or the clock when live)."""
        return []


class LogJudge(Estimator, abc.ABC):
    """Per-entity detector for log lines."""

    __slots__ = ()

    name: str = "log_judge"

    @abc.abstractmethod
    def observe_log(self, line: LogLine) -> list[Finding]:
        """Process one log line of this entity (in event-time order) and return findings."""

    def tick(self, watermark: float) -> list[Finding]:
        return []


def ticks(judge: Judge | LogJudge) -> bool:
    """Whether ``judge`` has absence checks (overrides ``tick``): only those are ticked."""
    return type(judge).tick is not Judge.tick and type(judge).tick is not LogJudge.tick


class DriftDetector(Estimator, abc.ABC):
    """Sequential change test on per-bucket counts (``errors`` out of ``total``).

    After ``update``, ``drift_detected`` says whether this bucket completed a change; the
    detector restarts by itself after a detection, as river's drift detectors do.
    """

    __slots__ = ()
    drift_detected: bool = False

    @abc.abstractmethod
    def update(self, errors: float, total: float) -> None:
        """Feed one closed bucket (``0 <= errors <= total``, ``total > 0``)."""
