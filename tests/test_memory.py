"""MemoryLeakJudge on the seeded scenarios of benchmarks/scenarios.py."""

from __future__ import annotations

import itertools
import pickle
from functools import cache

import numpy as np
import pytest
from selfheal.models.memory import MemoryLeakConfig, MemoryLeakJudge
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, Sample, Severity

from benchmarks.scenarios import (
    HOUR,
    LIMIT,
    MEM_METRIC,
    T0,
    MemoryScenario,
    leak_then_restart,
    memory_control_scenarios,
    memory_leak_scenarios,
    memory_seeded_scenarios,
)


def run(sc: MemoryScenario, judge: MemoryLeakJudge | None = None) -> list[Finding]:
    judge = judge or MemoryLeakJudge()
    return [f for s in sc.samples() for f in judge.observe(s)]


@cache
def leak(name: str) -> MemoryScenario:
    return next(sc for sc in memory_leak_scenarios() if sc.name == name)


@pytest.mark.parametrize("name", ["leak_6h_fast_gc", "leak_10h", "leak_24h_irregular"])
def test_leak_is_forecast_early_and_roughly_right(name: str) -> None:
    sc = leak(name)
    assert sc.leak_start is not None and sc.oom_ts is not None
    found = run(sc)
    assert found, "a leak must be flagged"
    first = found[0]
    assert first.ts >= sc.leak_start, "nothing before the leak starts (warm-up is not a leak)"
    lead = sc.oom_ts - first.ts
    assert lead >= 0.4 * (sc.oom_ts - sc.leak_start), "first warning well before the OOM"
    assert first.forecast is not None
    predicted = first.ts + first.forecast.eta_seconds
    assert abs(predicted - sc.oom_ts) <= 0.3 * lead
    assert first.kind == AnomalyKind.MEMORY_LEAK and first.detector == "memory_growth"
    assert first.forecast.horizon_seconds == MemoryLeakConfig().horizon_seconds
    assert 0.0 <= first.forecast.confidence <= 1.0
    ev = first.evidence
    assert ev["limit"] == LIMIT and ev["slope_bytes_per_s"] > 0 and ev["fit_window_seconds"] > 0
    assert {"floor", "r2"} <= set(ev)
    # the last findings before the OOM are critical
    assert found[-1].severity == Severity.CRITICAL


def test_findings_are_deduplicated() -> None:
    sc = leak("leak_10h")
    found = run(sc)
    # about one finding an hour at most, not one per 15 s sample
    assert len(found) <= (sc.ts[-1] - sc.ts[0]) / HOUR
    for a, b in itertools.pairwise(found):
        assert a.forecast is not None and b.forecast is not None
        assert (
            b.ts - a.ts >= MemoryLeakConfig().reemit_seconds
            or b.forecast.eta_seconds <= 0.5 * a.forecast.eta_seconds
            or b.severity.rank > a.severity.rank
        )


@pytest.mark.parametrize("sc", memory_control_scenarios(), ids=lambda s: s.name)
def test_controls_never_alarm(sc: MemoryScenario) -> None:
    assert run(sc) == []


def test_restart_clears_the_leak() -> None:
    sc = leak_then_restart()
    judge = MemoryLeakJudge()
    found = run(sc, judge)
    restart_ts = T0 + 11 * HOUR
    assert found and all(f.ts < restart_ts for f in found)
    assert judge.resets >= 1


def test_needs_a_limit_and_a_memory_metric() -> None:
    sc = leak("leak_6h_fast_gc")
    judge = MemoryLeakJudge()
    assert [
        f for s in sc.samples() for f in judge.observe(Sample(s.ts, s.entity, s.metric, s.value))
    ] == []
    other = MemoryLeakJudge()
    assert [
        f
        for s in sc.samples()
        for f in other.observe(Sample(s.ts, s.entity, "queue_depth", s.value, {}, LIMIT))
    ] == []
    # a configured limit replaces the sample's
    configured = MemoryLeakJudge(limit=LIMIT)
    assert [
        f
        for s in sc.samples()
        for f in configured.observe(Sample(s.ts, s.entity, MEM_METRIC, s.value))
    ]


def test_pickle_round_trip_continues_identically() -> None:
    sc = leak("leak_6h_fast_gc")
    samples = list(sc.samples())
    half = len(samples) // 2
    judge = MemoryLeakJudge()
    for s in samples[:half]:
        judge.observe(s)
    copy = pickle.loads(pickle.dumps(judge))
    rest_a = [f for s in samples[half:] for f in judge.observe(s)]
    rest_b = [f for s in samples[half:] for f in copy.observe(s)]
    assert rest_a and rest_a == rest_b


