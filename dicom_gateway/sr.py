"""Findings to a DICOM Structured Report: a PS3.16 TID 1500 Measurement Report.

One measurement group per :class:`~models.finding.Finding`:

* findings located on one image become TID 1410 "Planar ROI Measurements and Qualitative
  Evaluations" with an image region: SCOORD POINT (``point``), a closed SCOORD POLYLINE
  (``box``, ``polygon``) or SCOORD3D POINT (``point_3d_mm``, in the source's Frame of Reference);
* findings with a 3D ``mask`` become TID 1411 "Volumetric ROI Measurements and Qualitative
  Evaluations" that reference the segment of the SEG written for them (when the SEG is given) or
  else a SCOORD3D POINT at the mask's centroid over the source images;
* unlocated findings become TID 1501 "Measurement and Qualitative Evaluation Group" that
  reference the source image(s) as a whole.

A report may hold many findings about one image or one series (``source`` is then the list of
its images).

Each group carries a tracking identifier (TID 4108), the finding type, the algorithm
identification (TID 4019), the model's probability as a numeric measurement (TID 300) and a
present/absent qualitative evaluation at the model's operating point, unless the input lay outside
the model's training distribution (:attr:`models.finding.Finding.outside`): then the group makes no
call and the report's root "Qualitative Evaluations" says so
(:func:`dicom_gateway.sr_template.report_notes`).

Viewers read the image region of a measurement, not of its group: the OHIF Viewer's TID 1500
reader (``@cornerstonejs/adapters``) draws a group only when its first NUM is INFERRED FROM a
SCOORD that is SELECTED FROM an image (TID 300 row 8, TID 320) and its tracking identifier names
a Cornerstone3D tool (:func:`dicom_gateway.sr_codes.tracking_identifier`).  So the probability of
a located finding is also INFERRED FROM its :func:`viewer_region`: the 2D location itself, or for
3D locations a SCOORD POINT on one image (a mask's centre on the slice where it is largest; a
``point_3d_mm`` projected onto the nearest slice), beside the group's own Image Region, SEG
reference or SCOORD3D that standard readers (highdicom, dsrdump) use.
``tests/dicom_gateway/test_sr_viewer.py`` loads the reports with the adapters in node.  The report is marked as
not for clinical use both in Series Description and in a root "Qualitative Evaluations" TEXT
item (TID 1500 row 12), which SR viewers display with the report content.

Patient and study attributes are copied from the source image (it is the evidence), so the SR
files into the source study.

Two writers make the same report.  :func:`reference_measurement_report` builds it with highdicom,
whose template classes validate every item (20-30 ms a report on the 2-core CPU machine, and half
a second for the first one in a process).  :func:`build_measurement_report` checks its arguments
once and fills the template of the algorithm version (:mod:`dicom_gateway.sr_template`, 3-5 ms) for the
reports that template covers (findings on 2D images: points, boxes, polygons, unlocated), and
calls the reference for the rest (3D locations, masks, a referenced SEG).  A test compares the
two element by element.
"""
from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_gateway import sr_template
from dicom_gateway.sr_codes import (
    ABSENT,
    COMMENT,
    NO_UNITS,
    PATIENT_STUDY_TYPE2,
    PRESENT,
    PROBABILITY,
    QUALITATIVE_EVALUATIONS,
    SERIES_DESCRIPTION,
    device_observer_uid,
    procedure_reported,
    scheme_identification,
    tracking_identifier,
)
from models import coding_scheme
from models.finding import NOT_FOR_CLINICAL_USE, Finding, SourceImage

_REQUIRED_SOURCE_ATTRIBUTES = (
    "StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns"
)


