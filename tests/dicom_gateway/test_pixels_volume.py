"""Preprocessing shared by all routes: VOI LUT, MONOCHROME1, spacing, CT volume assembly."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_gateway.pixels import (VolumeError, ct_volume, grayscale_image, pixel_spacing_mm, sort_slices,
                                  windowed_image)
from dicom_testdata import make_ct_series


def _series(n=6, size=16):
    volume = np.arange(n * size * size, dtype=np.uint16).reshape(n, size, size) % 3000
    return volume, make_ct_series(volume)


def test_volume_is_sorted_along_the_normal_with_hu_and_spacing():
    volume, series = _series()
    shuffled = [series[i] for i in (3, 0, 5, 1, 4, 2)]
    out, spacing_mm, ordered = ct_volume(shuffled)
    assert [ds.InstanceNumber for ds in ordered] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(out, volume.astype(np.float32) + float(series[0].RescaleIntercept))
    assert spacing_mm[0] == pytest.approx(float(series[1].ImagePositionPatient[2]))
    assert spacing_mm[1:] == [float(v) for v in series[0].PixelSpacing]


def test_feet_first_normal_sorts_by_projection_not_by_z():
    _, series = _series(3)
    for ds in series:  # orientation with a flipped normal: ascending along it is descending z
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    assert [ds.InstanceNumber for ds in sort_slices(series)] == [3, 2, 1]


def test_mixed_sizes_and_orientations_are_errors():
    _, series = _series(3)
    odd = make_ct_series(np.zeros((1, 8, 8), np.uint16))[0]
    odd.ImagePositionPatient = [0, 0, 99]
    with pytest.raises(VolumeError, match="mixed sizes"):
        sort_slices(series + [odd])
    series[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(VolumeError, match="mixed orientations"):
        sort_slices(series)


def test_duplicate_positions_are_an_error():
    _, series = _series(2)
    series[1].ImagePositionPatient = series[0].ImagePositionPatient
    with pytest.raises(VolumeError, match="same position"):
        sort_slices(series)


def test_voi_window_and_monochrome1():
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400
    shown = windowed_image(ds)
    hu = grayscale_image(ds)
    assert shown.shape == hu.shape and shown.min() == 0.0 and shown.max() == 1.0
    expected = np.clip((hu - (40 - 0.5 - 399 / 2)) / 399, 0, 1)
    np.testing.assert_allclose(shown, expected, atol=1e-5)
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(windowed_image(ds), 1.0 - shown, atol=1e-6)


def test_pixel_spacing_kept():
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    assert pixel_spacing_mm(ds) == tuple(float(v) for v in ds.PixelSpacing)
    del ds.PixelSpacing
    assert pixel_spacing_mm(ds) is None


def test_colour_images_become_grayscale():
    ds = dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    assert grayscale_image(ds).ndim == 2
