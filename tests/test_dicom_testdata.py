"""The tests' DICOM test data: skin photographs of every SOP class the derm route takes and the CT
series are valid for dicom3tools ``dciodvfy``; the chest CT is the project's phantom in stored values."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from dicom_testdata import (CT_RESCALE_INTERCEPT_HU, CT_SPACING_MM, PHOTO_SOP_CLASSES, chest_ct, make_photo_dataset,
                            stored_values)
from training.synthetic.ct import generate_ct

needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None,
    reason="dicom3tools dciodvfy not installed (make test installs it when root)",
)


def dciodvfy(path) -> list[str]:
    """The lines dciodvfy prints about ``path`` (it reports on stderr, the IOD name on stdout)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return (run.stdout + run.stderr).splitlines()


def test_chest_ct_is_the_synthetic_phantom_in_stored_values():
    volume, sample = chest_ct(seed=6)
    again = generate_ct(np.random.default_rng(6), (16, 64, 64), CT_SPACING_MM, 1)
    np.testing.assert_array_equal(volume.astype(np.int32) + CT_RESCALE_INTERCEPT_HU, again.volume_hu)
    assert volume.dtype == np.uint16 and len(sample.nodules) == 1 and sample.nodule_mask.any()
    assert stored_values(np.array([-2000, -1024, 3071, 5000])).tolist() == [0, 0, 4095, 4095]


def _skin(frames: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:48, 0:48]
    rgb = np.stack([200 - x, 150 + y // 2, 120 + (x + y) // 3], axis=-1).astype(np.uint8)  # full 16-bit palette
    return np.stack([rgb] * frames) if frames else rgb


@needs_dciodvfy
@pytest.mark.parametrize(("kind", "photometric", "iod"), [
    ("photo", "RGB", "VLPhotographicImage"),
    ("photo", "YBR_FULL_422", "VLPhotographicImage"),
    ("dermoscopy", "RGB", "DermoscopicPhotographyImage"),
    ("microscopic", "RGB", "VLMicroscopicImage"),
    ("sc", "PALETTE COLOR", "SCImage"),
    ("sc", "MONOCHROME2", "SCImage"),
    ("video", "RGB", "VideoPhotographicImage"),
    ("multiframe", "RGB", "MultiframeTrueColorSCImage"),
])
def test_photographs_are_valid_for_dciodvfy(tmp_path, kind, photometric, iod):
    """Skin photographs of each SOP class the derm route takes: no Error line, and dciodvfy knows the
    IOD (Dermoscopic Photography included; its 2022 tables do not yet list Modality DMS, a Warning)."""
    from dicom_testdata import PHOTO_SOP_CLASSES, make_photo_dataset

    ds = make_photo_dataset(_skin(3 if kind in ("video", "multiframe") else 0), kind=kind, photometric=photometric)
    assert ds.SOPClassUID == PHOTO_SOP_CLASSES[kind]
    path = tmp_path / f"{kind}.dcm"
    ds.save_as(path, enforce_file_format=True)
    lines = dciodvfy(path)
    assert lines[0] == iod, lines
    assert not [line for line in lines if "Error" in line], "\n".join(lines)
    assert "Laterality" not in ds and ds.ImageLaterality == "U", "an unpaired part: Type 2C Laterality absent"
    if kind == "dermoscopy":
        assert ds.Modality == "DMS" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.7"
