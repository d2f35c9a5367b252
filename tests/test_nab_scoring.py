"""NAB scoring rules on tiny hand-made files whose scores are derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.nab_scoring import (
    MAX_TP,
    REWARD_LOW_FN,
    REWARD_LOW_FP,
    STANDARD,
    FileLayout,
    normalised_score,
    null_score,
    perfect_score,
    probation_length,
    scaled_sigmoid,
    score_file,
    sweep_corpus,
    window_indices,
)

# n = 100 -> probation = 15 rows; one window [40, 49], width 10
LAY = FileLayout.build(n=100, windows=[(40, 49)])


def det(*idx: int, n: int = 100) -> np.ndarray:
    s = np.zeros(n)
    s[list(idx)] = 1.0
    return s


def test_probation_length() -> None:
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750  # capped


def test_scaled_sigmoid_values() -> None:
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(-1.0) == pytest.approx(0.9866142981514305)
    assert scaled_sigmoid(1.0) == pytest.approx(-0.9866142981514305)
    assert scaled_sigmoid(3.0) == pytest.approx(-0.9999993882, abs=1e-10)  # -1 + 2/(1+e^15)
    assert scaled_sigmoid(3.01) == -1.0


def test_perfect_and_null() -> None:
    assert score_file(det(40), LAY, STANDARD, 0.5).raw == pytest.approx(1.0)
    assert score_file(np.zeros(100), LAY, STANDARD, 0.5).raw == -1.0
    assert normalised_score(1.0, [LAY], STANDARD) == 100.0
    assert normalised_score(-1.0, [LAY], STANDARD) == 0.0
    assert null_score([LAY], REWARD_LOW_FN) == -2.0 and perfect_score([LAY], REWARD_LOW_FN) == 1.0


def test_late_detection_in_window() -> None:
    # last row of the window: p = -(49 - 49 + 1) / 10 = -0.1, S = 2 / (1 + e^-0.5) - 1
    expected = (2 / (1 + math.exp(-0.5)) - 1) / MAX_TP
    assert expected == pytest.approx(0.248242, abs=1e-6)
    assert score_file(det(49), LAY, STANDARD, 0.5).raw == pytest.approx(expected)
    # middle: i = 45 -> p = -0.5
    mid = (2 / (1 + math.exp(-2.5)) - 1) / MAX_TP
    assert score_file(det(45), LAY, STANDARD, 0.5).raw == pytest.approx(mid)


def test_only_earliest_detection_counts() -> None:
    r = score_file(det(40, 42, 45, 49), LAY, STANDARD, 0.5)
    assert r.raw == pytest.approx(1.0) and r.tp == 1 and r.fp == 0


def test_false_positive_before_any_window_costs_full_weight() -> None:
    r = score_file(det(20, 40), LAY, STANDARD, 0.5)
    assert r.raw == pytest.approx(1.0 - 0.11) and r.fp == 1
    assert normalised_score(r.raw, [LAY], STANDARD) == pytest.approx(100 * 1.89 / 2)
    assert score_file(det(20, 40), LAY, REWARD_LOW_FP, 0.5).raw == pytest.approx(1.0 - 0.22)


def test_false_positive_after_window_is_sigmoid_weighted() -> None:
    # prev_right = 49, prev_width = 10 -> p = (i - 49) / 9
    r58 = score_file(det(58), LAY, STANDARD, 0.5).raw  # p = 1
    assert r58 == pytest.approx(-1.0 + 0.11 * (2 / (1 + math.exp(5)) - 1))
    r50 = score_file(det(50), LAY, STANDARD, 0.5).raw  # p = 1/9: almost free
    assert r50 == pytest.approx(-1.0 + 0.11 * (2 / (1 + math.exp(5 / 9)) - 1))
    assert score_file(det(80), LAY, STANDARD, 0.5).raw == pytest.approx(-1.11)  # p > 3


def test_probation_rows_are_not_scored() -> None:
    r = score_file(det(3, 10, 14), LAY, STANDARD, 0.5)
    assert r.raw == -1.0 and r.fp == 0
    assert score_file(det(15), LAY, STANDARD, 0.5).fp == 1


def test_window_inside_probation_is_dropped() -> None:
    lay = FileLayout.build(n=100, windows=[(2, 8), (40, 49)])
    assert lay.windows == ((40, 49),)
    assert null_score([lay], STANDARD) == -1.0


def test_threshold_is_inclusive() -> None:
    s = np.zeros(100)
    s[40] = 0.7
    assert score_file(s, LAY, STANDARD, 0.7).tp == 1
    assert score_file(s, LAY, STANDARD, 0.7000001).tp == 0


def test_sweep_picks_best_threshold_by_hand() -> None:
    # 0.9: FP at 20; 0.5: TP at 45; 0.3: FP at 70 (p = 21/9 -> ~ -1)
    s = np.zeros(100)
    s[20], s[45], s[70] = 0.9, 0.5, 0.3
    mid = (2 / (1 + math.exp(-2.5)) - 1) / MAX_TP
    res = sweep_corpus([(s, LAY)], STANDARD)
    assert res.threshold == 0.5
    assert res.raw == pytest.approx(mid - 0.11)
    # a detector whose only detections are false positives is best never firing
    fp_only = np.zeros(100)
    fp_only[20] = 0.9
    res = sweep_corpus([(fp_only, LAY)], STANDARD)
    assert res.threshold == math.inf and res.raw == -1.0


def test_sweep_matches_brute_force_on_random_corpus() -> None:
    rng = np.random.default_rng(0)
    lays = [
        FileLayout.build(300, [(80, 109), (200, 229)]),
        FileLayout.build(200, [(100, 139)]),
        FileLayout.build(150, []),
    ]
    items = [(np.round(rng.random(lay.n), 2), lay) for lay in lays]
    for prof in (STANDARD, REWARD_LOW_FP, REWARD_LOW_FN):
        best = sweep_corpus(items, prof)
        cands = [*sorted({float(v) for s, _ in items for v in s}), 2.0]
        brute = max(sum(score_file(s, lay, prof, t).raw for s, lay in items) for t in cands)
        assert best.raw == pytest.approx(brute)
        at = sum(score_file(s, lay, prof, best.threshold).raw for s, lay in items)
        assert at == pytest.approx(best.raw)


def test_window_indices_from_timestamps() -> None:
    ts = [0.0, 300.0, 600.0, 900.0, 1200.0]
    assert window_indices(ts, [(300.0, 900.0)]) == [(1, 3)]
    assert window_indices(ts, [(301.0, 899.0)]) == [(2, 2)]


def test_layout_rejects_bad_windows() -> None:
    with pytest.raises(ValueError):
        FileLayout.build(100, [(40, 60), (50, 70)])
    with pytest.raises(ValueError):
        FileLayout.build(100, [(90, 120)])


# -- cross-validation (benchmarks/crossval.py) ------------------------------------------------


def test_folds_partition_the_files() -> None:
    from benchmarks.crossval import category_folds, spread_folds

    names = [f"{c}/f{i}" for c in "abcd" for i in range(3)]
    folds = spread_folds(names, 5)
    assert sorted(i for f in folds for i in f) == list(range(12))
    # dealt round robin in name order: a category's files land in different folds
    assert all(len({names[i].split("/")[0] for i in f}) == len(f) for f in folds)
    assert category_folds(names) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    with pytest.raises(ValueError):
        spread_folds(names, 1)


def test_cross_validation_never_chooses_on_the_held_out_file() -> None:
    """Candidate "a" detects every window of files 0-2 and fires falsely on file 3; "b" is
    the opposite. Held out, file 3 must get "a" (chosen on files 0-2) and pay for it."""
    from benchmarks.crossval import nab_cross_validate

    lay = FileLayout.build(n=100, windows=[(40, 49)])
    good, bad = det(40), det(20)
    a = [good, good, good, bad]
    b = [bad, bad, bad, good]
    res = nab_cross_validate({"a": a, "b": b}, [lay] * 4, [[0], [1], [2], [3]])
    assert [f.chosen for f in res.folds] == ["a", "a", "a", "a"]
    assert res.folds[3].test_score < 0 < res.folds[0].test_score
    raw = 3 * 1.0 + (-1.0 - 0.11)  # three earliest detections, one miss plus one early FP
    assert res.score == pytest.approx(normalised_score(raw, [lay] * 4, STANDARD))
    # "a" is also the best on all four files, so here the in-sample figure is the same
    assert res.in_sample_choice == "a" and res.in_sample == pytest.approx(res.score)
    # fixed thresholds are used as given (nothing detected at 2.0: the null score, 0)
    fixed = nab_cross_validate({"a": a}, [lay] * 4, [[0, 1], [2, 3]], thresholds={"a": 2.0})
    assert fixed.score == pytest.approx(0.0) and fixed.folds[0].threshold == 2.0


def test_leave_one_system_out() -> None:
    from benchmarks.crossval import loso_cross_validate

    acc = {
        "x": {"s1": 1.0, "s2": 1.0, "s3": 0.2},
        "y": {"s1": 0.5, "s2": 0.5, "s3": 1.0},
    }
    res = loso_cross_validate(acc)
    # s1 held out: y wins on s2+s3 (0.75 > 0.6); s2 likewise; s3 held out: x (1.0 > 0.5)
    assert [f.chosen for f in res.folds] == ["y", "y", "x"]
    assert [f.test_score for f in res.folds] == [0.5, 0.5, 0.2]
    assert res.score == pytest.approx(0.4)
    assert res.in_sample_choice == "x" and res.in_sample == pytest.approx(2.2 / 3.0)
