"""The lung mask that bounds the nodule search: lungs in, air outside the patient, the table and bone out."""
from __future__ import annotations

import numpy as np
import pytest

from models.nodule.lung import lung_mask
from training.synthetic.ct import generate_ct
from training.synthetic.ct_phantom2 import generate_phantom

SPACING = (1.25, 0.7, 0.7)


def test_second_generator_lungs_without_the_air_around_the_patient_or_the_table():
    sample = generate_phantom(np.random.default_rng(3), (16, 224, 224), SPACING, n_nodules=1,
                              nodule_diameter_mm=10.0, nodule_hu=40.0, body_fraction=0.8)
    mask = lung_mask(sample.volume_hu, SPACING)
    hu = sample.volume_hu
    assert (mask & sample.lung_mask).sum() / sample.lung_mask.sum() > 0.97
    assert (mask & sample.nodule_mask).sum() == sample.nodule_mask.sum()  # the nodule is inside
    assert not mask[:, :20, :].any() and not mask[:, -20:, :].any()  # the air above and the table below
    assert not (mask & (hu > 200)).any()  # no bone (ribs, spine) and no table shell
    assert (mask & ~sample.lung_mask).sum() / sample.lung_mask.sum() < 0.15


def test_training_generator_nodules_stay_inside():
    sample = generate_ct(np.random.default_rng(7), (32, 96, 96), SPACING, n_nodules=3)
    mask = lung_mask(sample.volume_hu, SPACING)
    assert (mask & sample.nodule_mask).sum() == sample.nodule_mask.sum()
    assert (mask & sample.lung_mask).sum() / sample.lung_mask.sum() > 0.97


def test_air_only_gives_an_empty_mask_and_bad_input_is_refused():
    air = np.full((8, 64, 64), -1000, np.int16)
    assert not lung_mask(air, SPACING).any()
    with pytest.raises(ValueError, match="volume_hu"):
        lung_mask(np.zeros((64, 64)), SPACING)
    with pytest.raises(ValueError, match="spacing_mm"):
        lung_mask(air, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="closing_mm"):
        lung_mask(air, SPACING, closing_mm=-1.0)


def _reference_slices(mask, radius_mm, spacing_yx):
    """Closing with the disc then hole filling, one slice at a time (scipy's own operations)."""
    from scipy import ndimage

    from models.nodule.lung import _disc

    disc, out = _disc(radius_mm, spacing_yx), np.zeros_like(mask)
    pad = max(disc.shape)
    for k, plane in enumerate(mask):
        closed = ndimage.binary_closing(np.pad(plane, pad), structure=disc)[pad:-pad, pad:-pad]
        out[k] = ndimage.binary_fill_holes(closed)
    return out


@pytest.mark.parametrize("spacing_yx", [(0.7, 0.7), (0.8, 0.6), (1.0, 1.0)])
def test_closing_and_filling_all_slices_at_once_equal_scipy_slice_by_slice(spacing_yx):
    from scipy import ndimage

    from models.nodule.lung import close_in_plane, fill_in_plane

    rng = np.random.default_rng(7)
    mask = ndimage.gaussian_filter(rng.random((12, 120, 140)), 3) > 0.52
    mask[4] = False  # an empty slice
    mask[6, 40:80, 40:80] = True
    mask[6, 55:60, 55:60] = False  # a hole
    mask[7, :5, :] = True  # touching the border
    got = fill_in_plane(close_in_plane(mask, 6.0, spacing_yx))
    assert np.array_equal(got, _reference_slices(mask, 6.0, spacing_yx))