def _check_inputs(
    findings: Sequence[Finding], sources: Sequence[Dataset]
) -> tuple[list[Finding], list[Dataset]]:
    if isinstance(findings, (str, bytes)) or not isinstance(findings, Sequence):
        raise TypeError(
            f"findings must be a sequence of Finding, {type(findings).__name__} is given."
        )
    if len(findings) == 0:
        raise ValueError("findings must contain at least one Finding, an empty sequence is given.")
    if isinstance(sources, Dataset):
        sources = [sources]
    if not isinstance(sources, Sequence) or not sources or not all(
        isinstance(ds, Dataset) for ds in sources
    ):
        raise TypeError(
            f"source must be a pydicom Dataset or a non-empty sequence of them, "
            f"{type(sources).__name__} is given."
        )
    for ds in sources:
        missing = [kw for kw in _REQUIRED_SOURCE_ATTRIBUTES if not ds.get(kw)]
        if missing:
            raise ValueError(
                f"source lacks {', '.join(missing)}; it must be a composite image instance."
            )
    study_uid = str(sources[0].StudyInstanceUID)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    if any(str(ds.StudyInstanceUID) != study_uid for ds in sources):
        raise ValueError("source images must all belong to one study.")
    for i, finding in enumerate(findings):
        if not isinstance(finding, Finding):
            raise TypeError(f"findings[{i}] must be a Finding, {type(finding).__name__} is given.")
        if finding.source.study_uid != study_uid:
            raise ValueError(
                f"findings[{i}] is about study {finding.source.study_uid}, but source belongs to "
                f"study {study_uid}; all findings must be about the source study."
            )
        for image in finding.sources:
            ds = by_uid.get(image.sop_instance_uid)
            if ds is None:
                raise ValueError(
                    f"findings[{i}] is about image {image.sop_instance_uid}, not the source "
                    f"image {', '.join(by_uid)}; pass every image the findings are about."
                )
            shape = (image.rows, image.columns)
            if shape != (ds.get("Rows"), ds.get("Columns")):
                raise ValueError(
                    f"findings[{i}] is about a {shape[1]}x{shape[0]} image, but source is "
                    f"{ds.get('Columns')}x{ds.get('Rows')}."
                )
    return list(findings), list(sources)


def _evidence(source: Dataset) -> Dataset:
    """``source`` without its pixel data and with every Type 2 patient/study attribute present."""
    evidence = Dataset()
    for element in source:
        if element.keyword != "PixelData":
            evidence.add(element)
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    return evidence


_Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def mask_centroid_mm(finding: Finding, datasets: dict[str, Dataset]) -> np.ndarray:
    """Centroid of ``finding.mask`` in patient coordinates (PS3.3 C.7.6.2.1.1), in mm."""
    planes, rows, columns = np.nonzero(finding.mask)
    points = []
    for plane, row, column in zip(planes, rows, columns):
        ds = datasets[finding.sources[plane].sop_instance_uid]
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        points.append(np.asarray(ds.ImagePositionPatient, dtype=float)
                      + orientation[:3] * column_spacing * column
                      + orientation[3:] * row_spacing * row)
    return np.mean(points, axis=0)


def _closed(vertices) -> np.ndarray:
    vertices = np.asarray(vertices, dtype=float)
    return np.vstack([vertices, vertices[:1]])


#: A 2D image region: SCOORD Graphic Type, Graphic Data as (column, row) rows, and its image.
_Planar = tuple[hd.sr.GraphicTypeValues, np.ndarray, SourceImage]


def _planar_location(finding: Finding) -> _Planar:
    """The SCOORD of a ``point``, ``box`` or ``polygon`` on ``finding.source``."""
    if finding.point is not None:
        graphic_type, data = hd.sr.GraphicTypeValues.POINT, np.array([finding.point], dtype=float)
    elif finding.box is not None:
        c0, r0, c1, r1 = finding.box
        graphic_type, data = hd.sr.GraphicTypeValues.POLYLINE, _closed([(c0, r0), (c1, r0), (c1, r1), (c0, r1)])
    else:
        graphic_type, data = hd.sr.GraphicTypeValues.POLYLINE, _closed(finding.polygon)
    return graphic_type, data, finding.source


def largest_plane(finding: Finding) -> int:
    """Index in ``finding.sources`` of the image where its 3D mask marks the most voxels."""
    return int(np.argmax(finding.mask.reshape(len(finding.sources), -1).sum(axis=1)))


