"""A viewer shows our measurements: the OHIF Viewer's TID 1500 reader, ``@cornerstonejs/adapters``
(with ``dcmjs``), loads every located finding of our reports as an annotation on its source image.

``tests/dicom_gateway/node/read_measurements.mjs`` runs the adapters' ``MeasurementReport.
generateToolState`` on the written files and prints, per annotation, the tool type, the referenced
SOP instance and the coordinates; the tests check that each finding came out on the right image at
the right place.  The npm packages are pinned by ``node/package-lock.json`` and installed with
``npm ci`` into the git-ignored ``node/node_modules`` on first use.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from scipy import ndimage

from dicom_gateway.seg import build_segmentation
from dicom_gateway.sr import build_measurement_report, reference_measurement_report
from dicom_testdata import chest_ct, make_ct_series
from models.finding import Concept, Finding, SourceImage
from training.synthetic.dicom import make_dx_dataset

NODE_FOLDER = Path(__file__).with_name("node")
#: What ``npm ci`` installed last, to install again when the lockfile changes.
INSTALLED_STAMP = NODE_FOLDER / "node_modules" / ".medgate-lock-sha256"
NPM_CI_TIMEOUT_S = 600
READ_TIMEOUT_S = 120
TUBERCULOSIS = Concept("56717001", "SCT", "Tuberculosis")
PULMONARY_NODULE = Concept("786838002", "SCT", "Pulmonary nodule")
#: The tool each location kind is loaded as (Cornerstone3D tool names).
PROBE, RECTANGLE, FREEHAND = "Probe", "RectangleROI", "PlanarFreehandROI"


@pytest.fixture(scope="session")
def adapters() -> Path:
    """The node folder with its pinned packages installed (``npm ci`` when the lockfile changed)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(reason="node and npm are needed to run @cornerstonejs/adapters (Debian packages nodejs, npm)")
    lock = hashlib.sha256((NODE_FOLDER / "package-lock.json").read_bytes()).hexdigest()
    folder_digest = hashlib.sha256(bytes(NODE_FOLDER)).hexdigest()[:16]
    guard_path = Path(tempfile.gettempdir()) / f"medgate-npm-ci-{folder_digest}.lock"
    with open(guard_path, "w") as guard:  # one installer at a time (npm ci replaces node_modules)
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not INSTALLED_STAMP.exists() or INSTALLED_STAMP.read_text() != lock:
            run = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_FOLDER,
                                 capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S)
            assert run.returncode == 0, f"npm ci in {NODE_FOLDER} failed:\n{run.stderr[-4000:]}"
            INSTALLED_STAMP.write_text(lock)
    return NODE_FOLDER


def read_with_adapters(folder: Path, paths: list[Path]) -> list[dict]:
    """The reports among ``paths`` as the adapters load them (the other paths are their images)."""
    run = subprocess.run(["node", "read_measurements.mjs", *map(str, paths)], cwd=folder,
                         capture_output=True, text=True, timeout=READ_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout)["reports"]


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def image_of(ds: pydicom.Dataset) -> SourceImage:
    return SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                       int(ds.Rows), int(ds.Columns), str(ds.get("FrameOfReferenceUID", "")))


def xray_findings(ds: pydicom.Dataset) -> list[Finding]:
    common = dict(model="tb", model_version="0.3.0", code=TUBERCULOSIS, threshold=0.5, source=image_of(ds))
    return [
        Finding(probability=0.87, point=(40.5, 22.0), **common),
        Finding(probability=0.8, box=(3.0, 4.0, 30.0, 40.0), **common),
        Finding(probability=0.3, polygon=((1.0, 1.0), (20.0, 2.5), (10.0, 30.0)), **common),
        Finding(probability=0.2, **common),  # unlocated: the report's, not an annotation
    ]


