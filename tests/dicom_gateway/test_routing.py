"""The default routing rules: skin photographs of every SOP class a dermatology camera writes go to derm."""
from __future__ import annotations

import numpy as np
import pytest

from dicom_gateway.config import DicomConfig
from dicom_gateway.routing import DEFAULT_RULES, SINGLE_IMAGE_MODALITIES, routes, rules_from_config
from dicom_testdata import make_ct_series, make_photo_dataset
from training.synthetic.dicom import make_dx_dataset

SKIN = np.full((16, 16, 3), 180, np.uint8)


@pytest.mark.parametrize("kind", ["photo", "dermoscopy", "microscopic", "sc", "video", "multiframe"])
def test_skin_photographs_go_to_derm(kind):
    frames = np.stack([SKIN] * 2) if kind in ("video", "multiframe") else SKIN
    assert routes(make_photo_dataset(frames, kind=kind)) == ("derm",)


def test_vl_microscopic_goes_to_derm_only_for_the_skin():
    ds = make_photo_dataset(SKIN, kind="microscopic")
    ds.BodyPartExamined = "LIVER"  # a pathology slide photographed as VL Microscopic Image
    assert routes(ds) == ()


def test_the_other_routes_are_unchanged():
    assert routes(make_dx_dataset(np.zeros((8, 8), np.uint16))) == ("tb",)
    assert routes(make_ct_series(np.zeros((2, 8, 8), np.uint16))[0]) == ("nodule",)


def test_dermoscopy_completes_at_release_like_other_single_images():
    assert "DMS" in SINGLE_IMAGE_MODALITIES


def test_the_config_default_is_the_gateway_default():
    """DEFAULT_RULES are dicom.routes' default (dicom_gateway/config.py, the one place it is written)."""
    assert rules_from_config([r.model_dump(exclude_none=True) for r in DicomConfig().routes]) == DEFAULT_RULES
