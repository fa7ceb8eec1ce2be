"""What a model version's scores and inputs looked like on its held-out generated data: the
reference live monitoring compares served traffic against (:mod:`serving.monitoring`).

A model version may carry ``reference.json`` beside its weights (``<registry>/<name>/<version>/``),
written by :mod:`training.reference` at training time (or afterwards for a version registered
before).  It holds histograms on fixed bin edges:

* ``score``: the model's output probability per item (an image; a CT scan's largest candidate
  probability) on :data:`SCORE_EDGES`, ten bins of width 0.1 over [0, 1];
* ``inputs``: one histogram per input feature (:func:`image_features`, :func:`volume_features`),
  on edges at the reference's own deciles, the outer edges open (-inf, +inf), so that each bin
  holds about a tenth of the reference.

Layout (every key required)::

    {"format": "medgate-reference/1", "model": "tb", "version": "1.1.0",
     "made_at": "2026-12-03T16:40:00Z", "made_by": "training/reference.py",
     "data": "<how the held-out items were generated>", "n": 200, "threshold": 0.5,
     "score": {"edges": [...11], "counts": [...10], "positive_rate": 0.41},
     "inputs": {"mean_intensity": {"edges": [...], "counts": [...], "mean": m, "std": s}, ...}}

The input features are defined here once, for the training side that writes the reference and the
serving side that records them per result (``results`` row summary ``inputs``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The file beside a version's weights.
REFERENCE_FILE = "reference.json"
FORMAT = "medgate-reference/1"
#: Bin edges of the score histogram: ten bins of width 0.1 over [0, 1] (the last bin closed).
SCORE_EDGES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
_FLAT_LIST = re.compile(r"\[([-0-9.e\s,\"inf]*)\]")
#: Bins of an input feature's histogram: its deciles on the reference data.
FEATURE_BINS = 10
#: Input features of a 2D image model, over its model input (``(channels, H, W)`` in [0, 1]) and
#: the source image's larger side in pixels.
IMAGE_FEATURES = ("mean_intensity", "intensity_std", "source_size_px")
#: Input features of a volume model, over the volume windowed to [0, 1] and its number of slices.
VOLUME_FEATURES = ("mean_intensity", "intensity_std", "slices")


def image_features(model_input: np.ndarray, source_size_px: int) -> dict[str, float]:
    """:data:`IMAGE_FEATURES` of one 2D model input ``(channels, H, W)``."""
    x = np.asarray(model_input, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"`model_input` must be (channels, H, W), an array of shape {x.shape} is given.")
    return {"mean_intensity": round(float(x.mean()), 6), "intensity_std": round(float(x.std()), 6),
            "source_size_px": int(source_size_px)}


def volume_features(volume: np.ndarray, window_hu: tuple[float, float] | None = None) -> dict[str, float]:
    """:data:`VOLUME_FEATURES` of one volume ``(slices, H, W)``: intensities in the model's value
    range [0, 1], the volume first clipped to ``window_hu`` and scaled when it is given in HU."""
    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValueError(f"`volume` must be (slices, H, W), an array of shape {v.shape} is given.")
    scale = None
    if window_hu is not None:
        low, high = (float(w) for w in window_hu)
        if not high > low:
            raise ValueError(f"`window_hu` must be (low, high) with high > low, {window_hu} is given.")
        scale = (low, high)

    def plane(k: int) -> np.ndarray:  # one slice in float64 at a time: a 512² CT is 168 MB as one array
        p = v[k].astype(np.float64)
        return p if scale is None else np.clip((p - scale[0]) / (scale[1] - scale[0]), 0.0, 1.0)

    # two passes (mean, then squared deviations), as numpy's std, over slices
    n = v.size
    mean = sum(float(plane(k).sum()) for k in range(v.shape[0])) / n if n else float("nan")
    var = sum(float(np.square(plane(k) - mean).sum()) for k in range(v.shape[0])) / n if n else float("nan")
    return {"mean_intensity": round(mean, 6), "intensity_std": round(float(np.sqrt(var)), 6),
            "slices": int(v.shape[0])}


def histogram(values, edges) -> list[int]:
    """Counts of ``values`` in the bins of ``edges`` (each bin ``[lo, hi)``, the last closed;
    values outside the outer edges are counted in the outer bins)."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"`edges` must be at least 2 increasing values, {edges.tolist()} is given.")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    index = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(index, minlength=len(edges) - 1).astype(int).tolist()


