"""The one finding type that every model produces and every writer consumes.

A finding is plain data: which model said what, with which probability, where, and about which
source image.  Writers (DICOM SR, FHIR) turn findings into interchange objects; models never build
DICOM or FHIR themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NOT_FOR_CLINICAL_USE = "AI result - not for clinical use (model trained on generated data only)"


@dataclass(frozen=True)
class Concept:
    """A coded concept: ``value`` in coding ``scheme`` (e.g. ``SCT``, ``DCM``, ``LN``) with ``meaning``."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SourceImage:
    """The image a finding is about, by DICOM UIDs (strings only: no DICOM dependency here)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    rows: int
    columns: int


@dataclass(frozen=True)
class Finding:
    """One model output about one source image.

    ``point`` is ``(column, row)`` in pixel coordinates of the source image (DICOM SCOORD order),
    or ``None`` when the model does not localise.
    """

    model: str
    model_version: str
    code: Concept
    probability: float
    threshold: float
    source: SourceImage
    point: tuple[float, float] | None = None
    notes: tuple[str, ...] = field(default=(NOT_FOR_CLINICAL_USE,))

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], {self.probability} is given.")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be within (0, 1), {self.threshold} is given.")
        if self.point is not None:
            col, row = self.point
            if not (0 <= col < self.source.columns and 0 <= row < self.source.rows):
                raise ValueError(
                    f"point {self.point} lies outside the {self.source.columns}x{self.source.rows} image."
                )

    @property
    def positive(self) -> bool:
        """True when the probability reaches the model's operating point."""
        return self.probability >= self.threshold