def largest_plane_point(finding: Finding) -> _Planar:
    """A 3D mask shown on one image: the centre (mean column and row, SCOORD convention) of its
    voxels on the image where it marks the most, a SCOORD POINT a viewer draws on that slice."""
    plane = largest_plane(finding)
    rows, columns = np.nonzero(finding.mask[plane])
    point = np.array([[columns.mean() + 0.5, rows.mean() + 0.5]])
    return hd.sr.GraphicTypeValues.POINT, point, finding.sources[plane]


def nearest_plane_point(finding: Finding, datasets: dict[str, Dataset]) -> _Planar | None:
    """``point_3d_mm`` shown on one image: projected (PS3.3 C.7.6.2.1.1) onto the image of
    ``finding.sources`` whose plane is nearest, when it lies within that image's slab (half its
    Slice Thickness, when given) and inside its pixels; None when no image qualifies or the images
    carry no plane (projection radiographs)."""
    best = None
    for image in finding.sources:
        ds = datasets[image.sop_instance_uid]
        if not all(ds.get(k) for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")):
            continue
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        offset = np.asarray(finding.point_3d_mm, dtype=float) - np.asarray(ds.ImagePositionPatient, dtype=float)
        distance_mm = abs(float(offset @ np.cross(orientation[:3], orientation[3:])))
        if best is None or distance_mm < best[0]:
            best = (distance_mm, image, ds, orientation, offset)
    if best is None:
        return None
    distance_mm, image, ds, orientation, offset = best
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    column = float(offset @ orientation[:3]) / column_spacing + 0.5
    row = float(offset @ orientation[3:]) / row_spacing + 0.5
    thickness_mm = float(ds.get("SliceThickness") or 0.0)
    if (thickness_mm and distance_mm > thickness_mm / 2) or not (
        0 <= column < image.columns and 0 <= row < image.rows
    ):
        return None
    return hd.sr.GraphicTypeValues.POINT, np.array([[column, row]]), image


def viewer_region(finding: Finding, datasets: dict[str, Dataset]) -> _Planar | None:
    """The 2D image region a viewer draws the finding with (``None`` when it has none): its 2D
    location, or for 3D ones a point on the slice they lie on (:func:`largest_plane_point`,
    :func:`nearest_plane_point`)."""
    if finding.mask is not None:
        return largest_plane_point(finding)
    if finding.point_3d_mm is not None:
        return nearest_plane_point(finding, datasets)
    if finding.location is None:
        return None
    return _planar_location(finding)


def _region(finding: Finding) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
    image = finding.source
    if finding.point_3d_mm is not None:
        return hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.array([finding.point_3d_mm], dtype=float),
            frame_of_reference_uid=image.frame_of_reference_uid,
        )
    graphic_type, data, image = _planar_location(finding)
    on_image = hd.sr.SourceImageForRegion(image.sop_class_uid, image.sop_instance_uid)
    return hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=data, source_image=on_image)


def _measurement_group(
    index: int, finding: Finding, name: str, version: str, manufacturer: str,
    datasets: dict[str, Dataset], segmentation: Dataset | None = None, segment_number: int = 0,
) -> _Group:
    """TID 1410/1411 (located) or TID 1501 (unlocated) group for the ``index``-th finding; its
    probability is INFERRED FROM the finding's :func:`viewer_region`, when it has one."""
    image = finding.source
    finding_type = hd.sr.CodedConcept(finding.code.value, finding.code.scheme, finding.code.meaning)
    shown = viewer_region(finding, datasets)
    probability = hd.sr.Measurement(
        name=PROBABILITY,
        value=float(finding.probability),
        unit=NO_UNITS,
        referenced_images=[
            hd.sr.SourceImageForMeasurement(s.sop_class_uid, s.sop_instance_uid)
            for s in (finding.located_sources if finding.mask is not None else (image,))
        ],
    )
    common = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=tracking_identifier(finding, index, shown is not None)
        ),
        finding_type=finding_type,
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=name,
            version=version,
            parameters=[f"operating point (threshold) = {finding.threshold:g}"],
            manufacturer=manufacturer,
        ),
        measurements=[probability],
        qualitative_evaluations=None if finding.outside else [
            hd.sr.QualitativeEvaluation(finding_type, PRESENT if finding.positive else ABSENT)
        ],
    )
    group = _group_of(finding, datasets, segmentation, segment_number, common)
    if shown is not None:
        # TID 300 row 8 (TID 320): highdicom's ROI groups refuse coordinates on their measurements
        # (the group's region is the ROI); the viewers read the region only there, so it is added
        # to the probability once the group is built (the same item in the group's content tree).
        probability[0].ContentSequence.append(_coordinates(*shown))
    return group


