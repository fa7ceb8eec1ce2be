"""Metrics against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from training import metrics as M


def test_rank_auc_handles_ties_and_extremes():
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert M.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), rng.random(200)
    pairs = np.mean([(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]])
    assert M.roc_auc(y, s) == pytest.approx(pairs)
    with pytest.raises(ValueError, match="both classes"):
        M.roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        M.roc_auc([0, 1], [0.2])


def test_bootstrap_ci_is_seeded_and_brackets_the_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    s = y * 0.8 + rng.random(120)
    lo, hi = M.bootstrap_auc_ci(y, s, n_resamples=200, seed=3)
    assert (lo, hi) == M.bootstrap_auc_ci(y, s, n_resamples=200, seed=3)
    assert lo < M.roc_auc(y, s) < hi
    assert M.bootstrap_auc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_resamples=50) == (1.0, 1.0)


def test_sensitivity_specificity_and_youden():
    assert M.sensitivity_specificity([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1], 0.5) == (0.5, 0.5)
    labels, scores = np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    t = M.youden_threshold(labels, scores)
    assert t == pytest.approx(0.5)  # midway between 0.3 and 0.7
    assert M.sensitivity_specificity(labels, scores, t) == (1.0, 1.0)


def test_roc_curve_points():
    fpr, tpr, thr = M.roc_curve([0, 1, 0, 1], [0.1, 0.4, 0.35, 0.8])
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert thr[0] == np.inf


def test_ece_and_reliability_by_hand():
    labels, probs = [0, 0, 1, 1], [0.1, 0.3, 0.35, 0.9]
    # bins 1, 3, 3, 9: |0-.1|*1 + |.5-.325|*2 + |1-.9|*1 = 0.55 over 4 cases
    assert M.expected_calibration_error(labels, probs) == pytest.approx(0.1375)
    curve = M.reliability_curve(labels, probs)
    assert curve["count"] == [0, 1, 0, 2, 0, 0, 0, 0, 0, 1]
    assert curve["confidence"][3] == pytest.approx(0.325) and curve["frequency"][3] == 0.5
    assert curve["confidence"][0] is None
    assert M.expected_calibration_error([1], [1.0]) == 0.0  # 1.0 falls in the last bin
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.expected_calibration_error([1], [1.5])


def test_balanced_accuracy_and_per_class_auc():
    assert M.balanced_accuracy([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 2]) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    out = M.per_class_auc([0, 1, 2, 1], probs, ["a", "b", "c"])
    assert out["a"] == 1.0  # 0.8 above 0.2, 0.3, 0.5
    assert out["b"] == 1.0  # 0.7, 0.4 above 0.1, 0.3
    assert out["c"] == 1.0
    assert M.per_class_auc([0, 0], np.array([[0.9, 0.1], [0.8, 0.2]])) == {"0": None, "1": None}


def test_froc_by_hand():
    candidates = [
        [((1, 1, 1), 0.9), ((0, 0, 2), 0.8), ((20, 20, 20), 0.7), ((50, 50, 52), 0.4)],
        [((30, 30, 30), 0.95), ((10, 10, 11), 0.5)],
    ]
    truths = [[((0, 0, 0), 10.0), ((50, 50, 50), 6.0)], [((10, 10, 10), 4.0)]]
    out = M.froc(candidates, truths)
    # sorted events: .95 FP, .9 TP, (.8 second hit: ignored), .7 FP, .5 TP, .4 TP; 2 scans, 3 lesions
    assert out["curve_fp_per_scan"] == [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert out["curve_sensitivity"] == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert out["sensitivity"] == pytest.approx([0, 0, 1 / 3, 1, 1, 1, 1])
    assert out["cpm"] == pytest.approx((1 / 3 + 4) / 7)
    assert M.froc([[]], [[((0, 0), 2.0)]])["cpm"] == 0.0
    with pytest.raises(ValueError, match="same scans"):
        M.froc([[]], [])


def test_froc_accepts_scans_without_lesions():
    from training.metrics import froc

    result = froc(candidates=[[((0.0, 0.0, 0.0), 0.9)], [((5.0, 5.0, 5.0), 0.8)]],
                  truths=[[((0.0, 0.0, 0.0), 4.0)], []])
    assert result["sensitivity"][-1] == 1.0
