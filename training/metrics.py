"""Evaluation metrics shared by every task: ROC, calibration, multi-class and FROC.

All functions take plain numpy-compatible arrays and return floats or small dicts of plain
Python values, so results can go straight into ``metrics.json`` and the registry metadata.
Scores are probabilities (or any monotone score for the rank metrics); labels are 0/1 for binary
metrics and class indices for the multi-class ones.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: False positives per scan at which FROC sensitivity is read (the LUNA16 challenge points).
FROC_FP_PER_SCAN = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _binary(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"`labels` and `scores` must have the same length, {y.size} and {s.size} are given.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"`labels` must be 0 or 1, values {np.unique(y)[:5].tolist()} are given.")
    if not np.isfinite(s).all():
        raise ValueError("`scores` must be finite, NaN or infinity is given.")
    return y.astype(bool), s


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) statistic; ties count half."""
    y, s = _binary(labels, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, {n_pos} positives and {n_neg} negatives are given.")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # mean 1-based rank per tie group
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc_ci(labels: Any, scores: Any, *, n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC (cases resampled with replacement).

    Resamples that miss a class are drawn again; the same ``seed`` gives the same interval.
    """
    y, s = _binary(labels, scores)
    if n_resamples < 10:
        raise ValueError(f"`n_resamples` must be at least 10, {n_resamples} is given.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be within (0, 1), {level} is given.")
    roc_auc(y, s)  # fail fast on a single class
    rng = np.random.default_rng(seed)
    values = []
    while len(values) < n_resamples:
        idx = rng.integers(0, y.size, y.size)
        if y[idx].all() or not y[idx].any():
            continue
        values.append(roc_auc(y[idx], s[idx]))
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds (``score >= t`` positive), from (0, 0)."""
    y, s = _binary(labels, scores)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    tpr = np.array([(s[y] >= t).sum() for t in thresholds]) / max(int(y.sum()), 1)
    fpr = np.array([(s[~y] >= t).sum() for t in thresholds]) / max(int((~y).sum()), 1)
    return fpr, tpr, thresholds


def sensitivity_specificity(labels: Any, scores: Any, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``score >= threshold`` calls a case positive."""
    y, s = _binary(labels, scores)
    called = s >= threshold
    return float((called & y).sum() / max(y.sum(), 1)), float((~called & ~y).sum() / max((~y).sum(), 1))


def youden_threshold(labels: Any, scores: Any) -> float:
    """Threshold maximising sensitivity + specificity - 1, midway between adjacent scores.

    Clipped to [0.001, 0.999] so that it is a valid operating point for probabilities.
    """
    y, s = _binary(labels, scores)
    u = np.unique(s)
    candidates = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1e-6]])
    best = max(candidates, key=lambda t: sum(sensitivity_specificity(y, s, t)))
    return float(np.clip(best, 1e-3, 1.0 - 1e-3))


def reliability_curve(labels: Any, probabilities: Any, n_bins: int = 10) -> dict[str, list]:
    """Per equal-width probability bin: mean predicted probability, observed frequency and count.

    Bin ``k`` holds ``k/n <= p < (k+1)/n`` (the last bin includes 1.0); empty bins give ``None``.
    """
    y, p = _binary(labels, probabilities)
    if n_bins < 1:
        raise ValueError(f"`n_bins` must be positive, {n_bins} is given.")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"`probabilities` must lie in [0, 1], range {p.min():.3g}..{p.max():.3g} is given.")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out: dict[str, list] = {"bin_edges": np.linspace(0, 1, n_bins + 1).tolist(), "confidence": [],
                            "frequency": [], "count": []}
    for k in range(n_bins):
        inside = bins == k
        n = int(inside.sum())
        out["count"].append(n)
        out["confidence"].append(float(p[inside].mean()) if n else None)
        out["frequency"].append(float(y[inside].mean()) if n else None)
    return out


def expected_calibration_error(labels: Any, probabilities: Any, n_bins: int = 10) -> float:
    """ECE: count-weighted mean |observed frequency - mean probability| over equal-width bins."""
    curve = reliability_curve(labels, probabilities, n_bins)
    total = sum(curve["count"])
    return float(sum(n * abs(f - c) for n, f, c in zip(curve["count"], curve["frequency"], curve["confidence"])
                     if n) / total)


def balanced_accuracy(labels: Any, predicted: Any, n_classes: int | None = None) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    y, yhat = np.asarray(labels).ravel().astype(int), np.asarray(predicted).ravel().astype(int)
    if y.shape != yhat.shape or y.size == 0:
        raise ValueError(f"`labels` and `predicted` must be non-empty and equally long, {y.size} and {yhat.size} "
                         "are given.")
    classes = np.unique(y) if n_classes is None else [c for c in range(n_classes) if (y == c).any()]
    return float(np.mean([(yhat[y == c] == c).mean() for c in classes]))


def per_class_auc(labels: Any, probabilities: Any, class_names: Sequence[str] | None = None) -> dict[str, float | None]:
    """One-vs-rest AUC of each column of ``probabilities`` (N, C); ``None`` where a class is absent or universal."""
    y = np.asarray(labels).ravel().astype(int)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"`probabilities` must be (N, C) with N = {y.size} labels, shape {p.shape} is given.")
    names = list(class_names) if class_names is not None else [str(c) for c in range(p.shape[1])]
    if len(names) != p.shape[1]:
        raise ValueError(f"`class_names` must name {p.shape[1]} classes, {len(names)} are given.")
    out: dict[str, float | None] = {}
    for c, name in enumerate(names):
        positive = y == c
        out[name] = roc_auc(positive.astype(int), p[:, c]) if 0 < positive.sum() < y.size else None
    return out


def froc(candidates: Sequence[Sequence[tuple[Sequence[float], float]]],
         truths: Sequence[Sequence[tuple[Sequence[float], float]]],
         fp_per_scan: Sequence[float] = FROC_FP_PER_SCAN) -> dict[str, Any]:
    """Free-response ROC over scans, as in the LUNA16 challenge.

    Parameters
    ----------
    candidates
        Per scan, the detections as ``(centre, probability)``; centres in any unit (e.g. mm).
    truths
        Per scan, the lesions as ``(centre, diameter)`` in the same unit.  A candidate hits a lesion
        when its centre lies within ``diameter / 2`` of the lesion centre.
    fp_per_scan
        Average false positives per scan at which sensitivity is read.

    Returns
    -------
    dict
        ``sensitivity`` (one value per ``fp_per_scan``), ``fp_per_scan``, ``cpm`` (their mean),
        and the full curve ``curve_fp_per_scan`` / ``curve_sensitivity``.  A lesion counts once, at
        the highest-scoring candidate that hits it; further hits on it are neither TP nor FP.
    """
    if len(candidates) != len(truths):
        raise ValueError(f"`candidates` and `truths` must list the same scans, {len(candidates)} and "
                         f"{len(truths)} are given.")
    n_scans = len(truths)
    n_lesions = sum(len(t) for t in truths)
    if n_scans == 0 or n_lesions == 0:
        raise ValueError(f"FROC needs at least one scan and one lesion, {n_scans} scans and {n_lesions} lesions "
                         "are given.")
    events: list[tuple[float, int]] = []  # (score, 1 = true positive / 0 = false positive)
    for scan_candidates, scan_truths in zip(candidates, truths):
        centres = np.array([c for c, _ in scan_truths], dtype=np.float64).reshape(len(scan_truths), -1) \
            if len(scan_truths) else np.zeros((0, 3))
        radii = np.array([d / 2.0 for _, d in scan_truths], dtype=np.float64)
        best: dict[int, float] = {}
        for centre, score in scan_candidates:
            if len(scan_truths) == 0:
                events.append((float(score), 0))
                continue
            dist = np.linalg.norm(centres - np.asarray(centre, dtype=np.float64)[None], axis=1)
            hit = np.flatnonzero(dist <= radii)
            if hit.size == 0:
                events.append((float(score), 0))
            for k in hit:
                best[int(k)] = max(best.get(int(k), -math.inf), float(score))
        events.extend((score, 1) for score in best.values())
    events.sort(key=lambda e: -e[0])
    scores = np.array([e[0] for e in events])
    is_tp = np.array([e[1] for e in events], dtype=bool)
    # Operating points: after the last event of each distinct score.
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if events else np.array([], dtype=int)
    fps = np.r_[0.0, np.cumsum(~is_tp)[last] / n_scans] if events else np.zeros(1)
    sens = np.r_[0.0, np.cumsum(is_tp)[last] / n_lesions] if events else np.zeros(1)
    at = [float(sens[fps <= f].max()) for f in fp_per_scan]  # best sensitivity within the FP budget
    return {"fp_per_scan": [float(f) for f in fp_per_scan], "sensitivity": at, "cpm": float(np.mean(at)),
            "curve_fp_per_scan": fps.tolist(), "curve_sensitivity": sens.tolist()}


def detection_counts(candidates: Sequence[Sequence[tuple[Sequence[float], float]]],
                     truths: Sequence[Sequence[tuple[Sequence[float], float]]]) -> dict[str, Any]:
    """Sensitivity and false positives per scan of detections already cut at an operating point.

    Same inputs and hit rule as :func:`froc` (a candidate hits a lesion when its centre lies within
    ``diameter / 2`` of the lesion centre); scans without lesions count (every candidate there is a
    false positive), so this also measures lesion-free sets.

    Returns
    -------
    dict
        ``fp_per_scan``, ``sensitivity`` (``None`` without lesions), ``n_scans``, ``n_lesions``,
        ``n_false_positives``.
    """
    if len(candidates) != len(truths):
        raise ValueError(f"`candidates` and `truths` must list the same scans, {len(candidates)} and "
                         f"{len(truths)} are given.")
    if len(truths) == 0:
        raise ValueError("`truths` must list at least one scan, 0 are given.")
    found = fps = n_lesions = 0
    for scan_candidates, scan_truths in zip(candidates, truths):
        n_lesions += len(scan_truths)
        hit = np.zeros(len(scan_truths), dtype=bool)
        for centre, _ in scan_candidates:
            dist = np.array([np.linalg.norm(np.subtract(centre, c)) for c, _ in scan_truths])
            inside = dist <= np.array([d / 2.0 for _, d in scan_truths]) if len(scan_truths) else np.zeros(0, bool)
            fps += int(not inside.any())
            hit |= inside
        found += int(hit.sum())
    return {"fp_per_scan": fps / len(truths), "sensitivity": found / n_lesions if n_lesions else None,
            "n_scans": len(truths), "n_lesions": n_lesions, "n_false_positives": fps}
