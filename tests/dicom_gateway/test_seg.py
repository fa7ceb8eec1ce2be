"""SEG of 3D-mask findings over a generated CT series, and SRs with every location kind.

Every object written here is checked with dciodvfy (no Error lines) and SRs with dsrdump.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from scipy import ndimage

from dicom_gateway.seg import build_segmentation
from dicom_gateway.sr import build_measurement_report, mask_centroid_mm
from dicom_testdata import chest_ct, make_ct_series
from models.finding import Concept, Finding, SourceImage
from peers import dciodvfy_errors, find_peer
from training.synthetic.dicom import make_dx_dataset

NODULE = Concept(codes.SCT.Nodule.value, "SCT", codes.SCT.Nodule.meaning)
TUBERCULOSIS = Concept("56717001", "SCT", "Tuberculosis")
#: The nodule model's finding: a disorder (SCT 786838002), as in models/nodule/1.0.0/metadata.json.
PULMONARY_NODULE = Concept("786838002", "SCT", "Pulmonary nodule")


def image_of(ds: pydicom.Dataset) -> SourceImage:
    return SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                       int(ds.Rows), int(ds.Columns), str(ds.get("FrameOfReferenceUID", "")))


@pytest.fixture(scope="module")
def ct():
    volume, sample = chest_ct(seed=6)  # one solid spherical nodule of about 7 mm
    mask = sample.nodule_mask
    series = make_ct_series(volume, issuer="VN-MOH")
    images = [image_of(ds) for ds in series]
    finding = Finding(model="nodule", model_version="0.1.0", code=NODULE, probability=0.91, threshold=0.5,
                      source=images[0], other_sources=tuple(images[1:]), mask=mask)
    return series, finding, mask


def save(obj, path) -> str:
    obj.save_as(path, enforce_file_format=True)
    return str(path)


def test_ct_series_is_a_valid_ct_iod(ct, tmp_path):
    series, _, _ = ct
    assert len({ds.FrameOfReferenceUID for ds in series}) == 1
    assert dciodvfy_errors(save(series[0], tmp_path / "ct.dcm")) == []


def test_segmentation_references_sources_and_describes_the_nodule(ct, tmp_path):
    series, finding, mask = ct
    seg = build_segmentation([finding], series)
    path = save(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.Modality == "SEG" and back.SegmentationType == "BINARY"
    assert back.StudyInstanceUID == series[0].StudyInstanceUID
    assert back.SeriesInstanceUID != series[0].SeriesInstanceUID
    assert back.PatientID == series[0].PatientID and back.IssuerOfPatientID == "VN-MOH"
    (segment,) = back.SegmentSequence
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == NODULE.value
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "nodule" and algorithm.AlgorithmVersion == "0.1.0"
    referenced = {i.ReferencedSOPInstanceUID for i in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in series}
    # only the slices the nodule touches have frames, and they round-trip exactly
    import highdicom as hd

    planes = hd.seg.segread(path).get_volume(combine_segments=True).array
    assert planes.astype(bool).sum() == mask.sum()


def test_sr_references_the_segment(ct, tmp_path):
    series, finding, _ = ct
    seg = build_segmentation([finding], series)
    sr = build_measurement_report([finding], series, segmentation=seg)
    path = save(sr, tmp_path / "sr-seg.dcm")
    assert dciodvfy_errors(path) == []
    dump = subprocess.run([find_peer("dsrdump") or "dsrdump", path], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "Referenced Segment" in dump.stdout and "Nodule" in dump.stdout


def test_sr_without_seg_has_a_scoord3d_centroid(ct, tmp_path):
    series, finding, _ = ct
    sr = build_measurement_report([finding], series)
    path = save(sr, tmp_path / "sr-3d.dcm")
    assert dciodvfy_errors(path) == []
    centroid = mask_centroid_mm(finding, {ds.SOPInstanceUID: ds for ds in series})
    # (x, y, z) in the patient: the mask's mean column, row and slice (0.8 mm pixels, 2.5 mm slices)
    z, y, x = np.argwhere(finding.mask).mean(axis=0)
    assert np.allclose(centroid, [x * 0.8, y * 0.8, z * 2.5], atol=0.01)
    dump = subprocess.run([find_peer("dsrdump") or "dsrdump", path], capture_output=True, text=True)
    assert "SCOORD3D" in dump.stdout


def test_multi_finding_sr_with_box_polygon_and_3d_point(tmp_path):
    ds = make_dx_dataset(np.full((96, 80), 1000, np.uint16))
    image = image_of(ds)
    ct_volume, _ = chest_ct()
    ct_slice = make_ct_series(ct_volume, study_uid=ds.StudyInstanceUID)[4]
    ct_image = image_of(ct_slice)
    common = dict(model="tb", model_version="1.0.0", code=TUBERCULOSIS, threshold=0.5)
    findings = [
        Finding(probability=0.8, source=image, box=(10.0, 12.0, 40.0, 50.0), **common),
        Finding(probability=0.3, source=image, polygon=((5.0, 5.0), (30.0, 8.0), (20.0, 30.0)), **common),
        Finding(probability=0.6, source=image, point=(12.5, 40.0), **common),
        Finding(probability=0.7, source=ct_image, point_3d_mm=(16.0, 19.2, 10.0), **common),
        Finding(probability=0.2, source=image, **common),
    ]
    sr = build_measurement_report(findings, [ds, ct_slice])
    path = save(sr, tmp_path / "sr-multi.dcm")
    assert dciodvfy_errors(path) == []
    dump = subprocess.run([find_peer("dsrdump") or "dsrdump", path], capture_output=True, text=True)
    assert dump.returncode == 0
    # each 2D region twice: the group's Image Region, and the region its probability NUM is inferred from
    assert dump.stdout.count("POLYLINE") == 4 and "SCOORD3D" in dump.stdout


@pytest.mark.parametrize("kwargs, message", [
    ({"box": (40.0, 10.0, 10.0, 50.0)}, "box must be"),
    ({"polygon": ((1.0, 1.0), (2.0, 2.0))}, "polygon must have at least 3"),
    ({"point": (1.0, 1.0), "box": (1.0, 1.0, 2.0, 2.0)}, "at most one location"),
    ({"point_3d_mm": (1.0, 2.0, 3.0)}, "frame_of_reference_uid"),
    ({"box": (0.0, 0.0, 500.0, 10.0)}, "outside"),
])
def test_bad_locations_are_refused(kwargs, message):
    image = SourceImage("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1", 96, 80)
    with pytest.raises(ValueError, match=message):
        Finding(model="tb", model_version="1", code=TUBERCULOSIS, probability=0.5, threshold=0.5,
                source=image, **kwargs)


def test_segmentation_refuses_findings_without_mask(ct):
    series, finding, _ = ct
    from dataclasses import replace

    with pytest.raises(ValueError, match="with a mask"):
        build_segmentation([replace(finding, mask=None, other_sources=())], series)


@pytest.fixture(scope="module")
def two_nodules():
    """A 20-slice series with a nodule on slices 10-14 and another on slices 17-18."""
    volume, sample = chest_ct(seed=3, shape_vox=(20, 64, 64), n_nodules=2)
    labels, count = ndimage.label(sample.nodule_mask)
    assert count == 2, f"the two nodules must not touch, {count} regions are drawn"
    first, second = labels == 1, labels == 2
    series = make_ct_series(volume)
    images = [image_of(ds) for ds in series]
    findings = [Finding(model="nodule", model_version="1.0.0", code=PULMONARY_NODULE, probability=p,
                        threshold=0.5, source=images[0], other_sources=tuple(images[1:]), mask=mask)
                for p, mask in ((0.97, first), (0.93, second))]
    return series, findings


def referenced_images(item: pydicom.Dataset, concept: str) -> list[str]:
    """SOP Instance UIDs of the IMAGE items named ``concept`` anywhere under ``item``."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "IMAGE" and child.ConceptNameCodeSequence[0].CodeValue == concept:
            found.append(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        found += referenced_images(child, concept)
    return found


@pytest.mark.parametrize("with_seg", [True, False], ids=["segment", "centroid"])
def test_each_nodule_group_references_only_the_slices_it_is_on(two_nodules, with_seg, tmp_path):
    series, findings = two_nodules
    seg = build_segmentation(findings, series) if with_seg else None
    sr = build_measurement_report(findings, series, segmentation=seg)
    path = save(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    root = pydicom.dcmread(path)
    measurements = next(i for i in root.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    uids = [ds.SOPInstanceUID for ds in series]
    assert [list(np.flatnonzero(f.mask.any(axis=(1, 2)))) for f in findings] == [[10, 11, 12, 13, 14], [17, 18]]
    for group, finding in zip(measurements.ContentSequence, findings):
        slices = [uids[k] for k in np.flatnonzero(finding.mask.any(axis=(1, 2)))]
        # Source of Measurement (121112) of the probability: the nodule's slices, not slice 1
        assert referenced_images(group, "121112") == slices
        # Source images for segmentation (121233) of the segment or volume surface: those slices only
        assert referenced_images(group, "121233") == slices


def test_segment_is_a_nodule_morphology_in_the_lung_with_a_display_colour(two_nodules, tmp_path):
    series, findings = two_nodules
    path = save(build_segmentation(findings, series), tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    segments = pydicom.dcmread(path).SegmentSequence
    for segment in segments:
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        kind = segment.SegmentedPropertyTypeCodeSequence[0]
        region = segment.AnatomicRegionSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
        assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == ("27925004", "SCT", "Nodule")
        assert (region.CodeValue, region.CodingSchemeDesignator) == (codes.SCT.Lung.value, "SCT")
        assert len(segment.RecommendedDisplayCIELabValue) == 3
    assert segments[0].RecommendedDisplayCIELabValue != segments[1].RecommendedDisplayCIELabValue
