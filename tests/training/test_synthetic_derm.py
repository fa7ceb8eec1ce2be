"""The dermoscopy generator: deterministic, well-formed, and with class-dependent appearance."""
from __future__ import annotations

import numpy as np
import pytest

from training.synthetic.derm import (BALANCED_PRIOR, CLASSES, HAM10000_PRIOR, DermSample, generate_lesion,
                                     make_dataset, sample_labels)


def test_same_seed_same_image_and_fields():
    a = generate_lesion(np.random.default_rng(7), "mel", 64)
    b = generate_lesion(np.random.default_rng(7), "mel", 64)
    assert isinstance(a, DermSample)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.pixels.shape == (64, 64, 3) and a.pixels.dtype == np.uint8
    assert a.label == CLASSES.index("mel") and a.label_name == "mel"
    assert a.lesion_mask.shape == (64, 64) and a.lesion_mask.any()
    col, row = a.centre_px
    assert 0 < col < 64 and 0 < row < 64
    c = generate_lesion(np.random.default_rng(8), "mel", 64)
    assert not np.array_equal(a.pixels, c.pixels)


def test_class_by_index_and_bad_arguments():
    assert generate_lesion(np.random.default_rng(0), 6, 48).label_name == "vasc"
    with pytest.raises(ValueError, match="`cls`"):
        generate_lesion(np.random.default_rng(0), "scc", 48)
    with pytest.raises(ValueError, match="`cls`"):
        generate_lesion(np.random.default_rng(0), 7, 48)
    with pytest.raises(ValueError, match="`size_px`"):
        generate_lesion(np.random.default_rng(0), "nv", 16)
    with pytest.raises(TypeError, match="`rng`"):
        generate_lesion(0, "nv", 48)


def _lesion_mean_rgb(cls: str, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(123)
    means = [s.pixels[s.lesion_mask].mean(axis=0) for s in (generate_lesion(rng, cls, 64) for _ in range(n))]
    return np.mean(means, axis=0)


def test_melanoma_darker_and_bluer_than_naevus_vascular_redder():
    mel, nv, vasc = _lesion_mean_rgb("mel"), _lesion_mean_rgb("nv"), _lesion_mean_rgb("vasc")
    assert mel.sum() < nv.sum()  # darker overall (black, dark brown, blue-grey)
    assert mel[2] / mel[0] > nv[2] / nv[0]  # bluer relative to red (veil, blue-grey areas)
    assert vasc[0] - vasc[1] > nv[0] - nv[1]  # red lacunae


def test_melanoma_larger_than_dermatofibroma():
    rng = np.random.default_rng(5)
    mel = np.mean([generate_lesion(rng, "mel", 64).lesion_mask.mean() for _ in range(16)])
    df = np.mean([generate_lesion(rng, "df", 64).lesion_mask.mean() for _ in range(16)])
    assert mel > 2 * df


def test_priors_and_label_counts():
    assert sum(HAM10000_PRIOR) == pytest.approx(1.0) and max(HAM10000_PRIOR) == HAM10000_PRIOR[CLASSES.index("nv")]
    labels = sample_labels(np.random.default_rng(0), 70, BALANCED_PRIOR)
    assert np.bincount(labels, minlength=7).tolist() == [10] * 7
    ham = np.bincount(sample_labels(np.random.default_rng(0), 1000, HAM10000_PRIOR), minlength=7)
    assert ham.sum() == 1000 and ham[CLASSES.index("nv")] == 670 and ham.min() >= 11
    with pytest.raises(ValueError, match="`prior`"):
        sample_labels(np.random.default_rng(0), 10, [1, 2, 3])
    images, y = make_dataset(7, seed=3, size_px=40, prior=BALANCED_PRIOR)
    assert images.shape == (7, 40, 40, 3) and sorted(y.tolist()) == list(range(7))
