"""The overlay's Secondary Capture written directly is, element by element, the one highdicom's
SCImage writes (the reference), and valid for dciodvfy; and it costs a few milliseconds."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_gateway.overlay import build_overlay, reference_overlay, render_overlay
from dicom_gateway.sc_image import OverlayImage
from dicom_testdata import make_ct_series, make_photo_dataset
from models.finding import Concept, Finding, SourceImage
from peers import dciodvfy_errors
from test_sr_template import CREATION_TIMES, differences, encoded_alike
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset

TUBERCULOSIS = Concept("56717001", "SCT", "Tuberculosis")
MELANOMA = Concept("372244006", "SCT", "Malignant melanoma of skin")
#: Creation times of the SR comparison, and the SC Image module's (PS3.3 C.8.6.2).
SC_CREATION_TIMES = CREATION_TIMES | {"DateOfSecondaryCapture", "TimeOfSecondaryCapture"}


def image_of(ds) -> SourceImage:
    return SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                       int(ds.Rows), int(ds.Columns), str(ds.get("FrameOfReferenceUID", "")))


def tb_case():
    ds = make_dx_dataset(generate_cxr(np.random.default_rng(5), tb=True).pixels, issuer="CCCD", accession="A1")
    finding = Finding(model="tb", model_version="0.3.0", code=TUBERCULOSIS, probability=0.91, threshold=0.5,
                      source=image_of(ds), point=(120.0, 90.0),
                      heatmap=np.random.default_rng(1).random((14, 14)).astype(np.float32))
    return ds, [finding]


def derm_case():
    ds = make_photo_dataset(np.random.default_rng(2).integers(0, 255, (60, 80, 3), dtype=np.uint8), kind="dermoscopy")
    return ds, [Finding(model="derm", model_version="1.0.0", code=MELANOMA, probability=0.2, threshold=0.77,
                        source=image_of(ds))]


def ct_plane_case():
    series = make_ct_series(np.full((3, 48, 48), 124, np.uint16))
    mask = np.zeros((1, 48, 48), bool)
    mask[0, 20:28, 20:28] = True
    return series[1], [Finding(model="nodule", model_version="2.0.0", code=Concept("786838002", "SCT",
                       "Pulmonary nodule"), probability=0.8, threshold=0.5, source=image_of(series[1]), mask=mask)]


CASES = {"tb-point-heatmap": tb_case, "derm-class": derm_case, "ct-mask-plane": ct_plane_case}


def peaked(rows: int, columns: int, centre, size: int = 14, spread: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    col, row = centre[0] / columns * size, centre[1] / rows * size
    return np.exp(-((xx - col) ** 2 + (yy - row) ** 2) / spread).astype(np.float32)


def golden_cases() -> dict:
    """Overlays whose pictures are pinned by digest: each location kind, a peaked and a flat
    heatmap, two findings, MONOCHROME1 and no window, a colour photograph, a small and a large image."""
    def cxr(size: int, **kwargs):
        return make_dx_dataset(generate_cxr(np.random.default_rng(size), size_px=size, tb=True).pixels, **kwargs)

    def tb(ds, probability=0.91, **location) -> Finding:
        return Finding(model="tb", model_version="0.3.0", code=TUBERCULOSIS, probability=probability,
                       threshold=0.5, source=image_of(ds), **location)

    def point_peaked(size):
        ds = cxr(size)
        centre = (size * 0.3, size * 0.6)
        return ds, [tb(ds, point=centre, heatmap=peaked(size, size, centre))]

    def two_findings():
        ds = cxr(256)
        return ds, [tb(ds, box=(10.0, 20.0, 90.0, 120.0), heatmap=peaked(256, 256, (50, 70), spread=2.0)),
                    tb(ds, 0.2, polygon=((150.0, 150.0), (200.0, 160.0), (170.0, 220.0)),
                       heatmap=peaked(256, 256, (180, 180), 9, 1.5))]

    def monochrome1_unwindowed():
        ds = cxr(192)
        ds.PhotometricInterpretation = "MONOCHROME1"
        del ds.WindowCenter, ds.WindowWidth
        return ds, [tb(ds, heatmap=np.random.default_rng(4).random((7, 7)).astype(np.float32))]

    def photo(kind, photometric):
        rgb = np.random.default_rng(6).integers(0, 255, (64, 96, 3), dtype=np.uint8)
        ds = make_photo_dataset(rgb, kind=kind, photometric=photometric)
        centre = (30.0, 20.0)
        return ds, [Finding(model="derm", model_version="1.0.0", code=MELANOMA, probability=0.9, threshold=0.77,
                            source=image_of(ds), heatmap=peaked(64, 96, centre))]

    def ct_small_signed():
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # signed 16-bit, a file nobody here wrote
        ds.WindowCenter, ds.WindowWidth = 40, 400
        mask = np.zeros((1, ds.Rows, ds.Columns), bool)
        mask[0, 40:70, 50:90] = True
        return ds, [Finding(model="nodule", model_version="2.0.0", code=Concept("786838002", "SCT", "Pulmonary nodule"),
                            probability=0.8, threshold=0.5, source=image_of(ds), mask=mask)]

    return {"tb-point-peaked-256": lambda: point_peaked(256), "tb-point-peaked-1024": lambda: point_peaked(1024),
            "ct-small-signed-windowed": ct_small_signed, "photo-palette": lambda: photo("sc", "PALETTE COLOR"),
            "photo-ybr-422": lambda: photo("photo", "YBR_FULL_422"),
            "tb-flat-heatmap": tb_case, "two-findings": two_findings, "monochrome1-unwindowed": monochrome1_unwindowed,
            "derm-class": derm_case, "ct-mask-plane": ct_plane_case}


@pytest.mark.parametrize("case", sorted(CASES))
def test_overlay_is_highdicoms_sc_element_by_element(case):
    source, findings = CASES[case]()
    uids = {"series_instance_uid": pydicom.uid.generate_uid(), "sop_instance_uid": pydicom.uid.generate_uid()}
    ours, reference = build_overlay(source, findings, **uids), reference_overlay(source, findings, **uids)
    assert isinstance(ours, OverlayImage) and isinstance(ours, hd.sc.SCImage)
    assert differences(ours, reference, SC_CREATION_TIMES) == []
    assert differences(ours.file_meta, reference.file_meta, SC_CREATION_TIMES) == []
    assert encoded_alike(ours, reference, SC_CREATION_TIMES)


def test_source_without_manufacturer_and_type2_values_gives_the_reference():
    source, findings = tb_case()
    for keyword in ("Manufacturer", "PatientSex", "StudyTime", "SpecificCharacterSet", "ReferringPhysicianName"):
        del source[keyword]
    source.PatientBirthDate = "19800102"
    ours, reference = build_overlay(source, findings, sop_instance_uid="1.2.3.4", series_instance_uid="1.2.3.5"), \
        reference_overlay(source, findings, sop_instance_uid="1.2.3.4", series_instance_uid="1.2.3.5")
    assert differences(ours, reference, SC_CREATION_TIMES) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_direct_overlay_is_valid_for_dciodvfy(tmp_path, case):
    source, findings = CASES[case]()
    path = tmp_path / f"{case}.dcm"
    build_overlay(source, findings).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


#: SHA-256 of each golden case's picture as the renderer of revision a1ae474 draws it (full-frame
#: float64 compositing, no lookup table): the faster renderer must draw the very same pixels.
GOLDEN_SHA256 = {
    "tb-point-peaked-256": "14dd5e66634f3b0164541c1ed16bf1e099ee9fbf9996b9a9073890f6773a0706",  # (286, 256, 3)
    "tb-point-peaked-1024": "6c776936a779da8ce33324d44546713f7dcd292758a63c7b8ec94a0dc339fcc7",  # (1116, 1024, 3)
    "ct-small-signed-windowed": "f260f8c5d0eb85ce69ed3e7ec9ba786e2fba868e2ed51d6eb286c81a577b6eaf",  # (182, 128, 3)
    "photo-palette": "ef7fd61d511e01766b9e8830cec964163b786dac0b44c9ca7e3379a8b1cf736a",  # (142, 96, 3)
    "photo-ybr-422": "51a8c8281cafe2aa893046c7b80689296ea8df33a9df88e7cc628b48d5c72a94",  # (142, 96, 3)
    "tb-flat-heatmap": "252d1c25e4f630b5a60a7cfc1fec2a1f7dd69bfe61791f78569e432d90d6163b",  # (286, 256, 3)
    "two-findings": "9bbbfd61dd6970146760709c3720043c5b0e12f5b9d7db3f958958a955a3cacf",  # (286, 256, 3)
    "monochrome1-unwindowed": "4df9503522ddb3a1f8d22b27cc5a50289ec94e291894191a1d7ef7f78adb3c85",  # (222, 192, 3)
    "derm-class": "3347795ae88e5ef161f8b60df86b6230a6ff8fa9f28c1ece18474c987c5d0ff5",  # (150, 80, 3)
    "ct-mask-plane": "9e3a85c23ceec4dd5760aad79e56570d06c31bd0ffd57d49b70caebc50d0f93e",  # (174, 48, 3)
}


@pytest.mark.parametrize("case", sorted(GOLDEN_SHA256))
def test_overlay_picture_is_pixel_for_pixel_the_one_drawn_before(case):
    source, findings = golden_cases()[case]()
    pixels = render_overlay(source, findings)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == GOLDEN_SHA256[case]


def median_ms(build, rounds: int = 9) -> float:
    times_ms = []
    for _ in range(rounds):
        start = time.perf_counter()
        build()
        times_ms.append((time.perf_counter() - start) * 1000)
    return float(np.median(times_ms))


def test_first_overlay_of_a_process_does_not_read_highdicoms_module_table():
    code = ("import sys; sys.path[:0] = ['tests/dicom_gateway', 'tests', '.'];"
            "from test_overlay_fast import tb_case;"
            "from dicom_gateway.overlay import build_overlay;"
            "from highdicom._standard_utils import get_module_attribute_map;"
            "build_overlay(*tb_case());"
            "print(get_module_attribute_map.cache_info().currsize)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0"], run.stdout