def test_clone_keeps_params_and_drops_state() -> None:
    judge = MemoryLeakJudge(horizon_seconds=7200.0, bucket_seconds=600.0, limit=5e8)
    for s in leak("leak_6h_fast_gc").samples():
        judge.observe(s)
    fresh = judge.clone()
    assert isinstance(fresh, MemoryLeakJudge)
    assert (fresh.horizon_seconds, fresh.bucket_seconds, fresh.limit) == (7200.0, 600.0, 5e8)
    assert len(fresh._floor_v) == 0 and len(judge._floor_v) > 0
    assert MemoryLeakJudge.from_config(MemoryLeakConfig())._get_params() == (
        MemoryLeakJudge()._get_params()
    )


def test_deterministic() -> None:
    sc = leak("leak_10h")
    assert run(sc) == run(sc)


def test_state_is_bounded() -> None:
    sc = next(s for s in memory_control_scenarios() if s.name == "sawtooth_fast")
    judge = MemoryLeakJudge()
    sizes = {}
    for s in sc.samples():
        judge.observe(s)
        h = round((s.ts - T0) / HOUR, 3)
        if h in (30.0, 47.0):
            sizes[h] = len(pickle.dumps(judge))
    assert sizes[47.0] <= 1.05 * sizes[30.0]
    assert sizes[47.0] < 20_000


# Memory's own decision settings (models/memory.py, chosen by benchmarks/memory_leak.py --tune
# on the tuning seeds): the span's slope, 1.2x as far as the growth has been watched. The
# other resources keep the forecast's cautious slope and 1.0x.
CAUTIOUS = {"cautious_slope": True, "extrapolation_factor": 1.0}


def test_memory_defaults_are_its_own_and_reach_the_router() -> None:
    from selfheal.models.forecast import GrowthParams, ResourceForecastJudge
    from selfheal.models.registry import DetectorsConfig, Router

    judge = MemoryLeakJudge()
    assert (judge.cautious_slope, judge.extrapolation_factor) == (False, 1.2)
    cfg = MemoryLeakConfig()
    assert (cfg.cautious_slope, cfg.extrapolation_factor) == (False, 1.2)
    assert judge.startup_seconds == cfg.startup_seconds > 0
    disk = ResourceForecastJudge(resource="disk")
    assert (disk.cautious_slope, disk.extrapolation_factor) == (
        GrowthParams().cautious_slope,
        GrowthParams().extrapolation_factor,
    )
    assert disk.startup_seconds == 0.0  # the other resources keep their start-up floors
    routed = Router((), DetectorsConfig()).series_judges(
        Sample(T0, "svc-1", MEM_METRIC, 1.0, {}, LIMIT)
    )
    (mem,) = [j for j in routed if isinstance(j, MemoryLeakJudge)]
    assert mem._get_params() == MemoryLeakJudge.from_config(cfg)._get_params()
    # a setting still overrides the default, and a clone keeps it
    assert MemoryLeakJudge(**CAUTIOUS).clone().cautious_slope is True