def _group_of(finding: Finding, datasets: dict[str, Dataset], segmentation: Dataset | None,
              segment_number: int, common: dict) -> _Group:
    """The highdicom group of the finding's location kind, with the ``common`` items."""
    image = finding.source
    if finding.mask is not None:
        seg_sources = [
            hd.sr.SourceImageForSegmentation(s.sop_class_uid, s.sop_instance_uid)
            for s in finding.located_sources
        ]
        if segmentation is not None:
            return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    segment_number=segment_number,
                    source_images=seg_sources,
                ),
                **common,
            )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_volume_surface=hd.sr.VolumeSurface(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=mask_centroid_mm(finding, datasets)[None],
                frame_of_reference_uid=image.frame_of_reference_uid,
                source_images=seg_sources,
            ),
            **common,
        )
    if finding.location is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(s.sop_class_uid, s.sop_instance_uid)
                for s in finding.sources
            ],
            **common,
        )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=_region(finding), **common)


def _coordinates(graphic_type, data: np.ndarray, image: SourceImage) -> hd.sr.CoordinatesForMeasurement:
    """TID 300 row 8 (TID 320): the image region a measurement is INFERRED FROM, a SCOORD that
    SELECTS FROM its image; the content the OHIF Viewer's reader (@cornerstonejs/adapters) draws."""
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=graphic_type, graphic_data=data,
        source_image=hd.sr.SourceImageForRegion(image.sop_class_uid, image.sop_instance_uid),
    )


def _disclaimer(findings: Sequence[Finding]) -> hd.sr.ContainerContentItem:
    notes = sr_template.report_notes(findings)
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=COMMENT, value=note, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for note in notes
        ]
    )
    return container


