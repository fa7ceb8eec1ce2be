"""Secondary Capture overlays: valid SC IOD, same patient/study, new series, banner, burnt-in marks."""
from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest

from dicom_gateway.overlay import BANNER, banner_height_px, build_overlay, colour_map, render_overlay, save_png
from dicom_testdata import chest_ct, make_ct_series
from models.finding import Concept, Finding, SourceImage
from peers import dciodvfy_errors
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset

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
    assert "not for clinical use" in back.SeriesDescription
    assert "not for clinical use" in back.DerivationDescription
    pixels = back.pixel_array
    top = banner_height_px(ds.Rows, ds.Columns, [finding, box])
    assert back.Rows == ds.Rows + top and back.Columns == ds.Columns, "the banner is a border above the image"
    red_text = (pixels[:top, :, 0] > 200) & (pixels[:top, :, 1] < 120)
    assert red_text.sum() > 50, "the banner text is drawn"
    col, row = map(int, centre)
    assert pixels[top + row, col, 0] != pixels[top + row, col, 2], "the heatmap is coloured at the finding"
    save_png(back, tmp_path / "overlay.png")


def test_ct_slice_overlay_with_mask(tmp_path):
    volume, sample = chest_ct(seed=6)
    series, k = make_ct_series(volume), round(sample.nodules[0].centre_vox[0])  # the nodule's middle slice
    finding = Finding(model="nodule", model_version="0.1.0", code=Concept("27925004", "SCT", "Nodule"),
                      probability=0.9, threshold=0.5, source=image_of(series[k]), mask=sample.nodule_mask[k:k + 1])
    sc = build_overlay(series[k], [finding])
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
    assert BANNER == "AI result - NOT FOR CLINICAL USE"
    ends = colour_map(np.array([0.0, 1.0]))
    assert ends[0, 2] > 0.4 and ends[0, 0] == 0 and ends[1, 0] > 0.4 and ends[1, 2] == 0


def test_banner_is_a_border_that_leaves_every_image_pixel_and_stays_legible_on_small_images():
    ds = make_dx_dataset(np.full((64, 64), 2000, np.uint16))
    finding = Finding(model="tb", model_version="1.1.0", code=TUBERCULOSIS, probability=0.7, threshold=0.5,
                      source=image_of(ds))
    pixels = render_overlay(ds, [finding])
    top = banner_height_px(64, 64, [finding])
    assert pixels.shape == (64 + top, 64, 3)
    image = pixels[top:]
    assert (image == image[0, 0]).all(), "nothing is burnt over the image itself"
    rows_with_text = np.flatnonzero(((pixels[:top, :, 0] > 200) & (pixels[:top, :, 1] < 120)).any(axis=1))
    assert rows_with_text.size >= 7, "the banner's letters are at least 7 pixels tall on a 64x64 image"


def test_laterality_is_absent_for_unpaired_parts_and_copied_for_paired_ones(cxr, tmp_path):
    ds, _ = cxr
    finding = Finding(model="tb", model_version="1.0.0", code=TUBERCULOSIS, probability=0.3, threshold=0.5,
                      source=image_of(ds))
    assert ds.ImageLaterality == "U" and "Laterality" not in ds
    sc = build_overlay(ds, [finding])
    assert "Laterality" not in sc, "Type 2C: absent when the body part is not paired"
    assert sc.BodyPartExamined == "CHEST", "copied, so a receiver can tell the part is unpaired"
    paired = copy.deepcopy(ds)
    paired.Laterality = "L"
    assert build_overlay(paired, [finding]).Laterality == "L"
    unknown = copy.deepcopy(ds)
    del unknown.BodyPartExamined, unknown.ImageLaterality
    unknown_sc = build_overlay(unknown, [finding])
    assert unknown_sc.Laterality == "", "Type 2: empty when the part is not known"
    skin = copy.deepcopy(ds)  # a photo of the skin of the trunk: the part is unpaired, the body part says not
    skin.BodyPartExamined, skin.ImageLaterality = "SKIN", "U"
    skin_sc = build_overlay(skin, [finding])
    assert "Laterality" not in skin_sc and skin_sc.ImageLaterality == "U"
    for name, obj in (("unpaired", sc), ("unknown", unknown_sc), ("skin", skin_sc)):
        path = tmp_path / f"sc-{name}.dcm"
        obj.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], name


