"""Behaviour of the ARTime re-implementation used by the NAB experiment (``--artime``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.nab_artime import (
    DVFA,
    WEIGHTS,
    ARTimeDetector,
    artime_scores,
    haar_dwt,
    probation_of,
    window_features,
)
from benchmarks.nab_artime_report import combine


def _wave(n: int, period: int = 50) -> list[float]:
    return [10.0 + math.sin(2 * math.pi * i / period) for i in range(n)]


def test_haar_matches_a_hand_computed_case() -> None:
    x = np.array([1.0, 3.0, 0.0, 0.0, 2.0, 2.0, 5.0, 1.0])
    r = math.sqrt(2.0)
    # scaling, coarsest detail, 2 middle details, 4 finest: (second - first) / sqrt(2) per pair
    want = [7 / r, 3 / r, -2.0, 1.0, 2 / r, 0.0, 0.0, -4 / r]
    assert np.allclose(haar_dwt(x), want)
    assert math.isclose(float(np.linalg.norm(haar_dwt(x))), float(np.linalg.norm(x)))
    with pytest.raises(ValueError):
        haar_dwt(np.ones(6))


def test_features_are_the_normalised_transform_then_the_window() -> None:
    w = np.array([0.1, 0.2, 0.2, 0.4, 0.5, 0.5, 0.5, 0.9])
    f = window_features(w)
    assert f.shape == (16,)
    assert np.array_equal(f[8:], w)
    assert f[:8].min() == 0.0 and f[:8].max() == 1.0


def test_step_is_reported_at_the_step_and_not_before() -> None:
    values = [5.0] * 2000 + [8.0] * 1000
    scores = np.array(artime_scores(values))
    hits = np.flatnonzero(scores)
    assert len(hits) >= 1
    assert 2000 <= hits[0] <= 2010  # within one window of downsampled values of the step
    assert scores[:2000].max() == 0.0


def test_wave_then_level_shift() -> None:
    v = _wave(3000)
    values = v[:2000] + [x + 3.0 for x in v[2000:]]
    scores = np.array(artime_scores(values))
    assert scores[2000:2010].max() > 0.0


def test_scores_are_confidences_in_0_1_and_zero_in_probation() -> None:
    values = [float(v) for v in np.random.default_rng(4).normal(size=3000)]
    scores = np.array(artime_scores(values, lookahead=False))
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert scores[: probation_of(len(values))].max() == 0.0


def test_deterministic() -> None:
    values = [float(v) for v in np.random.default_rng(7).normal(size=1500)]
    assert artime_scores(values) == artime_scores(values)
    assert artime_scores(values, lookahead=False) == artime_scores(values, lookahead=False)


def test_online_differs_from_lookahead_only_through_normalisation() -> None:
    rng = np.random.default_rng(11)
    body = [float(v) for v in rng.normal(10.0, 1.0, 1150)] + [25.0] + [10.0] * 50
    # the global minimum and maximum come first: the range seen so far is the file's range
    # from the first point on (1,203 points: one raw point per downsampled value)
    values = [min(body) - 1.0, max(body) + 1.0, *body]
    assert ARTimeDetector(probation_of(len(values))).sstep == 1
    assert artime_scores(values, lookahead=False) == artime_scores(values)
    # and with no headroom, a probation holding both extremes freezes the file's range
    assert artime_scores(values, lookahead=False, headroom=0.0) == artime_scores(values)
    # otherwise the normalisation, hence the scores, differ
    late = [*body, max(body) + 50.0]
    assert artime_scores(late, lookahead=False) != artime_scores(late)


def test_frozen_range_clips_values_beyond_it() -> None:
    values = [*_wave(2000), 1e6, *_wave(200)]
    scores = artime_scores(values, lookahead=False, headroom=0.1)
    assert len(scores) == len(values)
    assert max(scores[2000:2010]) > 0.0


def test_dvfa_resonates_with_a_learned_input_and_not_with_a_far_one() -> None:
    art = DVFA(4, rho_lb=0.8, rho_ub=0.9)
    a = np.array([0.1, 0.2, 0.3, 0.4])
    assert art.train(a) == (False, 0.0, 0.0)  # the first sample only creates the all-ones one
    new, _, _ = art.train(a)
    assert new and art.n == 2  # nothing matched: a new cluster holding it
    new, match, energy = art.train(a)
    assert not new and match == pytest.approx(1.0) and energy == pytest.approx(1.0)
    new, match, _ = art.train(np.array([0.9, 0.9, 0.9, 0.9]))
    assert new and match < 0.8 and art.n == 3
    assert art.train(a, learn=False)[0]  # without learning nothing is committed
    assert art.n == 3


def test_probation_follows_nab_and_is_even() -> None:
    assert probation_of(1127) == 168
    assert probation_of(4032) == 604
    assert probation_of(22695) == 750
    assert ARTimeDetector(750).sstep == 7


def test_combination_weight_zero_is_the_latency_model_alone() -> None:
    lat = [np.array([0.1, 0.5, 0.0])]
    art = [np.array([1.0, 0.2, 0.9])]
    cands = combine(lat, {"ARTime": art})
    assert list(cands) == [f"w={w}" for w in WEIGHTS]
    assert np.array_equal(cands["w=0.0"][0], lat[0])
    w = WEIGHTS[1]
    assert np.allclose(cands[f"w={w}"][0], np.maximum(lat[0], w * art[0]))
    # several ARTime candidates: each with every weight, the latency model alone once, first
    two = combine(lat, {"h=0.1": art, "h=1.0": art})
    assert next(iter(two)) == "w=0.0"
    assert len(two) == 1 + 2 * (len(WEIGHTS) - 1)