def build_measurement_report(
    findings: Sequence[Finding],
    source: Dataset | Sequence[Dataset],
    *,
    series_number: int = 9901,
    instance_number: int = 1,
    manufacturer: str = "medgate",
    algorithm_name: str | None = None,
    algorithm_version: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    segmentation: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build a TID 1500 Measurement Report of ``findings`` about the image ``source``.

    Parameters
    ----------
    findings: Sequence[models.finding.Finding]
        One or more findings, all about images in ``source``.  2D locations are written as
        DICOM SCOORD in image coordinates, ``(column, row)`` with ``(0, 0)`` at the top left
        corner of the top left pixel; 3D ones as SCOORD3D.
    source: pydicom.Dataset | Sequence[pydicom.Dataset]
        The source image, or every image of the series the findings are about (pixel data not
        needed); patient and study attributes are copied from the first.
    series_number: int, optional
        Series Number of the new SR series.
    instance_number: int, optional
        Instance Number of the SR.
    manufacturer: str, optional
        Manufacturer of the SR and of the algorithm.
    algorithm_name: str | None, optional
        Algorithm name for the observer and each TID 4019 item; ``finding.model`` when None.
    algorithm_version: str | None, optional
        Algorithm version; ``finding.model_version`` when None.
    series_instance_uid, sop_instance_uid: str | None, optional
        UIDs of the new SR; fresh ones when None.  Pass UIDs derived from the source and the
        algorithm to make re-running a study replace its report instead of adding one.
    segmentation: pydicom.Dataset | None, optional
        The SEG written by :func:`dicom_gateway.seg.build_segmentation` for the masked findings
        (in the same order); their groups then reference its segments.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The report, in the source study, in a new series; write it with ``.save_as``.

    Raises
    ------
    TypeError
        When ``findings`` or ``source`` has the wrong type.
    ValueError
        When ``findings`` is empty or a finding is about another study or image than
        ``source``, or when a numeric argument is out of range; the message names the argument.
    """
    findings, sources = _checked(findings, source, series_number, instance_number, manufacturer)
    if sr_template.covers(findings, sources, segmentation):
        template = sr_template.template_for(
            algorithm_name or _unique([f.model for f in findings]),
            algorithm_version or _unique([f.model_version for f in findings]),
            manufacturer,
        )
        return template.fill(
            findings, sources, series_number=series_number, instance_number=instance_number,
            algorithm_name=algorithm_name, algorithm_version=algorithm_version,
            series_instance_uid=series_instance_uid or generate_uid(),
            sop_instance_uid=sop_instance_uid or generate_uid(),
        )
    return _highdicom_report(
        findings, sources, series_number, instance_number, manufacturer, algorithm_name,
        algorithm_version, series_instance_uid, sop_instance_uid, segmentation,
    )


def reference_measurement_report(
    findings: Sequence[Finding],
    source: Dataset | Sequence[Dataset],
    *,
    series_number: int = 9901,
    instance_number: int = 1,
    manufacturer: str = "medgate",
    algorithm_name: str | None = None,
    algorithm_version: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    segmentation: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The report of :func:`build_measurement_report` (same arguments, same checks), always built
    with highdicom's template classes: the reference the fast path is compared with."""
    findings, sources = _checked(findings, source, series_number, instance_number, manufacturer)
    return _highdicom_report(
        findings, sources, series_number, instance_number, manufacturer, algorithm_name,
        algorithm_version, series_instance_uid, sop_instance_uid, segmentation,
    )


def _unique(values: Sequence[str]) -> str:
    return ", ".join(dict.fromkeys(values))


def _checked(findings, source, series_number, instance_number, manufacturer):
    findings, sources = _check_inputs(findings, source)
    for arg, value in (("series_number", series_number), ("instance_number", instance_number)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"{arg} must be a positive integer, {value!r} is given.")
    if not isinstance(manufacturer, str) or not manufacturer.strip():
        raise ValueError(f"manufacturer must be a non-empty string, {manufacturer!r} is given.")
    return findings, sources


def _highdicom_report(
    findings, sources, series_number, instance_number, manufacturer, algorithm_name,
    algorithm_version, series_instance_uid, sop_instance_uid, segmentation,
) -> hd.sr.Comprehensive3DSR:
    datasets = {str(ds.SOPInstanceUID): ds for ds in sources}
    observer_name = algorithm_name or _unique([f.model for f in findings])
    observer_version = algorithm_version or _unique([f.model_version for f in findings])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(observer_name, observer_version),
            name=observer_name,
            manufacturer_name=manufacturer,
            model_name=observer_name,
        ),
    )
    masked = [f for f in findings if f.mask is not None]
    groups = [
        _measurement_group(
            i,
            finding,
            algorithm_name or finding.model,
            algorithm_version or finding.model_version,
            manufacturer,
            datasets,
            segmentation,
            next((k for k, f in enumerate(masked, 1) if f is finding), 0),
        )
        for i, finding in enumerate(findings, start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure_reported(sources[0]),
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_disclaimer(findings))

    private = {f.code.scheme for f in findings if coding_scheme.is_private(f.code.scheme)}
    return hd.sr.Comprehensive3DSR(
        evidence=[_evidence(ds) for ds in sources]
        + ([_evidence(segmentation)] if segmentation is not None else []),
        content=report[0],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=observer_name,
        software_versions=observer_version,
        coding_schemes=[scheme_identification(s) for s in sorted(private)] or None,
    )
