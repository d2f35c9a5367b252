"""Behaviour of the online discord scorer used by the NAB experiment (``--discord``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.nab_discord import (
    DiscordScorer,
    discord_distances,
    discord_likelihood,
    record_alarms,
)

_SHAPE = [0.0, 1.0, 3.0, 7.0, 3.0, 1.0, 0.0, 0.0]


def _pattern(n: int) -> np.ndarray:
    return np.tile(_SHAPE, n // len(_SHAPE) + 1)[:n].astype(np.float64)


def test_repeated_pattern_has_no_discord_and_a_novel_shape_has_one() -> None:
    det = DiscordScorer(window=8, history=300)
    raw = [det.distance_learn_one(v) for v in _pattern(800)]
    assert max(raw[50:]) < 1e-6
    novel = [det.distance_learn_one(v) for v in (5.0, -3.0, 6.0, -2.0)]
    assert max(novel) > 0.3


def test_online_scorer_equals_the_batch_computation() -> None:
    rng = np.random.default_rng(1)
    x = np.sin(np.arange(1500) / 5.0) + 0.2 * rng.normal(size=1500)
    x[700:720] += 3.0
    x[1000:1100] = 2.0  # a flat stretch
    for window, history, exclusion in ((8, 100, None), (16, 400, 4)):
        det = DiscordScorer(window=window, history=history, exclusion=exclusion)
        online = np.array([det.distance_learn_one(v) for v in x])
        batch = discord_distances(x, window=window, history=history, exclusion=exclusion)
        np.testing.assert_allclose(online, batch, atol=1e-9)


def test_flat_windows_are_not_blown_up() -> None:
    # a constant series: every window normalises to zeros, distance 0 (no division by zero)
    assert np.all(discord_distances(np.full(300, 5.0), window=16, history=100) == 0.0)
    # a shape after flat stretches only: flat against a shape is sqrt(m), i.e. 0.5 of the max
    x = np.concatenate((np.full(200, 1.0), _pattern(16)))
    raw = discord_distances(x, window=8, history=150)
    assert raw[207] == pytest.approx(0.5)
    # tiny noise on a series with a large range reads as (nearly) flat with the floor
    rng = np.random.default_rng(2)
    y = np.concatenate(([0.0, 100.0], 50.0 + 1e-3 * rng.normal(size=400)))
    assert discord_distances(y, window=16, history=300, flat=0.01)[100:].max() < 0.01
    assert discord_distances(y, window=16, history=300, flat=0.0)[100:].max() > 0.1


def test_no_past_window_scores_zero() -> None:
    det = DiscordScorer(window=4, history=50)
    # the first window ends at point 3, the first with a non-overlapping past one at point 7
    raw = [det.distance_learn_one(float(i * i)) for i in range(8)]
    assert raw[:7] == [0.0] * 7
    assert raw[7] > 0.0


def test_likelihood_fires_once_then_suppresses() -> None:
    rng = np.random.default_rng(4)
    raw = 0.2 + 0.01 * rng.normal(size=1000)
    raw[600:700] = 0.8  # a sustained jump of the discord distance
    scores = discord_likelihood(raw, suppress=200)
    assert scores[:300].max() == 0.0  # learning period
    assert scores[300:600].max() < 0.2
    first = int(np.argmax(scores >= 0.5))
    assert 600 <= first < 605
    assert scores[first + 1 : first + 201].max() == 0.0


def test_record_alarm_needs_a_new_record() -> None:
    raw = np.full(1000, 0.3)
    raw[400] = 0.5  # the record after the warm-up
    raw[800] = 0.56
    assert np.flatnonzero(record_alarms(raw, 1.1)).tolist() == [800]
    assert not record_alarms(raw, 1.25).any()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        DiscordScorer(window=1)
    with pytest.raises(ValueError):
        DiscordScorer(window=16, history=8)  # exclusion (= window) > history
    assert math.isfinite(DiscordScorer(window=2, history=2).distance_learn_one(1.0))


def test_docstring_example() -> None:
    import doctest

    import benchmarks.nab_discord as mod

    assert doctest.testmod(mod).failed == 0
