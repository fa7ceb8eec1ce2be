"""The shadow version against the current one on live traffic: agreement and score differences.

A deployment with a ``shadow_version`` runs it on every batch and keeps both replies' small
arrays in its shadow log (:class:`serving.inference.deployments.ModelServer`, the last
:data:`serving.inference.deployments.SHADOW_HISTORY` batches of the replica).  :func:`compare`
reads that log:

* an item's call is ``probability >= threshold`` (each version's own registered threshold) for a
  one-finding model, the highest class for a multi-class one;
* **agreement** = items where both versions make the same call / items compared;
* **score difference** = shadow probability - current probability of the finding (mean, mean
  absolute, largest absolute), for a one-finding model;
* **positive rate** of each version, for a one-finding model.

Only log entries of the current pair of versions count.  The figures are per replica (the one
that answers); ``GET /v1/models/<name>/shadow`` (:mod:`serving.http.shadow`) serves them.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

SCORE_KEY = "probability"


def _calls(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    if scores.shape[1] == 1:
        return scores[:, 0] >= (threshold if threshold is not None else 0.5)
    return scores.argmax(axis=1)


def _pairs(entries: Iterable[dict], active_version: str, shadow_version: str) -> tuple[list, list, int]:
    """Score rows (one per sample) of both versions, and how many items could not be compared."""
    active, shadow, skipped = [], [], 0
    for entry in entries:
        if (entry.get("active_version"), entry.get("version")) != (active_version, shadow_version):
            continue
        for mine, theirs in zip(entry.get("active", []), entry.get("replies", [])):
            a, s = mine.get(SCORE_KEY), theirs.get(SCORE_KEY)
            if a is None or s is None or np.size(a) != np.size(s) or np.size(a) == 0:
                skipped += 1
                continue
            active += list(_rows(a))
            shadow += list(_rows(s))
    return active, shadow, skipped


def _rows(scores: Any) -> np.ndarray:
    """An item's scores as (samples, scores): ``(1,)`` or ``(classes,)`` is one sample, ``(k, n)`` k."""
    array = np.asarray(scores, dtype=np.float64)
    return array.reshape(1, -1) if array.ndim <= 1 else array.reshape(array.shape[0], -1)


def compare(entries: Iterable[dict], active_version: str, shadow_version: str | None,
            active_threshold: float | None, shadow_threshold: float | None) -> dict[str, Any]:
    """The figures of the module docstring over the shadow log ``entries``."""
    report: dict[str, Any] = {"version": active_version, "shadow_version": shadow_version, "items": 0,
                              "not_compared": 0, "agreement": None, "positive_rate": None,
                              "score_difference": None}
    if shadow_version is None:
        return report
    active, shadow, skipped = _pairs(entries, active_version, shadow_version)
    report["not_compared"] = skipped
    widths = {len(a) for a in active}
    if not active or len(widths) != 1:
        report["not_compared"] += len(active)
        return report
    a, s = np.stack(active), np.stack(shadow)
    calls_a, calls_s = _calls(a, active_threshold), _calls(s, shadow_threshold)
    report.update(items=len(a), agreement=round(float(np.mean(calls_a == calls_s)), 4),
                  thresholds={"version": active_threshold, "shadow_version": shadow_threshold})
    if a.shape[1] == 1:
        diff = s[:, 0] - a[:, 0]
        report["positive_rate"] = {"version": round(float(np.mean(calls_a)), 4),
                                   "shadow_version": round(float(np.mean(calls_s)), 4)}
        report["score_difference"] = {"mean": round(float(diff.mean()), 4),
                                      "mean_abs": round(float(np.abs(diff).mean()), 4),
                                      "max_abs": round(float(np.abs(diff).max()), 4)}
    return report
