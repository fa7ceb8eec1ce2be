"""Skin photographs to a colour model's input: RGB, JPEG YBR_FULL_422, PALETTE COLOR; refusals.

The derm model takes ``(3, S, S)`` RGB; the gateway used to hand it the luminance, ``(1, S, S)``,
and the replica failed every study ("index: 1 Got: 1 Expected: 3").
"""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from dicom_gateway.pixels import PixelDataError, grayscale_image, model_input, rgb_image
from dicom_testdata import make_photo_dataset
from models.derm.preprocess import to_derm_input


def _photo(rows: int = 60, columns: int = 80) -> np.ndarray:
    """A smooth skin-like photograph with a dark lesion (smooth, so JPEG keeps it close)."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    lesion = np.exp(-(((y - rows / 2) / (rows / 5)) ** 2 + ((x - columns / 2) / (columns / 5)) ** 2))
    rgb = np.stack([215 - 120 * lesion, 170 - 110 * lesion, 150 - 100 * lesion + 0.3 * x], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _round_trip(ds):
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("kind, photometric, tolerance", [
    ("photo", "RGB", 0), ("photo", "YBR_FULL_422", 12), ("sc", "RGB", 0), ("sc", "PALETTE COLOR", 12)])
def test_colour_photographs_reach_the_model_as_rgb(kind, photometric, tolerance):
    rgb = _photo()
    ds = _round_trip(make_photo_dataset(rgb, kind=kind, photometric=photometric))
    got = rgb_image(ds)
    assert got.dtype == np.uint8 and got.shape == rgb.shape
    error = np.abs(got.astype(int) - rgb.astype(int))
    assert error.mean() <= tolerance / 3 and np.percentile(error, 99) <= tolerance + 2, (error.mean(), error.max())
    item = model_input(ds, 96, channels=3)
    assert item.shape == (3, 96, 96) and item.dtype == np.float32
    np.testing.assert_allclose(item, to_derm_input(got, 96), atol=1e-6)  # what the HTTP upload path gives


def test_ybr_422_is_converted_once():
    """A red lesion stays red: YCbCr read as RGB (or converted twice) turns it green/purple."""
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 40
    got = rgb_image(_round_trip(make_photo_dataset(rgb, photometric="YBR_FULL_422")))
    assert np.abs(got.mean(axis=(0, 1)) - [200, 40, 0]).max() < 8, got.mean(axis=(0, 1))


@pytest.mark.parametrize("kind", ["photo", "sc"])
def test_monochrome_for_a_colour_model_is_refused_by_name(kind):
    ds = _round_trip(make_photo_dataset(_photo(), kind=kind, photometric="MONOCHROME2"))
    with pytest.raises(PixelDataError, match="colour .*MONOCHROME2 is given"):
        model_input(ds, 96, channels=3)
    assert model_input(ds, 96, channels=1).shape == (1, 96, 96)  # a grayscale model takes it


@pytest.mark.parametrize("kind", ["video", "multiframe"])
def test_multiframe_photo_is_refused_by_name(kind):
    ds = _round_trip(make_photo_dataset(np.stack([_photo()] * 3), kind=kind))
    for channels in (1, 3):
        with pytest.raises(PixelDataError, match="Number of Frames 3 is given"):
            model_input(ds, 96, channels=channels)


def test_colour_for_a_grayscale_model_is_its_luminance():
    rgb = _photo()
    ds = _round_trip(make_photo_dataset(rgb))
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(grayscale_image(ds), luma, atol=1e-3)
    assert model_input(ds, 64).shape == (1, 64, 64)


def test_channels_other_than_one_or_three_are_refused():
    with pytest.raises(ValueError, match="`channels` must be 1 .* 2 is given"):
        model_input(make_photo_dataset(_photo()), 64, channels=2)