def by_tool(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for annotation in report["annotations"]:
        found.setdefault(annotation["toolType"], []).append(annotation)
    return found


@pytest.mark.parametrize("writer", [build_measurement_report, reference_measurement_report],
                         ids=["template", "reference"])
def test_xray_point_box_and_polygon_are_annotations_on_the_xray(adapters, tmp_path, writer):
    ds = make_dx_dataset(np.full((96, 80), 1000, np.uint16), accession="ACC9")
    findings = xray_findings(ds)
    sr = writer(findings, ds)
    (report,) = read_with_adapters(adapters, [save(ds, tmp_path / "dx.dcm"), save(sr, tmp_path / "sr.dcm")])
    assert report["groups"] == 4
    tools = by_tool(report)
    assert sorted(tools) == [FREEHAND, PROBE, RECTANGLE], report["annotations"]
    for (annotation,) in tools.values():
        assert annotation["referencedSOPInstanceUID"] == ds.SOPInstanceUID
        assert annotation["description"] == TUBERCULOSIS.meaning
    (probe,), (rectangle,), (freehand,) = tools[PROBE], tools[RECTANGLE], tools[FREEHAND]
    assert np.allclose(probe["image"], [findings[0].point], atol=1e-6)
    c0, r0, c1, r1 = findings[1].box
    assert np.allclose(rectangle["image"], [(c0, r0), (c1, r0), (c0, r1), (c1, r1)], atol=1e-6)
    assert np.allclose(freehand["image"], findings[2].polygon, atol=1e-6)


@pytest.fixture(scope="module")
def two_nodules():
    """A 20-slice chest CT with two nodules (slices 10-14 and 17-18), one finding each."""
    volume, sample = chest_ct(seed=3, shape_vox=(20, 64, 64), n_nodules=2)
    labels, count = ndimage.label(sample.nodule_mask)
    assert count == 2, f"the two nodules must not touch, {count} regions are drawn"
    series = make_ct_series(volume)
    images = [image_of(ds) for ds in series]
    findings = [Finding(model="nodule", model_version="1.0.0", code=PULMONARY_NODULE, probability=p,
                        threshold=0.5, source=images[0], other_sources=tuple(images[1:]), mask=labels == n)
                for n, p in ((1, 0.97), (2, 0.93))]
    return series, findings


def patient_position_mm(ds: pydicom.Dataset, column: float, row: float) -> np.ndarray:
    """PS3.3 C.7.6.2.1.1: the patient coordinates of image point (column, row), SCOORD convention
    (the centre of the top left pixel is (0.5, 0.5))."""
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return (np.asarray(ds.ImagePositionPatient, dtype=float) + orientation[:3] * column_spacing * (column - 0.5)
            + orientation[3:] * row_spacing * (row - 0.5))


@pytest.mark.parametrize("with_seg", [True, False], ids=["segment", "centroid"])
def test_ct_nodules_are_points_on_the_slice_where_each_is_largest(adapters, tmp_path, two_nodules, with_seg):
    series, findings = two_nodules
    seg = build_segmentation(findings, series) if with_seg else None
    sr = build_measurement_report(findings, series, segmentation=seg)
    paths = [save(ds, tmp_path / f"ct{k:03d}.dcm") for k, ds in enumerate(series)]
    (report,) = read_with_adapters(adapters, [*paths, save(sr, tmp_path / "sr.dcm")])
    assert report["groups"] == 2
    annotations = report["annotations"]
    assert [a["toolType"] for a in annotations] == [PROBE, PROBE], annotations
    for annotation, finding in zip(annotations, findings):
        plane = int(np.argmax(finding.mask.sum(axis=(1, 2))))
        rows, columns = np.nonzero(finding.mask[plane])
        centre = (columns.mean() + 0.5, rows.mean() + 0.5)
        assert annotation["referencedSOPInstanceUID"] == series[plane].SOPInstanceUID
        assert annotation["frameOfReferenceUID"] == series[plane].FrameOfReferenceUID
        assert annotation["description"] == PULMONARY_NODULE.meaning
        assert np.allclose(annotation["image"], [centre], atol=1e-6)
        assert np.allclose(annotation["world"], [patient_position_mm(series[plane], *centre)], atol=1e-4)


def test_ct_point_in_mm_is_a_point_on_the_nearest_slice(adapters, tmp_path):
    volume, _ = chest_ct(seed=2, shape_vox=(16, 32, 32), n_nodules=0)
    series = make_ct_series(volume)
    images = [image_of(ds) for ds in series]
    target = patient_position_mm(series[3], 12.5, 20.5) + np.array([0.0, 0.0, 0.4])  # 0.4 mm off slice 4
    finding = Finding(model="nodule", model_version="1.0.0", code=PULMONARY_NODULE, probability=0.8,
                      threshold=0.5, source=images[0], other_sources=tuple(images[1:]),
                      point_3d_mm=tuple(float(v) for v in target))
    sr = build_measurement_report([finding], series)
    paths = [save(ds, tmp_path / f"ct{k}.dcm") for k, ds in enumerate(series)]
    (report,) = read_with_adapters(adapters, [*paths, save(sr, tmp_path / "sr.dcm")])
    (annotation,) = report["annotations"]
    assert annotation["toolType"] == PROBE
    assert annotation["referencedSOPInstanceUID"] == series[3].SOPInstanceUID
    assert np.allclose(annotation["image"], [(12.5, 20.5)], atol=1e-6)


def test_nodule_reports_keep_the_segment_and_the_3d_centroid(two_nodules):
    """What standard readers use stays: TID 1411 groups with the Referenced Segment or the SCOORD3D
    volume surface, which highdicom's parser reads with their probabilities."""
    series, findings = two_nodules
    seg = build_segmentation(findings, series)
    wanted = (codes.DCM.ReferencedSegment.value, codes.DCM.VolumeSurface.value)
    for segmentation, value_type in ((seg, "IMAGE"), (None, "SCOORD3D")):
        sr = build_measurement_report(findings, series, segmentation=segmentation)
        measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
        for group in measurements.ContentSequence:
            assert group.ContentTemplateSequence[0].TemplateIdentifier == "1411"
            assert [i.ValueType for i in group.ContentSequence
                    if i.ConceptNameCodeSequence[0].CodeValue in wanted] == [value_type]
        parsed = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_volumetric_roi_measurement_groups()
        assert [g.get_measurements()[0].value for g in parsed] == pytest.approx([f.probability for f in findings])
