"""The generated chest CT volumes: determinism, intensities and nodule placement."""
from __future__ import annotations

import numpy as np
import pytest

from training.synthetic.ct import MAX_DIAMETER_MM, MIN_DIAMETER_MM, generate_ct

SHAPE = (32, 64, 64)
SPACING = (1.25, 0.7, 0.7)


def _sample(seed: int, **kwargs):
    return generate_ct(np.random.default_rng(seed), SHAPE, SPACING, **kwargs)


def test_same_seed_same_volume_and_nodules():
    a, b = _sample(5), _sample(5)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert a.nodules == b.nodules
    assert not np.array_equal(a.volume_hu, _sample(6).volume_hu)


def test_volume_is_int16_hounsfield_with_lungs_and_body():
    s = _sample(1)
    assert s.volume_hu.dtype == np.int16 and s.volume_hu.shape == SHAPE
    assert s.spacing_mm == SPACING
    lung = s.lung_mask & ~s.nodule_mask
    assert -950 < np.median(s.volume_hu[lung]) < -750
    assert s.volume_hu[0, 0, 0] < -900  # air outside the body
    assert s.volume_hu.max() > 200  # bone


@pytest.mark.parametrize("seed", range(3))
def test_nodules_are_3_to_30_mm_inside_the_lungs(seed):
    s = generate_ct(np.random.default_rng(seed), (48, 80, 80), SPACING, n_nodules=4)
    assert 1 <= len(s.nodules) <= 4
    spacing = np.asarray(SPACING)
    for nod in s.nodules:
        assert MIN_DIAMETER_MM <= nod.diameter_mm <= MAX_DIAMETER_MM
        assert nod.kind in ("solid", "part_solid")
        idx = tuple(int(round(v)) for v in nod.centre_vox)
        assert s.lung_mask[idx] and s.nodule_mask[idx]
        assert np.allclose(np.asarray(nod.centre_vox) * spacing, nod.centre_mm)
    assert s.nodule_mask.sum() > 0 and not (s.nodule_mask & ~s.lung_mask).any()


def test_no_nodules_when_asked():
    s = _sample(2, n_nodules=0)
    assert s.nodules == [] and not s.nodule_mask.any()


@pytest.mark.parametrize("kwargs, match", [
    ({"shape_vox": (8, 64, 64)}, "shape_vox"),
    ({"spacing_mm": (0.0, 0.7, 0.7)}, "spacing_mm"),
    ({"n_nodules": 7}, "n_nodules"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_ct(np.random.default_rng(0), **kwargs)
