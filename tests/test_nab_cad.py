"""Behaviour of the CAD OSE re-implementation used by the NAB experiment (``--cad``)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.nab_cad import WEIGHTS, CADDetector, cad_scores, combine


def _pattern(n: int) -> list[float]:
    return [float(v) for v in np.tile([0.0, 1.0, 3.0, 7.0, 3.0, 1.0], n // 6 + 1)[:n]]


def test_learned_pattern_is_predicted_and_a_new_transition_is_not() -> None:
    det = CADDetector(rest_period=10)
    scores = [det.score_learn_one(v) for v in _pattern(600)]
    assert max(scores[300:]) == 0.0
    # 7.0 after 0.0 never happened: the previous prediction (1.0 next) misses it
    assert det.score_learn_one(7.0) > 0.0


def test_rest_period_reports_one_alarm_then_stays_quiet() -> None:
    det = CADDetector(rest_period=50, base_threshold=0.3)
    for v in _pattern(600):
        det.score_learn_one(v)
    rng = np.random.default_rng(3)
    noise = [det.score_learn_one(float(v)) for v in rng.uniform(0.0, 7.0, 200)]
    first = next(i for i, s in enumerate(noise) if s >= 0.3)
    # the raw score keeps exceeding the base threshold in the noise: nothing reported in the
    # rest period after the first alarm
    assert max(noise[first + 1 : first + 51]) == 0.0


def test_first_rest_period_points_score_zero() -> None:
    det = CADDetector(rest_period=40)
    rng = np.random.default_rng(1)
    assert all(det.score_learn_one(float(v)) == 0.0 for v in rng.normal(size=40))


def test_deterministic() -> None:
    values = [float(v) for v in np.random.default_rng(7).normal(size=800)]
    assert cad_scores(values) == cad_scores(values)


def test_context_memory_is_bounded() -> None:
    det = CADDetector(max_contexts=200)
    rng = np.random.default_rng(5)
    for v in rng.normal(size=3000):
        det.score_learn_one(float(v))
        assert len(det._csel) <= 200
    assert det.resets > 0


def test_lookahead_range_is_fixed_not_learned() -> None:
    values = [float(v) for v in np.random.default_rng(2).uniform(10.0, 20.0, 300)]
    det = CADDetector(value_range=(0.0, 100.0))
    for v in values:
        det.score_learn_one(v)
    assert (det.lo, det.hi) == (0.0, 100.0)
    # the look-ahead setup is a different normalisation: different scores from the online one
    assert cad_scores(values, lookahead=True) != cad_scores(values)


def test_combination_weight_zero_is_the_latency_model_alone() -> None:
    lat = [np.array([0.1, 0.5, 0.0])]
    cad = [np.array([1.0, 0.2, 0.9])]
    cands = combine(lat, cad)
    assert list(cands) == [f"w={w}" for w in WEIGHTS]
    assert np.array_equal(cands["w=0.0"][0], lat[0])
    w = WEIGHTS[1]
    assert np.allclose(cands[f"w={w}"][0], np.maximum(lat[0], w * cad[0]))


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        CADDetector(bits=0)
    with pytest.raises(ValueError):
        CADDetector(max_contexts=3)
