"""The synthetic chest radiograph generator: determinism, value range, lesion placement."""
from __future__ import annotations

import numpy as np
import pytest

from training.synthetic.cxr import MAX_VALUE, CxrSample, generate_cxr, make_dataset


def test_same_seed_gives_same_image_and_other_seed_differs():
    a = generate_cxr(np.random.default_rng(7), 128, tb=True)
    b = generate_cxr(np.random.default_rng(7), 128, tb=True)
    c = generate_cxr(np.random.default_rng(8), 128, tb=True)
    assert np.array_equal(a.pixels, b.pixels)
    assert a.lesion_centres_px == b.lesion_centres_px
    assert not np.array_equal(a.pixels, c.pixels)


@pytest.mark.parametrize("tb", [True, False])
def test_pixels_are_12_bit_uint16_with_a_real_dynamic_range(tb):
    sample = generate_cxr(np.random.default_rng(1), 96, tb=tb)
    assert isinstance(sample, CxrSample)
    assert sample.pixels.dtype == np.uint16
    assert sample.pixels.shape == (96, 96)
    assert int(sample.pixels.max()) <= MAX_VALUE
    assert np.ptp(sample.pixels.astype(np.int64)) > 1000
    assert sample.label == int(tb)


def test_lungs_are_darker_than_the_mediastinum():
    sample = generate_cxr(np.random.default_rng(2), 128, tb=False)
    lungs = sample.pixels[sample.lung_mask].mean()
    mediastinum = sample.pixels[40:90, 60:68].mean()
    assert lungs < mediastinum


def test_positives_have_lesions_inside_the_lungs_and_negatives_none():
    rng = np.random.default_rng(3)
    for _ in range(6):
        pos = generate_cxr(rng, 128, tb=True)
        assert 1 <= len(pos.lesion_centres_px) <= 3
        for col, row in pos.lesion_centres_px:
            assert pos.lung_mask[int(round(row)), int(round(col))]
            assert row < 128 * 0.5  # upper zones
        assert generate_cxr(rng, 128, tb=False).lesion_centres_px == []


def test_make_dataset_is_balanced_seeded_and_preprocessed():
    images, labels, centres = make_dataset(6, seed=5, size_px=64, input_size_px=32)
    again, labels_again, _ = make_dataset(6, seed=5, size_px=64, input_size_px=32)
    assert images.shape == (6, 1, 32, 32) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert labels.sum() == 3
    assert [bool(c) for c in centres] == [bool(y) for y in labels]
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)


def test_bad_arguments_fail_fast():
    with pytest.raises(ValueError, match="size_px"):
        generate_cxr(np.random.default_rng(0), 8, tb=True)
    with pytest.raises(TypeError, match="rng"):
        generate_cxr(0, 64, tb=True)
    with pytest.raises(ValueError, match="`n`"):
        make_dataset(0, seed=0)
