"""The second, independent chest CT generator: determinism, wide air-heavy field of view, one nodule or none."""
from __future__ import annotations

import numpy as np
import pytest

from training.synthetic.ct_phantom2 import PADDING_HU, generate_phantom

SHAPE = (16, 160, 160)
SPACING = (1.25, 0.7, 0.7)


def _sample(seed: int, **kwargs):
    return generate_phantom(np.random.default_rng(seed), SHAPE, SPACING, **kwargs)


def test_same_seed_same_volume():
    a, b = _sample(4, n_nodules=1), _sample(4, n_nodules=1)
    assert np.array_equal(a.volume_hu, b.volume_hu) and a.nodules == b.nodules
    assert not np.array_equal(a.volume_hu, _sample(5, n_nodules=1).volume_hu)


def test_air_heavy_volume_with_padding_table_bone_and_lungs():
    s = _sample(1, n_nodules=0, body_fraction=0.5)
    hu = s.volume_hu
    assert hu.dtype == np.int16 and hu.shape == SHAPE and s.nodules == [] and not s.nodule_mask.any()
    assert (hu < -950).mean() > 0.6  # most of the field of view is air
    assert hu[0, 0, 0] == PADDING_HU  # outside the reconstruction circle
    assert (hu > 500).any()  # ribs, spine cortex
    assert -950 < np.median(hu[s.lung_mask]) < -700


def test_one_dense_nodule_inside_a_lung():
    s = _sample(2, n_nodules=1, nodule_diameter_mm=8.0, nodule_hu=40.0)
    (nodule,) = s.nodules
    assert nodule.diameter_mm == 8.0
    assert s.lung_mask[tuple(int(round(v)) for v in nodule.centre_vox)]
    volume = s.nodule_mask.sum() * np.prod(SPACING)
    assert volume == pytest.approx(np.pi * 8.0 ** 3 / 6, rel=0.2)
    assert np.median(s.volume_hu[s.nodule_mask]) > -100


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_nodules"):
        generate_phantom(rng, SHAPE, SPACING, n_nodules=2)
    with pytest.raises(ValueError, match="body_fraction"):
        generate_phantom(rng, SHAPE, SPACING, body_fraction=0.1)
    with pytest.raises(ValueError, match="shape_vox"):
        generate_phantom(rng, (8, 160, 160), SPACING)
