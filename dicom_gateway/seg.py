"""Findings with a 3D mask to a DICOM Segmentation (PS3.3 A.51) via highdicom.

One segment per masked :class:`~models.finding.Finding` (e.g. one per CT nodule).  Each segment
carries a Segmented Property Category and Type (PS3.3 C.8.20.2: what the voxels *are*, a
structure or morphology, not a disorder), an Anatomic Region, a Recommended Display CIELab Value
(one colour of :data:`DISPLAY_RGB` per segment, so viewers show neighbours apart), algorithm type
AUTOMATIC with the Algorithm Identification (name, family "Artificial Intelligence", version) and
the tracking identifiers, so the SR of the same findings can reference it.

A finding coded as a disorder is segmented as its SNOMED CT associated morphology at its finding
site (:data:`SEGMENTED_PROPERTIES`: the nodule model's SCT 786838002 "Pulmonary nodule" is SCT
27925004 "Nodule" under SCT 49755003 "Morphologically abnormal structure", in SCT 39607008
"Lung"); any other code is written as the type itself, under the same category.  The SEG references every source instance (Referenced Series / Derivation
Image), lives in the source study, in a new series, and is labelled as not for clinical use.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from models.finding import Finding

#: PS3.16 CID 7150 "Segmentation Property Categories": (49755003, SCT).
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure


@dataclass(frozen=True)
class SegmentedProperty:
    """Segmented Property Category / Type (PS3.16 CID 7150 / CID 7159 for the category
    "Morphologically abnormal structure") and the Anatomic Region (CID 4031) of a segment."""

    category: Code
    property_type: Code
    anatomic_region: Code | None = None


#: Finding code (value, scheme) -> how its segment is described.  A disorder is segmented as its
#: SNOMED CT associated morphology at its finding site: SCT 786838002 "Pulmonary nodule"
#: (disorder) = morphology SCT 27925004 "Nodule" in SCT 39607008 "Lung".
SEGMENTED_PROPERTIES: dict[tuple[str, str], SegmentedProperty] = {
    ("786838002", "SCT"): SegmentedProperty(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.SCT.Nodule,
                                            codes.SCT.Lung),
}
#: Recommended display colours (sRGB) of segments 1, 2, ... in turn: yellow, cyan, magenta,
#: orange, green, blue; written as CIELab (PS3.3 C.10.7.1.1).
DISPLAY_RGB = ((255, 215, 0), (0, 200, 255), (255, 0, 200), (255, 128, 0), (0, 220, 80), (80, 120, 255))
#: PS3.16 CID 7162 "Algorithm Families" (PS3.3 C.8.20.2 Algorithm Family Code Sequence):
#: (123110, DCM, "Artificial Intelligence").
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence
#: Series Description (0008,103E) and Content Label of every SEG (Content Label is a CS, 16 chars).
SERIES_DESCRIPTION = "AI segmentation - not for clinical use"
CONTENT_LABEL = "AI_RESULT"
#: PS3.3 C.8.20.2: the SEG's "device" is the algorithm; a software-only device has no serial.
DEVICE_SERIAL_NUMBER = "software"


def segmented_property(finding: Finding) -> SegmentedProperty:
    """Category, type and region of the segment of ``finding`` (see :data:`SEGMENTED_PROPERTIES`)."""
    known = SEGMENTED_PROPERTIES.get((finding.code.value, finding.code.scheme))
    if known is not None:
        return known
    return SegmentedProperty(MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                             Code(finding.code.value, finding.code.scheme, finding.code.meaning))


def display_colour(index: int) -> hd.color.CIELabColor:
    """Recommended display colour of the ``index``-th (1-based) segment."""
    return hd.color.CIELabColor.from_rgb(*DISPLAY_RGB[(index - 1) % len(DISPLAY_RGB)])


def segment_label(index: int, finding: Finding) -> str:
    """Segment Label (LO, at most 64 characters) of the ``index``-th (1-based) masked finding."""
    return f"{finding.code.meaning} {index}"[:64]


def segment_tracking_uid(finding: Finding, index: int) -> str:
    """A tracking UID that is the same on every run for the same finding of the same model."""
    return generate_uid(entropy_srcs=["medgate segment", finding.source.study_uid, finding.model,
                                      finding.model_version, str(index)])


def _check(findings: Sequence[Finding], series: Sequence[Dataset]) -> tuple[list[Finding], list[Dataset]]:
    if isinstance(findings, (str, bytes)) or not isinstance(findings, Sequence):
        raise TypeError(f"findings must be a sequence of Finding, {type(findings).__name__} is given.")
    masked = [f for f in findings if isinstance(f, Finding) and f.mask is not None]
    if len(masked) != len(findings) or not masked:
        raise ValueError(
            f"findings must be one or more Finding with a mask, {len(masked)} of {len(findings)} have one."
        )
    if isinstance(series, Dataset) or not isinstance(series, Sequence) or not series:
        raise TypeError(f"series must be a non-empty sequence of Dataset, {type(series).__name__} is given.")
    uids = [str(ds.SOPInstanceUID) for ds in series]
    for i, finding in enumerate(masked):
        missing = [s.sop_instance_uid for s in finding.sources if s.sop_instance_uid not in uids]
        if missing:
            raise ValueError(f"findings[{i}] refers to images not in series: {', '.join(missing)}.")
    return masked, list(series)


def build_segmentation(
    findings: Sequence[Finding],
    series: Sequence[Dataset],
    *,
    manufacturer: str = "medgate",
    series_number: int = 9902,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """Build a binary SEG of the masks of ``findings`` over the images ``series``.

    Parameters
    ----------
    findings: Sequence[models.finding.Finding]
        Findings with a ``mask``; segment ``n`` is ``findings[n - 1]``.
    series: Sequence[pydicom.Dataset]
        The source images (one CT series with one Frame of Reference), pixel data included.
    manufacturer: str, optional
        Manufacturer of the SEG.
    series_number, instance_number: int, optional
        Series and Instance Number of the SEG.
    series_instance_uid, sop_instance_uid: str | None, optional
        UIDs of the SEG; fresh ones when None (pass derived UIDs to make a rerun replace it).

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG; write it with ``.save_as``.

    Raises
    ------
    TypeError, ValueError
        When an argument has the wrong type or a finding has no mask or refers to an image that is
        not in ``series``; the message names the argument.
    """
    masked, datasets = _check(findings, series)
    index_of = {str(ds.SOPInstanceUID): i for i, ds in enumerate(datasets)}
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    labels = np.zeros((len(datasets), rows, columns, len(masked)), dtype=bool)
    descriptions = []
    for n, finding in enumerate(masked, start=1):
        for plane, image in zip(finding.mask, finding.sources):
            labels[index_of[image.sop_instance_uid], :, :, n - 1] |= plane
        segmented = segmented_property(finding)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=segment_label(n, finding),
            segmented_property_category=segmented.category,
            segmented_property_type=segmented.property_type,
            anatomic_regions=[segmented.anatomic_region] if segmented.anatomic_region else None,
            display_color=display_colour(n),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=finding.model, family=ALGORITHM_FAMILY, version=finding.model_version,
                source=manufacturer,
            ),
            tracking_uid=segment_tracking_uid(finding, n),
            tracking_id=f"{finding.code.meaning} finding {n}",
        ))
    names = ", ".join(dict.fromkeys(f.model for f in masked))
    versions = ", ".join(dict.fromkeys(f.model_version for f in masked))
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=names[:64],
        software_versions=versions[:64],
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label=CONTENT_LABEL,
        content_description="AI result - not for clinical use",
        series_description=SERIES_DESCRIPTION,
    )