def decile_edges(values) -> list[float]:
    """Edges at the inner deciles of ``values``, repeated ones merged, with open outer edges."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("`values` must not be empty, 0 values are given.")
    inner = np.unique(np.round(np.quantile(v, np.linspace(0, 1, FEATURE_BINS + 1)[1:-1]), 6))
    return [-math.inf, *inner.tolist(), math.inf]


@dataclass(frozen=True)
class Distribution:
    """A histogram on fixed edges (``len(edges) == len(counts) + 1``)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.counts) + 1:
            raise ValueError(f"a histogram needs one edge more than counts, {len(self.edges)} edges and "
                             f"{len(self.counts)} counts are given")

    @classmethod
    def of(cls, values, edges) -> Distribution:
        return cls(tuple(float(e) for e in edges), tuple(histogram(values, edges)))

    @property
    def n(self) -> int:
        return int(sum(self.counts))

    def as_json(self) -> dict[str, Any]:
        return {"edges": [_finite_or_text(e) for e in self.edges], "counts": list(self.counts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Distribution:
        return cls(tuple(float(e) for e in data["edges"]), tuple(int(c) for c in data["counts"]))


def _finite_or_text(value: float) -> float | str:
    """JSON has no infinity: open edges are written "-inf" / "inf" (``float()`` reads them back)."""
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


@dataclass(frozen=True)
class ModelReference:
    """A version's ``reference.json`` (see the module docstring)."""

    model: str
    version: str
    made_at: str
    made_by: str
    data: str
    n: int
    threshold: float
    positive_rate: float
    score: Distribution
    inputs: dict[str, Distribution]

    def __post_init__(self) -> None:
        if self.score.edges != SCORE_EDGES:
            raise ValueError(f"the score histogram must use the edges {list(SCORE_EDGES)}, "
                             f"{list(self.score.edges)} are given")
        if self.score.n != self.n:
            raise ValueError(f"the score histogram must count all {self.n} items, {self.score.n} are counted")

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": self.model, "version": self.version, "made_at": self.made_at,
                "made_by": self.made_by, "data": self.data, "n": self.n, "threshold": self.threshold,
                "score": self.score.as_json() | {"positive_rate": self.positive_rate}, "inputs": {k: d.as_json() for k, d in self.inputs.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelReference:
        if data.get("format") != FORMAT:
            raise ValueError(f"a reference must have format {FORMAT!r}, {data.get('format')!r} is given")
        return cls(model=str(data["model"]), version=str(data["version"]), made_at=str(data["made_at"]),
                   made_by=str(data["made_by"]), data=str(data["data"]), n=int(data["n"]),
                   threshold=float(data["threshold"]),
                   positive_rate=float(data["score"]["positive_rate"]), score=Distribution.from_json(data["score"]),
                   inputs={k: Distribution.from_json(v) for k, v in data["inputs"].items()})

    @classmethod
    def read(cls, folder: Path) -> ModelReference | None:
        """The reference in a version ``folder``, or None when it has none."""
        path = Path(folder) / REFERENCE_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a model reference: {exc}") from exc

    def write(self, folder: Path) -> Path:
        path = Path(folder) / REFERENCE_FILE
        text = json.dumps(self.as_json(), indent=1)
        text = _FLAT_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text)  # a histogram per line
        path.write_text(text + "\n", encoding="utf-8")
        return path
