"""Secondary Capture overlays: valid SC IOD, same patient/study, new series, banner, burnt-in marks."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_gateway.overlay import BANNER, build_overlay, colour_map, render_overlay, save_png
from dicom_gateway.testdata import make_ct_phantom, make_ct_series, make_dx_dataset
from models.finding import Concept, Finding, SourceImage
from peers import dciodvfy_errors
from training.synthetic.cxr import generate_cxr

TUBERCULOSIS = Concept("56717001", "SCT", "Tuberculosis")


def image_of(ds) -> SourceImage:
    return SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                       int(ds.Rows), int(ds.Columns), str(ds.get("FrameOfReferenceUID", "")))


@pytest.fixture(scope="module")
def cxr():
    sample = generate_cxr(np.random.default_rng(3), tb=True)
    return make_dx_dataset(sample.pixels, issuer="CCCD", accession="ACC-7"), sample


def heatmap_at(rows: int, columns: int, centre) -> np.ndarray:
    yy, xx = np.mgrid[0:14, 0:14]
    col, row = centre[0] / columns * 14, centre[1] / rows * 14
    return np.exp(-((xx - col) ** 2 + (yy - row) ** 2) / 4.0).astype(np.float32)


def test_sc_overlay_is_valid_and_in_the_source_study(cxr, tmp_path):
    ds, sample = cxr
    centre = sample.lesion_centres_px[0]
    finding = Finding(model="tb", model_version="1.0.0", code=TUBERCULOSIS, probability=0.83, threshold=0.5,
                      source=image_of(ds), point=tuple(map(float, centre)),
                      heatmap=heatmap_at(ds.Rows, ds.Columns, centre))
    box = Finding(model="tb", model_version="1.0.0", code=TUBERCULOSIS, probability=0.3, threshold=0.5,
                  source=image_of(ds), box=(10.0, 60.0, 90.0, 140.0))
    sc = build_overlay(ds, [finding, box])
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
    assert back.BurnedInAnnotation == "YES"
    assert back.StudyInstanceUID == ds.StudyInstanceUID and back.SeriesInstanceUID != ds.SeriesInstanceUID
    assert (back.PatientID, back.IssuerOfPatientID, back.AccessionNumber) == (ds.PatientID, "CCCD", "ACC-7")
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert "not for diagnosis" in back.SeriesDescription
    pixels = back.pixel_array
    banner = pixels[: max(14, round(ds.Rows * 0.07))]
    red_text = (banner[..., 0] > 200) & (banner[..., 1] < 120)
    assert red_text.sum() > 50, "the banner text is drawn"
    col, row = map(int, centre)
    assert pixels[row, col, 0] != pixels[row, col, 2], "the heatmap is coloured at the finding"
    save_png(back, tmp_path / "overlay.png")


def test_ct_slice_overlay_with_mask(tmp_path):
    volume, mask = make_ct_phantom()
    series = make_ct_series(volume)
    finding = Finding(model="nodule", model_version="0.1.0", code=Concept("27925004", "SCT", "Nodule"),
                      probability=0.9, threshold=0.5, source=image_of(series[4]), mask=mask[4:5])
    sc = build_overlay(series[4], [finding])
    path = tmp_path / "sc-ct.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert tuple(pydicom.dcmread(path).PatientOrientation) == ("L", "P")


def test_overlay_refuses_findings_about_another_image(cxr):
    ds, _ = cxr
    other = make_dx_dataset(np.zeros((ds.Rows, ds.Columns), np.uint16))
    finding = Finding(model="tb", model_version="1", code=TUBERCULOSIS, probability=0.5, threshold=0.5,
                      source=image_of(other))
    with pytest.raises(ValueError, match="build one overlay per source image"):
        render_overlay(ds, [finding])


def test_banner_text_and_colour_map_ends():
    assert BANNER == "AI result \u2014 not for diagnosis"
    ends = colour_map(np.array([0.0, 1.0]))
    assert ends[0, 2] > 0.4 and ends[0, 0] == 0 and ends[1, 0] > 0.4 and ends[1, 2] == 0
