"""serving.inference.shadow: the shadow version against the current one over a deployment's shadow log."""
from __future__ import annotations

import pytest

from serving.inference.shadow import compare


def entry(active: list, shadow: list, versions=("1.1.0", "1.2.0")) -> dict:
    return {"active_version": versions[0], "version": versions[1], "batch_size": len(active),
            "active": [{"probability": a} for a in active], "replies": [{"probability": s} for s in shadow]}


def test_agreement_positive_rates_and_score_differences_at_each_versions_threshold():
    log = [entry([[0.9], [0.2]], [[0.8], [0.45]]),
           entry([[0.55], [0.1]], [[0.35], [0.1]]),
           entry([[0.9]], [[0.1]], versions=("1.0.0", "1.2.0"))]  # an earlier pair: not counted
    report = compare(log, "1.1.0", "1.2.0", 0.5, 0.4)
    assert report["items"] == 4 and report["not_compared"] == 0
    assert report["agreement"] == 0.5  # 0.2 -> 0.45 and 0.55 -> 0.35 change the call
    assert report["positive_rate"] == {"version": 0.5, "shadow_version": 0.5}
    assert report["score_difference"] == {"mean": pytest.approx(-0.0125), "mean_abs": 0.1375, "max_abs": 0.25}


def test_classes_are_compared_by_the_highest_and_a_batch_item_by_its_samples():
    classes = compare([entry([[0.7, 0.2, 0.1]], [[0.3, 0.6, 0.1]]), entry([[0.1, 0.8, 0.1]], [[0.2, 0.7, 0.1]])],
                      "1.1.0", "1.2.0", None, None)
    assert classes["items"] == 2 and classes["agreement"] == 0.5 and classes["score_difference"] is None
    windows = compare([entry([[[0.9], [0.1], [0.6]]], [[[0.8], [0.2], [0.3]]])], "1.1.0", "1.2.0", 0.5, 0.5)
    assert windows["items"] == 3 and windows["agreement"] == pytest.approx(2 / 3, abs=1e-4)


def test_no_shadow_or_replies_without_scores_give_no_figures():
    assert compare([], "1.1.0", None, 0.5, None)["agreement"] is None
    report = compare([{"active_version": "1.1.0", "version": "1.2.0", "active": [{"label": 1}], "replies": [{}]}],
                     "1.1.0", "1.2.0", 0.5, 0.5)
    assert report["items"] == 0 and report["not_compared"] == 1 and report["agreement"] is None
