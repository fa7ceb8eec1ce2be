"""Temperature scaling (Guo et al. 2017) and calibration measures for the ``derm`` classifier.

A single temperature ``T > 0`` divides the logits; it is fitted on the validation split by
minimising the negative log-likelihood, which leaves the arg-max (and so accuracy) unchanged and
only makes the probabilities honest.  The exported model outputs ``softmax(logits / T)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

#: Search range of log(T): T in [0.05, 20].
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def _check_logits_labels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"`logits` must have shape (N, C) with N >= 1 and C >= 2, {z.shape} is given.")
    if not np.isfinite(z).all():
        raise ValueError("`logits` must be finite, NaN or infinity is given.")
    if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"`labels` must be {z.shape[0]} integers in 0..{z.shape[1] - 1}, shape {y.shape} "
                         f"dtype {y.dtype} is given.")
    return z, y.astype(np.int64)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive, {temperature!r} is given.")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z, y = _check_logits_labels(logits, labels)
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive, {temperature!r} is given.")
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits, labels, *, iterations: int = 60) -> float:
    """The temperature minimising :func:`nll` on (validation) ``logits`` and ``labels``.

    Golden-section search over log(T) in [log 0.05, log 20]; NLL is convex in 1/T, so the search
    is reliable and deterministic.
    """
    z, y = _check_logits_labels(logits, labels)
    lo, hi = _LOG_T_RANGE
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(z, y, math.exp(a)), nll(z, y, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(z, y, math.exp(b))
    return float(math.exp(0.5 * (lo + hi)))


def reliability_bins(probabilities, labels, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label confidence histogram: per equal-width bin, mean confidence, accuracy and count."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"`probabilities` (N, C) and `labels` (N,) must agree, {p.shape} and {y.shape} are given.")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, {n_bins!r} is given.")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    safe = np.maximum(count, 1.0)
    return {"confidence": np.bincount(idx, conf, n_bins) / safe, "accuracy": np.bincount(idx, correct, n_bins) / safe,
            "count": count, "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def expected_calibration_error(probabilities, labels, n_bins: int = 15) -> float:
    """Top-label ECE: count-weighted mean |accuracy - confidence| over equal-width bins."""
    bins = reliability_bins(probabilities, labels, n_bins)
    total = bins["count"].sum()
    return float((bins["count"] * np.abs(bins["accuracy"] - bins["confidence"])).sum() / total) if total else 0.0


class CalibratedClassifier(nn.Module):
    """Wraps a logit network: ``forward(x) = softmax(network(x) / T)``, the calibrated probabilities.

    Parameters
    ----------
    network
        Module mapping (N, 3, S, S) images to (N, C) logits.
    temperature
        Fitted temperature (positive), stored as a buffer so it travels with the state dict.
    """

    def __init__(self, network: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"`temperature` must be a positive finite number, {temperature!r} is given.")
        self.network = network
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(x) / self.temperature, dim=1)
