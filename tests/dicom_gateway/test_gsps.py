"""GSPS of findings: dciodvfy clean, and DCMTK's dcmp2pgm applies it to the source image, with the
annotation (graphic objects and the activated overlay) where the finding is."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from PIL import Image

from dicom_gateway.gsps import POINT_RING_PX, build_presentation_state, caption
from models.finding import Concept, Finding, SourceImage
from peers import DCMTK_ENV, dciodvfy_errors, require_peer
from training.synthetic.dicom import make_dx_dataset

TB = Concept("56717001", "SCT", "Tuberculosis")


def dx(**kwargs):
    pixels = (np.random.default_rng(0).random((256, 240)) * 3000).astype(np.uint16)
    return make_dx_dataset(pixels, **kwargs)


def finding(ds, **location) -> Finding:
    source = SourceImage(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                         sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID, rows=int(ds.Rows),
                         columns=int(ds.Columns))
    return Finding(model="tb", model_version="1.1.0", code=TB, probability=0.87, threshold=0.5, source=source,
                   **location)


def gsps_of(findings, ds):
    return build_presentation_state(findings, ds, series_instance_uid="1.2.826.0.1.3680043.8.498.1",
                                    sop_instance_uid="1.2.826.0.1.3680043.8.498.2")


def render(tmp_path, ds, gsps):
    """dcmp2pgm's picture of ``ds`` under ``gsps``, the overlay plane it wrote, and its report."""
    ds.save_as(tmp_path / "source.dcm", enforce_file_format=True)
    gsps.save_as(tmp_path / "gsps.dcm", enforce_file_format=True)
    run = subprocess.run([require_peer("dcmp2pgm", "dcmtk"), "-v", "-p", "gsps.dcm", "source.dcm", "out.pgm"],
                         cwd=tmp_path, env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    overlays = sorted(tmp_path.glob("ovl_*.pgm"))
    overlay = np.asarray(Image.open(overlays[0])) > 0 if overlays else None
    return np.asarray(Image.open(tmp_path / "out.pgm")), overlay, run.stdout + run.stderr


def test_a_point_finding_is_drawn_where_it_is_and_the_object_is_valid(tmp_path):
    ds = dx()
    gsps = gsps_of([finding(ds, point=(100.0, 80.0))], ds)
    gsps.save_as(tmp_path / "check.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "check.dcm") == []
    picture, overlay, report = render(tmp_path, ds, gsps)
    assert picture.shape == (256, 240)
    assert "type=circle" in report and "100\\80" in report  # the graphic annotation, in source pixels
    assert "p=0.870 (positive)" in report and "not for clinical use" in report.lower()
    assert "Number of activated overlays: 1" in report
    rows, columns = np.nonzero(overlay)
    distance = np.hypot(columns - 100.0, rows - 80.0)
    assert distance.min() >= POINT_RING_PX - 2 and distance.max() <= POINT_RING_PX + 2  # the ring, nothing else


@pytest.mark.parametrize("point", [(235.0, 80.0), (239.5, 255.0), (0.0, 0.0)])
def test_a_point_at_the_images_edge_keeps_its_ring_inside(tmp_path, point):
    """A finding near the right edge put the ring's second point past Columns: highdicom refused the
    GSPS and the whole study's processing failed (seen once with a generated radiograph)."""
    ds = dx()  # 240 columns
    gsps = gsps_of([finding(ds, point=point)], ds)
    gsps.save_as(tmp_path / "edge.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "edge.dcm") == []
    circle = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    (c0, r0), (c1, r1) = np.reshape(circle.GraphicData, (2, 2))
    assert (c0, r0) == point and 0.0 <= c1 <= 240.0 and abs(c1 - c0) == POINT_RING_PX


def test_boxes_and_polygons_are_outlined(tmp_path):
    ds = dx()
    box = finding(ds, box=(20.0, 30.0, 60.0, 90.0))
    polygon = finding(ds, polygon=((150.0, 150.0), (200.0, 150.0), (175.0, 200.0)))
    _, overlay, report = render(tmp_path, ds, gsps_of([box, polygon], ds))
    assert report.count("type=polyline") == 2
    assert overlay[30, 20:61].all() and overlay[30:91, 60].all()  # two edges of the box
    assert overlay[150, 150:201].all() and not overlay[100, 100]  # the polygon's top edge; inside stays clear


def test_a_finding_without_a_location_gets_the_text_only(tmp_path):
    ds = dx()
    gsps = gsps_of([finding(ds)], ds)
    assert "OverlayData" not in gsps and (0x6000, 0x3000) not in gsps
    _, overlay, report = render(tmp_path, ds, gsps)
    assert overlay is None and "Number of graphic objects: 0" in report and "p=0.870" in report


def test_the_window_is_the_sources_or_the_range_of_its_values():
    windowed = dx()
    windowed.WindowCenter, windowed.WindowWidth = 1500, 1000
    voi = gsps_of([finding(windowed)], windowed).SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (1500.0, 1000.0)
    plain = dx()
    for keyword in ("WindowCenter", "WindowWidth"):
        plain.pop(keyword, None)
    voi = gsps_of([finding(plain)], plain).SoftcopyVOILUTSequence[0]
    values = plain.pixel_array
    assert float(voi.WindowWidth) == pytest.approx(float(values.max()) - float(values.min()), rel=1e-3)


@pytest.mark.parametrize("body_part, image_laterality, expected", [
    ("CHEST", None, None), ("HAND", "L", "L"), ("", None, ""), ("HAND", "U", None)])
def test_laterality_follows_the_source(body_part, image_laterality, expected):
    ds = dx()
    for keyword in ("BodyPartExamined", "ImageLaterality", "Laterality"):
        ds.pop(keyword, None)
    if body_part:
        ds.BodyPartExamined = body_part
    if image_laterality:
        ds.ImageLaterality = image_laterality
    gsps = gsps_of([finding(ds)], ds)
    if expected is None:
        assert "Laterality" not in gsps
    else:
        assert "Laterality" in gsps and (gsps.Laterality or "") == expected


def test_a_colour_image_gets_none_and_bad_findings_are_refused():
    ds = dx()
    other = dx()
    assert "NOT FOR CLINICAL USE" in caption([finding(ds)]).upper()
    with pytest.raises(ValueError, match="not about the source"):
        gsps_of([finding(other)], ds)
    with pytest.raises(ValueError, match="at least one finding"):
        gsps_of([], ds)
    ds.PhotometricInterpretation = "RGB"
    assert gsps_of([finding(ds)], ds) is None
