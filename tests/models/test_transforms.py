"""Shared preprocessing and heatmap postprocessing."""
from __future__ import annotations

import numpy as np
import pytest

from models.transforms import heatmap_peak, heatmap_peaks, to_model_input, to_model_input_batch, window


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_any_grayscale_dtype_becomes_float32_in_unit_range(dtype):
    rng = np.random.default_rng(0)
    pixels = (rng.random((300, 200)) * 200).astype(dtype)
    out = to_model_input(pixels, 64)
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_percentile_window_ignores_outliers_and_keeps_orientation():
    pixels = np.tile(np.linspace(0, 1000, 100), (100, 1))
    pixels[0, 0] = 1e6  # a burned-in marker must not squash the window
    out = window(pixels)
    assert out[50, 50] == pytest.approx(0.5, abs=0.02)
    assert out[:, -1].mean() == 1.0 and out[1:, 0].max() == 0.0  # bright stays bright (MONOCHROME2)


def test_constant_image_gives_zeros_and_same_size_is_not_resampled():
    assert not to_model_input(np.full((10, 10), 7, np.uint16), 16).any()
    pixels = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    assert np.array_equal(to_model_input(pixels, 64)[0], window(pixels))


def test_resize_preserves_where_bright_things_are():
    pixels = np.zeros((512, 400), np.uint16)
    pixels[100:150, 300:350] = 4000  # bright square top-right
    out = to_model_input(pixels, 128)[0]
    row, col = np.unravel_index(out.argmax(), out.shape)
    assert 100 / 512 * 128 - 2 <= row <= 150 / 512 * 128 + 2
    assert 300 / 400 * 128 - 2 <= col <= 350 / 400 * 128 + 2


def test_batch_stacks():
    batch = to_model_input_batch([np.eye(20), np.ones((30, 10))], 8)
    assert batch.shape == (2, 1, 8, 8) and batch.dtype == np.float32


@pytest.mark.parametrize(
    "bad, match",
    [(np.zeros((2, 3, 4)), "2D"), (np.array([[np.nan, 1.0]]), "finite"), (np.array([["a"]]), "numeric")],
)
def test_bad_pixels_fail_fast(bad, match):
    with pytest.raises(ValueError, match=match):
        to_model_input(bad, 8)


def test_bad_size_fails_fast():
    with pytest.raises(ValueError, match="`size_px` must be a positive integer, -1 is given"):
        to_model_input(np.zeros((4, 4)), -1)


def test_heatmap_peak_maps_cell_centre_to_source_pixels():
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[2, 5] = 1.0
    col, row = heatmap_peak(heatmap, rows=800, columns=400)
    assert (col, row) == (pytest.approx(5.5 * 50), pytest.approx(2.5 * 100))


def test_heatmap_peak_is_strictly_inside_the_image_at_the_corners():
    for r, c in [(0, 0), (6, 6)]:
        heatmap = np.zeros((1, 7, 7))
        heatmap[0, r, c] = 1.0
        col, row = heatmap_peak(heatmap, rows=5, columns=3)
        assert 0 < col < 3 and 0 < row < 5


def test_heatmap_peaks_batch_matches_single():
    rng = np.random.default_rng(1)
    maps = rng.random((4, 1, 6, 9))
    peaks = heatmap_peaks(maps, 300, 200)
    assert peaks.shape == (4, 2)
    for i in range(4):
        assert tuple(peaks[i]) == heatmap_peak(maps[i, 0], 300, 200)
    with pytest.raises(ValueError, match="heatmaps"):
        heatmap_peaks(np.zeros((3, 3)), 10, 10)