@pytest.mark.parametrize("value", ["YES", "NO", None])
def test_recognizable_visual_features_are_copied_from_the_source(cxr, value):
    ds, _ = cxr
    source = copy.deepcopy(ds)
    if value is None:
        source.pop("RecognizableVisualFeatures", None)
    else:
        source.RecognizableVisualFeatures = value
    finding = Finding(model="tb", model_version="1.0.0", code=TUBERCULOSIS, probability=0.3, threshold=0.5,
                      source=image_of(source))
    sc = build_overlay(source, [finding])
    assert sc.get("RecognizableVisualFeatures") == value


def colour_photo(photometric: str):
    """A 48x64 8-bit colour picture (red left half, blue right half) in ``photometric``."""
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)
    rgb[:, 32:] = (30, 30, 200)
    ds = make_dx_dataset(np.zeros((48, 64), np.uint16))
    for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "RescaleType"):
        ds.pop(keyword, None)
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    pixels = convert_color_space(rgb, "RGB", "YBR_FULL") if photometric == "YBR_FULL" else rgb
    ds.PixelData = pixels.tobytes()
    return ds, rgb


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_sources_keep_their_colours(photometric, tmp_path):
    ds, rgb = colour_photo(photometric)
    finding = Finding(model="derm", model_version="1.0.0", code=Concept("372244006", "SCT", "Malignant melanoma"),
                      probability=0.4, threshold=0.77, source=image_of(ds))
    sc = build_overlay(ds, [finding])
    top = banner_height_px(48, 64, [finding])
    shown = sc.pixel_array[top:].astype(int)
    assert np.abs(shown[24, 10] - rgb[24, 10]).max() <= 2 and np.abs(shown[24, 50] - rgb[24, 50]).max() <= 2
    path = tmp_path / "sc-colour.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_a_12_bit_jpeg_source_is_decoded_by_dcmtk(tmp_path):
    """The overlay writer read ``ds.pixel_array``, which pydicom's plugins cannot give for 12-bit JPEG
    Extended: the DX was accepted and inferred, then its study failed in the overlay writer."""
    import subprocess

    from peers import DCMTK_ENV, require_peer

    require_peer("dcmdjpeg", "dcmtk")
    y, x = np.mgrid[0:96, 0:128]
    source, target = tmp_path / "dx.dcm", tmp_path / "dx-jpeg12.dcm"
    make_dx_dataset((2048 + 1500 * np.sin(x / 9.0) * np.cos(y / 13.0)).astype(np.uint16)).save_as(
        source, enforce_file_format=True)
    subprocess.run([require_peer("dcmcjpeg", "dcmtk"), "+ee", str(source), str(target)], env=DCMTK_ENV,
                   check=True, capture_output=True, timeout=60)
    ds = pydicom.dcmread(target)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    finding = Finding(model="tb", model_version="1.0.0", code=TUBERCULOSIS, probability=0.6, threshold=0.5,
                      source=image_of(ds), heatmap=heatmap_at(96, 128, (64, 48)))
    sc = build_overlay(ds, [finding])
    shown = sc.pixel_array[banner_height_px(96, 128, [finding]):]
    assert shown.shape == (96, 128, 3) and shown.std() > 10, "the radiograph itself, not a blank"
    path = tmp_path / "sc-jpeg12.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize(("kind", "photometric"), [("photo", "RGB"), ("photo", "YBR_FULL_422"), ("dermoscopy", "RGB"),
                                                   ("microscopic", "RGB"), ("sc", "PALETTE COLOR")])
def test_photo_overlays_are_dciodvfy_clean(tmp_path, kind, photometric):
    """General Series Laterality (PS3.3 C.7.3.1) is Type 2C: required for a paired part when Image
    Laterality is not sent.  dciodvfy asks for it unless Image Laterality is present or Body Part Examined
    is a part its tables know as unpaired (CHEST is, SKIN is not): a skin photo's overlay carries the
    source's Image Laterality U and no Laterality."""
    from dicom_testdata import make_photo_dataset

    y, x = np.mgrid[0:48, 0:48]
    rgb = np.stack([200 - x, 150 + y // 2, 120 + (x + y) // 3], axis=-1).astype(np.uint8)
    path = tmp_path / "photo.dcm"
    make_photo_dataset(rgb, kind=kind, photometric=photometric).save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    finding = Finding(model="derm", model_version="1.0.0", code=Concept("372244006", "SCT", "Malignant melanoma"),
                      probability=0.4, threshold=0.77, source=image_of(ds))
    sc = build_overlay(ds, [finding])
    assert "Laterality" not in sc and sc.ImageLaterality == "U"
    out = tmp_path / "sc.dcm"
    sc.save_as(out, enforce_file_format=True)
    assert dciodvfy_errors(out) == []