@pytest.mark.parametrize("name", ["leak_12h_slow_gc", "leak_24h_irregular", "leak_32h_noisy"])
def test_a_leak_is_warned_earlier_than_with_the_cautious_projection(name: str) -> None:
    sc = leak(name)
    assert sc.leak_start is not None and sc.oom_ts is not None
    ours, cautious = run(sc), run(sc, MemoryLeakJudge(**CAUTIOUS))
    assert ours and cautious
    assert sc.leak_start <= ours[0].ts < cautious[0].ts < sc.oom_ts
    # the reported eta is the same best estimate: only the decision to alarm moved
    assert ours[0].forecast is not None
    assert abs(ours[0].ts + ours[0].forecast.eta_seconds - sc.oom_ts) <= 0.3 * (
        sc.oom_ts - ours[0].ts
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drawn_daily_cycles_and_deploy_steps_stay_quiet(seed: int) -> None:
    _, controls, _ = memory_seeded_scenarios(seed)
    for sc in controls:
        if sc.name.startswith(("daily_cycle", "deploy_step")):
            assert run(sc) == [], sc.name


# The start-up (models/memory.py, ``startup_seconds``): a +-15 % daily cycle whose trough
# comes just after the process starts rises through its first day like a leak, and with the
# start-up warm-up in the evidence window its slope was steep enough to alarm (the day-over-day
# check cannot run before a day of history).
def first_day_rise(mean: float, trough_h: float, leak_speed: float = 0.0) -> MemoryScenario:
    """A 36 h series: start-up from 10 % of the limit (15 min time constant), then a +-15 %
    daily cycle around ``mean`` with its trough at ``trough_h`` and a 2 min, 8 % GC sawtooth.
    With ``leak_speed`` > 0 the rise does not turn at the inflection (6 h after the trough) but
    goes on at ``leak_speed`` x its steepest slope until the limit: a leak with the cycle's
    first 6 h of rise."""
    rng = np.random.default_rng(7)
    t = T0 + 15.0 * np.arange(int(36 * HOUR / 15))
    x = (t - T0) / HOUR
    w, amp = 2 * np.pi / 24, 0.15
    cycle = -amp * np.cos(w * (x - trough_h))  # 0 at the inflection, 6 h after the trough
    if leak_speed > 0:
        turn = trough_h + 6.0
        cycle = np.where(x > turn, leak_speed * amp * w * (x - turn), cycle)
    y = 0.10 + (mean - 0.10) * (1 - np.exp(-x / 0.25)) + cycle
    y = y + 0.08 * (np.arange(len(t)) % 8) / 8 + rng.normal(0.0, 0.005, len(t))
    values = y * LIMIT
    hit = np.nonzero(values >= LIMIT)[0]
    cut = int(hit[0]) if len(hit) else len(t) - 1
    oom = float(t[cut]) if len(hit) else None
    start = T0 + trough_h * HOUR if leak_speed > 0 else None
    return MemoryScenario("first_day", t[: cut + 1], values[: cut + 1], LIMIT, start, oom)


WITH_STARTUP = {"startup_seconds": 0.0}  # the start-up floors in the windows, as before


def test_a_drawn_daily_cycle_rising_from_its_trough_after_the_start_stays_quiet() -> None:
    # a control of the tuning seeds: the start-up ramp runs into the trough (1.4 h in)
    _, controls, _ = memory_seeded_scenarios(3)
    sc = next(c for c in controls if c.name == "daily_cycle:s3:0")
    assert run(sc) == []
    before = run(sc, MemoryLeakJudge(**WITH_STARTUP))
    assert before and before[0].ts - sc.ts[0] < 24 * HOUR  # a first-day alarm, as before


@pytest.mark.parametrize("mean", [0.45, 0.50])
@pytest.mark.parametrize("trough_h", [0.5, 1.0])
def test_a_daily_cycle_rising_from_its_trough_through_its_first_day_stays_quiet(
    mean: float, trough_h: float
) -> None:
    sc = first_day_rise(mean, trough_h)
    assert run(sc) == []
    assert run(sc, MemoryLeakJudge(**WITH_STARTUP))  # a hard case: it alarmed before


def test_a_leak_with_the_same_first_day_rise_is_still_warned() -> None:
    sc = first_day_rise(0.50, 1.0, leak_speed=1.0)
    assert sc.oom_ts is not None and sc.oom_ts < T0 + 24 * HOUR
    found = run(sc)
    assert found, "a leak must still be flagged in its first day"
    first = found[0]
    assert first.forecast is not None
    lead = sc.oom_ts - first.ts
    assert lead >= 6 * HOUR
    assert abs(first.ts + first.forecast.eta_seconds - sc.oom_ts) <= 0.3 * lead


def test_a_fast_leak_from_the_start_alarms_hours_before_the_limit() -> None:
    # leaking from the process start: no plateau, the start-up runs straight into the leak
    sc = first_day_rise(0.30, -6.0, leak_speed=2.0)
    assert sc.oom_ts is not None and sc.oom_ts < T0 + 9 * HOUR
    found = run(sc)
    assert found and found[0].forecast is not None
    assert found[0].ts <= sc.oom_ts - 3 * HOUR
    # leaving the start-up out costs it at most the start-up itself
    before = run(sc, MemoryLeakJudge(**WITH_STARTUP))
    assert found[0].ts <= before[0].ts + MemoryLeakConfig().startup_seconds
    assert abs(found[0].ts + found[0].forecast.eta_seconds - sc.oom_ts) <= 0.3 * (
        sc.oom_ts - found[0].ts
    )
