"""The one finding type that every model produces and every writer consumes.

A finding is plain data: which model said what, with which probability, where, and about which
source images.  Writers (DICOM SR, SEG, Secondary Capture overlays, FHIR) turn findings into
interchange objects; models never build DICOM or FHIR themselves.

Locations, all optional and mutually exclusive (at most one per finding):

* ``point``: ``(column, row)`` in pixel coordinates of ``source`` (DICOM SCOORD order, PS3.3
  C.18.6.1.1: ``(0, 0)`` is the top left corner of the top left pixel);
* ``box``: ``(column_min, row_min, column_max, row_max)`` in the same coordinates;
* ``polygon``: three or more ``(column, row)`` vertices of a closed polygon on ``source``;
* ``point_3d_mm``: ``(x, y, z)`` in the patient coordinate system (PS3.3 C.7.6.2.1.1, mm) of
  ``source.frame_of_reference_uid`` (written as SCOORD3D);
* ``mask``: a binary 3D mask, one ``(rows, columns)`` plane per image of :attr:`Finding.sources`
  (``source`` first, then ``other_sources``, in the order of the array's first axis).

``heatmap`` (any 2D shape, values in [0, 1], stretched over ``source``) is an optional
explanation map that overlay writers render; it is not a location.

``ood`` (:class:`OutOfDistribution`) says how far the input lay from the model's training data
(:mod:`models.ood`); a finding whose input lies outside it makes no call (:attr:`Finding.positive` is
False, writers say so with :attr:`Finding.ood_note` instead of present / absent).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NOT_FOR_CLINICAL_USE = "AI result - not for clinical use (model trained on generated data only)"
#: What a finding whose input lies outside the model's training distribution is marked with.
OUTSIDE_TRAINING_DISTRIBUTION = "outside the model's training distribution"

#: Names of the location fields of :class:`Finding`; at most one may be set.
LOCATION_FIELDS = ("point", "box", "polygon", "point_3d_mm", "mask")


@dataclass(frozen=True)
class Concept:
    """A coded concept: ``value`` in coding ``scheme`` (e.g. ``SCT``, ``DCM``, ``LN``) with ``meaning``."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SourceImage:
    """The image a finding is about, by DICOM UIDs (strings only: no DICOM dependency here).

    ``frame_of_reference_uid`` is needed only for 3D locations (``point_3d_mm``, ``mask``).
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    rows: int
    columns: int
    frame_of_reference_uid: str = ""


@dataclass(frozen=True)
class OutOfDistribution:
    """How far a model's input lay from its training data: ``score`` against ``threshold`` (the
    statistic of :mod:`models.ood`; ``inf`` for an input whose features are not finite), and whether
    it lies ``outside`` (``score > threshold``)."""

    score: float
    threshold: float
    outside: bool

    def __post_init__(self) -> None:
        if not (isinstance(self.score, (int, float)) and self.score >= 0):
            raise ValueError(f"ood score must be a number >= 0, {self.score!r} is given.")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"ood threshold must be a positive finite number, {self.threshold!r} is given.")
        if bool(self.outside) != (self.score > self.threshold):
            raise ValueError(f"ood outside must be score > threshold, outside={self.outside!r} is given with "
                             f"score {self.score} and threshold {self.threshold}.")

    @classmethod
    def from_dict(cls, data: Any) -> OutOfDistribution:
        """From the ``{"score", "threshold", "outside"}`` of a model reply (``score`` None: infinite)."""
        if not isinstance(data, dict) or not {"score", "threshold", "outside"} <= set(data):
            raise ValueError(f"ood must be {{score, threshold, outside}}, {data!r} is given.")
        score = math.inf if data["score"] is None else float(data["score"])
        return cls(score=score, threshold=float(data["threshold"]), outside=bool(data["outside"]))

    def as_dict(self) -> dict[str, Any]:
        """JSON form (an infinite score as None)."""
        return {"score": self.score if math.isfinite(self.score) else None, "threshold": self.threshold,
                "outside": self.outside}


def _inside(finding: Finding, name: str, points: Any) -> None:
    image = finding.source
    for col, row in points:
        if not (0 <= col <= image.columns and 0 <= row <= image.rows):
            raise ValueError(
                f"{name} vertex {(col, row)} lies outside the {image.columns}x{image.rows} image."
            )


@dataclass(frozen=True)
class Finding:
    """One model output about one source image (or, for a 3D mask, one series of images).

    Parameters
    ----------
    model, model_version: str
        Model name and semantic version.
    code: Concept
        The finding type (e.g. SCT 56717001 "Tuberculosis").
    probability, threshold: float
        Model output in [0, 1] and its operating point in (0, 1).
    source: SourceImage
        The (first) image the finding is about.
    point, box, polygon, point_3d_mm, mask
        The location; see the module docstring.  At most one is set.
    other_sources: tuple[SourceImage, ...], optional
        Further images of the same study the finding is about (e.g. the other slices of a CT
        series under a 3D mask).
    heatmap: numpy.ndarray | None, optional
        Explanation map in [0, 1] for overlays.
    notes: tuple[str, ...], optional
        Free-text notes; written to SR and FHIR.
    ood: OutOfDistribution | None, optional
        How far the input lay from the model's training data; None where the model carries no
        statistic.
    """

    model: str
    model_version: str
    code: Concept
    probability: float
    threshold: float
    source: SourceImage
    point: tuple[float, float] | None = None
    notes: tuple[str, ...] = field(default=(NOT_FOR_CLINICAL_USE,))
    box: tuple[float, float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None
    point_3d_mm: tuple[float, float, float] | None = None
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    other_sources: tuple[SourceImage, ...] = ()
    heatmap: np.ndarray | None = field(default=None, compare=False, repr=False)
    ood: OutOfDistribution | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], {self.probability} is given.")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be within (0, 1), {self.threshold} is given.")
        given = [name for name in LOCATION_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"at most one location may be given, {', '.join(given)} are given.")
        for other in self.other_sources:
            if other.study_uid != self.source.study_uid:
                raise ValueError(
                    f"other_sources must be in study {self.source.study_uid}, "
                    f"{other.sop_instance_uid} is in study {other.study_uid}."
                )
        if self.point is not None:
            col, row = self.point
            if not (0 <= col < self.source.columns and 0 <= row < self.source.rows):
                raise ValueError(
                    f"point {self.point} lies outside the {self.source.columns}x{self.source.rows} image."
                )
        if self.box is not None:
            if len(self.box) != 4 or not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
                raise ValueError(
                    f"box must be (column_min, row_min, column_max, row_max) with min < max, "
                    f"{self.box} is given."
                )
            _inside(self, "box", [self.box[:2], self.box[2:]])
        if self.polygon is not None:
            if len(self.polygon) < 3 or any(len(v) != 2 for v in self.polygon):
                raise ValueError(
                    f"polygon must have at least 3 (column, row) vertices, {self.polygon} is given."
                )
            _inside(self, "polygon", self.polygon)
        if (self.point_3d_mm is not None or self.mask is not None) and not all(
            s.frame_of_reference_uid for s in self.sources
        ):
            raise ValueError("3D locations need source.frame_of_reference_uid on every source image.")
        if self.point_3d_mm is not None and len(self.point_3d_mm) != 3:
            raise ValueError(f"point_3d_mm must be (x, y, z) in mm, {self.point_3d_mm} is given.")
        if self.mask is not None:
            self._check_mask()
        if self.heatmap is not None:
            heatmap = np.asarray(self.heatmap)
            if heatmap.ndim != 2 or heatmap.size == 0:
                raise ValueError(f"heatmap must be a non-empty 2D array, shape {heatmap.shape} is given.")
        if self.ood is not None and not isinstance(self.ood, OutOfDistribution):
            raise ValueError(f"ood must be an OutOfDistribution, {type(self.ood).__name__} is given.")

    def _check_mask(self) -> None:
        mask = self.mask
        expected = (len(self.sources), self.source.rows, self.source.columns)
        if not isinstance(mask, np.ndarray) or mask.dtype != bool:
            raise ValueError(
                f"mask must be a boolean numpy array, {getattr(mask, 'dtype', type(mask).__name__)} is given."
            )
        if mask.shape != expected:
            raise ValueError(
                f"mask must have shape (len(sources), rows, columns) = {expected}, {mask.shape} is given."
            )
        if not mask.any():
            raise ValueError("mask must mark at least one voxel, an empty mask is given.")

    @property
    def sources(self) -> tuple[SourceImage, ...]:
        """Every image the finding is about: ``source`` first, then ``other_sources``."""
        return (self.source, *self.other_sources)

    @property
    def located_sources(self) -> tuple[SourceImage, ...]:
        """The images the finding lies on: with a ``mask``, those whose plane marks a voxel (a
        nodule on 3 slices of an 80-slice series is on those 3); else every image of :attr:`sources`."""
        if self.mask is None:
            return self.sources
        marked = self.mask.reshape(len(self.sources), -1).any(axis=1)
        return tuple(image for image, on in zip(self.sources, marked) if on)

    @property
    def location(self) -> str | None:
        """Name of the location field that is set (``"point"``, ``"box"``, ...), or None."""
        return next((name for name in LOCATION_FIELDS if getattr(self, name) is not None), None)

    @property
    def outside(self) -> bool:
        """True when the input lies outside the model's training distribution (no call is made)."""
        return self.ood is not None and self.ood.outside

    @property
    def positive(self) -> bool:
        """True when the probability reaches the model's operating point on an input inside the
        model's training distribution: the positive call is withheld on an input outside it."""
        return self.probability >= self.threshold and not self.outside

    @property
    def ood_note(self) -> str | None:
        """The text writers show for a finding outside the training distribution, else None."""
        if not self.outside:
            return None
        score = "not finite" if not math.isfinite(self.ood.score) else f"{self.ood.score:.2f}"
        return (f"{self.code.meaning}: input {OUTSIDE_TRAINING_DISTRIBUTION} ({self.model} {self.model_version}, "
                f"distance {score} > {self.ood.threshold:.2f}); no call is made (probability "
                f"{self.probability:.3f} withheld)")
