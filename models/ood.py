"""What a model's inputs looked like in training, and how far a new input lies from them.

An image model version may carry ``ood.json`` beside its weights (``<registry>/<name>/<version>/``),
written by :mod:`training.ood` from the generated training data.  It describes the penultimate-layer
features of the network (the input of its final classifier layer, exported as the extra ONNX output
``features``) by one Gaussian per class with a shared covariance, and scores an input by the
Mahalanobis distance of its features to the nearest class mean (Lee et al., "A simple unified
framework for detecting out-of-distribution samples and adversarial attacks", NeurIPS 2018; a model
folder may name another, pooled, layer in ``ood_features.json``, :func:`feature_layer`: that paper
finds earlier layers often separate better, and for ``derm`` they do)::

    score(f) = min_c sqrt((f - mu_c)^T Sigma^-1 (f - mu_c))

The covariance is shrunk towards a scaled identity (Ledoit & Wolf, J. Multivariate Anal. 88, 2004)
so that directions the training set barely spans stay finite.  ``threshold`` is the
``1 - false_flag_rate`` quantile of the scores of a held-out generated split: an input scoring above
it is *outside the model's training distribution*, and its positive call is withheld
(:attr:`models.finding.Finding.positive`).

``unit`` says what one score is about: ``image`` for the image classifiers; ``patch`` for a volume
model scored patch by patch (nodule 1.0.0: each patch the sliding window runs inside the lung
search region; the volume's score is the largest patch score, ``aggregate: "max"`` in its
``ood.json``, and a volume where no patch runs is outside).

Layout of ``ood.json`` (the keys read here; training adds how it was computed: ``method``, ``fit``,
``calibration``, ``heldout`` ...)::

    {"statistic": "class_mahalanobis", "unit": "image" | "patch", "feature_output": "features",
     "dim": d, "classes": [names...], "threshold": t, "false_flag_rate": 0.05, "arrays": "ood.npz"}

and beside it ``ood.npz`` (:data:`OOD_ARRAYS`) with the float32 arrays ``means`` ``(C, d)`` and
``whitening`` ``(d, d)`` (``L`` with ``L L^T = Sigma^-1``): binary, as a 640-feature model's
whitening matrix is 3 MB as JSON numbers.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The file beside a version's weights, and the arrays it names.
OOD_FILE = "ood.json"
OOD_ARRAYS = "ood.npz"
#: The file in a model folder naming another layer to score than the classifier's input.
LAYER_FILE = "ood_features.json"
#: The ONNX output that carries the penultimate-layer features.
FEATURE_OUTPUT = "features"
#: The statistic this module scores.
CLASS_MAHALANOBIS = "class_mahalanobis"
#: What one score is about: one input image, or one patch of a volume.
UNITS = ("image", "patch")

_REQUIRED = ("statistic", "unit", "feature_output", "dim", "classes", "means", "whitening", "threshold",
             "false_flag_rate")
_ARRAYS = ("means", "whitening")


@dataclass(frozen=True)
class FeatureStatistic:
    """The class-conditional Gaussian statistic of one model version (see the module docstring).

    Raises
    ------
    ValueError
        Naming the field: an unknown statistic or unit, means or whitening of the wrong shape, a
        threshold that is not a positive finite number, a false-flag rate outside (0, 1).
    """

    means: np.ndarray
    whitening: np.ndarray
    threshold: float
    false_flag_rate: float
    classes: tuple[str, ...] = ()
    unit: str = "image"
    feature_output: str = FEATURE_OUTPUT
    statistic: str = CLASS_MAHALANOBIS
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "means", np.atleast_2d(np.asarray(self.means, dtype=np.float64)))
        set_(self, "whitening", np.asarray(self.whitening, dtype=np.float64))
        if self.statistic != CLASS_MAHALANOBIS:
            raise ValueError(f"`statistic` must be {CLASS_MAHALANOBIS!r}, {self.statistic!r} is given.")
        if self.unit not in UNITS:
            raise ValueError(f"`unit` must be one of {list(UNITS)}, {self.unit!r} is given.")
        dim = self.means.shape[1]
        if self.whitening.shape != (dim, dim):
            raise ValueError(f"`whitening` must be ({dim}, {dim}) for {dim} features, "
                             f"{self.whitening.shape} is given.")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"`threshold` must be a positive finite number, {self.threshold!r} is given.")
        if not 0.0 < self.false_flag_rate < 1.0:
            raise ValueError(f"`false_flag_rate` must be within (0, 1), {self.false_flag_rate!r} is given.")
        if self.classes and len(self.classes) != len(self.means):
            raise ValueError(f"`classes` must name the {len(self.means)} means, {list(self.classes)} is given.")

    @property
    def dim(self) -> int:
        """Number of features."""
        return int(self.means.shape[1])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distance of each row of ``features`` ``(N, d)`` to the nearest class mean, ``(N,)``;
        a non-finite feature gives an infinite score."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"`features` must be (N, {self.dim}), {f.shape} is given.")
        z = (f[:, None, :] - self.means[None]) @ self.whitening  # (N, C, d)
        distance = np.sqrt(np.min(np.einsum("ncd,ncd->nc", z, z), axis=1))
        return np.where(np.isfinite(f).all(axis=1), distance, np.inf)

    def verdict(self, score: float) -> dict[str, Any]:
        """``{"score", "threshold", "outside"}`` of one score (JSON numbers; infinity as None), the
        form :meth:`models.finding.OutOfDistribution.from_dict` reads."""
        score = float(score)
        return {"score": score if math.isfinite(score) else None, "threshold": float(self.threshold),
                "outside": not score <= self.threshold}

    def to_dict(self) -> dict[str, Any]:
        """The ``ood.json`` object (the fit/calibration/held-out records of ``raw`` kept), without
        the arrays (:meth:`arrays`)."""
        raw = {k: v for k, v in self.raw.items() if k not in _ARRAYS}
        return {**raw, "statistic": self.statistic, "unit": self.unit, "feature_output": self.feature_output,
                "dim": self.dim, "classes": list(self.classes), "threshold": float(self.threshold),
                "false_flag_rate": float(self.false_flag_rate), "arrays": OOD_ARRAYS}

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``ood.npz`` arrays, float32."""
        return {"means": self.means.astype(np.float32), "whitening": self.whitening.astype(np.float32)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "the OOD statistic") -> FeatureStatistic:
        """Read an ``ood.json`` object; :class:`ValueError` names ``where`` and the bad key."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a JSON object, {type(data).__name__} is given.")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"{where} lacks the key(s) {', '.join(missing)}.")
        try:
            statistic = cls(means=data["means"], whitening=data["whitening"], threshold=float(data["threshold"]),
                            false_flag_rate=float(data["false_flag_rate"]), classes=tuple(data["classes"]),
                            unit=data["unit"], feature_output=str(data["feature_output"]),
                            statistic=data["statistic"], raw=data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        if statistic.dim != int(data["dim"]):
            raise ValueError(f"{where}: `dim` is {data['dim']}, the means have {statistic.dim} features.")
        return statistic


def feature_layer(model_folder: Path) -> dict[str, str] | None:
    """The layer a model folder asks to be scored (``<registry>/<name>/ood_features.json``:
    ``{"onnx_tensor": ONNX tensor name, "module": the torch module whose output it is, "name": what
    it is, "why": why it was chosen}``),
    or None: the input of the final classifier layer (the penultimate-layer features).

    Raises
    ------
    ValueError
        The file is not valid JSON or lacks ``onnx_tensor`` or ``module`` (naming the file).
    """
    path = Path(model_folder) / LAYER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}.") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data[k] for k in ("onnx_tensor", "module")):
        raise ValueError(f"{path} must name `onnx_tensor` and `module`, {data!r} is given.")
    return {k: str(v) for k, v in data.items()}


def write_statistic(version_folder: Path, statistic: FeatureStatistic) -> Path:
    """Write ``ood.npz`` then ``ood.json`` (each whole or not at all) into ``version_folder``; the
    arrays are stored as float32, so fit with float32-exact arrays (:func:`float32_exact`)."""
    folder = Path(version_folder)
    arrays = folder / OOD_ARRAYS
    partial = folder / f".{OOD_ARRAYS}.partial"
    with open(partial, "wb") as fh:
        np.savez_compressed(fh, **statistic.arrays())
    os.replace(partial, arrays)
    path, partial = folder / OOD_FILE, folder / f".{OOD_FILE}.partial"
    partial.write_text(json.dumps(statistic.to_dict(), indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def float32_exact(array: np.ndarray) -> np.ndarray:
    """``array`` rounded to float32 and back: the values :func:`write_statistic` stores."""
    return np.asarray(array, dtype=np.float32).astype(np.float64)


def load_statistic(version_folder: Path) -> FeatureStatistic | None:
    """The statistic in ``<version_folder>/ood.json`` (and the ``ood.npz`` it names), or None when
    the version carries none.

    Raises
    ------
    ValueError
        The file is not valid JSON, its arrays are missing or not a valid statistic (naming the file).
    """
    path = Path(version_folder) / OOD_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}.") from None
    if isinstance(data, dict) and not all(k in data for k in _ARRAYS):
        arrays = path.parent / str(data.get("arrays", OOD_ARRAYS))
        if arrays.parent != path.parent:
            raise ValueError(f"{path}: `arrays` must name a file beside it, {data.get('arrays')!r} is given.")
        try:
            with np.load(arrays) as npz:
                data = {**data, **{k: npz[k] for k in _ARRAYS}}
        except FileNotFoundError:
            raise ValueError(f"{path} names the arrays {arrays.name}, which is missing.") from None
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{path}: its arrays {arrays.name} are unreadable ({exc}).") from None
    return FeatureStatistic.from_dict(data, str(path))
