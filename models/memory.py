"""Memory-leak forecast: when a leaking process will hit its memory limit.

The time-to-limit model of ``selfheal.models.forecast`` on the memory row of the resource
table (``selfheal.models.resources``), one judge per memory series, reporting
``memory_leak`` findings as ``memory_growth``. The limit comes from the samples' ``limit``
field (or the ``limit`` hyperparameter).

Memory decides with its own settings (``MemoryLeakConfig``): the breach is projected with the
span's slope (``cautious_slope`` off) up to 1.2x as far as the growth has been watched
(``extrapolation_factor`` 1.2), and the first 30 min after a (re)start stay out of the fit
(``startup_seconds`` 1800: the start-up warm-up is not growth; with it in the window, a daily
cycle rising from its trough just after a start passed as a leak in its first day, before the
day-over-day check can run). ``benchmarks/memory_leak.py --tune`` chose them on its tuning seeds
(no alarm on the controls, then the longest median lead); the other resources keep the
forecast's cautious defaults and their start-up floors, chosen by their own sweep. Every other
hyperparameter is the forecast's. On the fresh held-out seeds no control alarms (42), with a
median lead 2.2x the ``predict_linear`` rule's: see BENCHMARKS.md.

``MemoryLeakJudge`` has a runnable example.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from selfheal.models.forecast import GrowthParams, ResourceForecastJudge
from selfheal.models.resources import MEMORY_METRICS

#: kept for callers of the previous name
DEFAULT_MEMORY_METRICS = MEMORY_METRICS


@dataclass(frozen=True)
class MemoryLeakConfig(GrowthParams):
    """Shipped defaults (one config for every memory series)."""

    metrics: tuple[str, ...] = MEMORY_METRICS
    # memory's own decision settings (benchmarks/memory_leak.py --tune, tuning seeds): no
    # alarm on the controls and the longest median lead; the resources' cautious slope and
    # 1.0x warned ~1.1 h later at the median, but alarmed on fewer +-20 % daily cycles of the
    # stress set
    extrapolation_factor: float = 1.2
    cautious_slope: bool = False
    # the start-up warm-up is not growth: in a window it steepened the rise of a daily cycle
    # whose trough follows the start into a first-day alarm (1800 s: 0/280 tuning controls)
    startup_seconds: float = 1800.0


_M = MemoryLeakConfig()


class MemoryLeakJudge(ResourceForecastJudge):
    """Per-series (entity + memory metric) leak forecaster.

    >>> from selfheal.pipeline.kernel.types import Sample
    >>> judge = MemoryLeakJudge(limit=1e9)
    >>> t0 = 1_795_842_000.0
    >>> found = []
    >>> for i in range(int(8 * 3600 / 15)):  # 8 h, +100 MB/h from 200 MB, 30 MB GC sawtooth
    ...     t = t0 + 15 * i
    ...     v = 2e8 + 1e8 * (t - t0) / 3600 + 3e7 * ((i % 8) / 8)
    ...     found += judge.observe(Sample(t, "api-1", "container_memory_working_set_bytes", v))
    >>> f = found[0]
    >>> f.kind.value, f.detector, f.forecast is not None
    ('memory_leak', 'memory_growth', True)
    >>> 0 < f.forecast.eta_seconds < 8 * 3600
    True
    """

    name = "memory_growth"

    def __init__(
        self,
        *,
        extrapolation_factor: float = _M.extrapolation_factor,
        cautious_slope: bool = _M.cautious_slope,
        startup_seconds: float = _M.startup_seconds,
        **kwargs: Any,
    ) -> None:
        # only memory's defaults differ; every other argument is the forecast's
        super().__init__(
            extrapolation_factor=extrapolation_factor,
            cautious_slope=cautious_slope,
            startup_seconds=startup_seconds,
            **kwargs,
        )

    @classmethod
    def from_config(cls, config: MemoryLeakConfig) -> MemoryLeakJudge:
        return cls(**asdict(config))

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
