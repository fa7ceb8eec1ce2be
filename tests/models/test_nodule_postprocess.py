"""Nodule model pieces: preprocessing, candidates from a probability map, sliding windows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.nodule.inference import infer_volume, torch_runner
from models.nodule.postprocess import candidates_array, extract_candidates, segment_elongation
from models.nodule.preprocess import resample, to_source_vox, window_hu

SPACING = (1.25, 0.7, 0.7)


def _ball(shape, centre_vox, radius_mm, spacing=SPACING):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((z, y, x), centre_vox, spacing))
    return d2 <= radius_mm ** 2


def test_candidates_have_the_right_centres_and_diameters():
    shape = (40, 80, 80)
    prob = np.zeros(shape, np.float32)
    prob[_ball(shape, (10, 20, 20), 5.0)] = 0.9  # 10 mm
    prob[_ball(shape, (28, 55, 60), 3.0)] = 0.7  # 6 mm
    prob[20, 70, 5] = 0.95  # one voxel: below min volume
    cands, mask = extract_candidates(prob, SPACING, 0.5, min_volume_mm3=4.0)
    assert [round(c.probability, 2) for c in cands] == [0.9, 0.7]
    assert np.allclose(cands[0].centre_vox, (10, 20, 20), atol=0.05)
    assert np.allclose(cands[1].centre_mm, np.array((28, 55, 60)) * SPACING, atol=0.05)
    assert cands[0].diameter_mm == pytest.approx(10.0, rel=0.06)
    assert cands[1].diameter_mm == pytest.approx(6.0, rel=0.1)
    assert set(np.unique(mask)) == {0, 1, 2} and mask[10, 20, 20] == 1 and mask[20, 70, 5] == 0
    packed = candidates_array(cands, 4)
    assert packed.shape == (4, 6) and packed[:, 5].tolist() == [1, 1, 0, 0]


def test_empty_map_gives_no_candidates_and_bad_input_is_refused():
    cands, mask = extract_candidates(np.zeros((8, 8, 8)), SPACING)
    assert cands == [] and not mask.any()
    with pytest.raises(ValueError, match="probability"):
        extract_candidates(np.zeros((8, 8)), SPACING)
    with pytest.raises(ValueError, match="component_threshold"):
        extract_candidates(np.zeros((8, 8, 8)), SPACING, component_threshold=1.0)


def test_window_and_resample():
    hu = np.array([[[-2000, -1000, -300, 400, 3000]]], dtype=np.int16)
    assert np.allclose(window_hu(hu)[0, 0], [0, 0, 0.5, 1, 1])
    vol = np.random.default_rng(0).random((10, 20, 20)).astype(np.float32)
    out = resample(vol, (2.5, 0.7, 0.7), (1.25, 0.7, 0.7))
    assert out.shape == (20, 20, 20) and out.dtype == np.float32
    assert np.allclose(to_source_vox([[1.5, 3.0, 3.0]], vol.shape, out.shape), [[0.5, 3.0, 3.0]])
    with pytest.raises(ValueError, match="spacing_mm"):
        resample(vol, (0, 1, 1))


def test_sliding_window_covers_a_non_multiple_volume():
    calls = []

    def run(patch: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(patch.shape))
        return patch.clamp(0, 1)  # identity "probability"

    vol = np.random.default_rng(1).random((37, 70, 45)).astype(np.float32)
    out = infer_volume(run, vol, roi_size=(16, 32, 32), overlap=0.25)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert np.allclose(out, vol, atol=1e-5)
    assert all(c[2:] == (16, 32, 32) for c in calls)


def test_torch_runner_with_a_real_network():
    from models.nodule.network import NoduleNet

    net = NoduleNet().eval()
    out = infer_volume(torch_runner(net), np.zeros((20, 40, 33), np.float32), roi_size=(16, 32, 32))
    assert out.shape == (20, 40, 33) and 0 <= out.min() and out.max() <= 1


def test_candidates_only_inside_the_region_and_bounded_by_density():
    """A confident blob in air is no candidate; a probability halo does not inflate the nodule."""
    shape = (40, 80, 80)
    hu = np.full(shape, -850.0, np.float32)  # lung
    hu[_ball(shape, (20, 40, 40), 5.0)] = 40.0  # a dense 10 mm nodule
    hu[:, :, :10] = -1000.0  # air outside the patient
    region = np.zeros(shape, bool)
    region[:, :, 12:] = True
    prob = np.zeros(shape, np.float32)
    prob[_ball(shape, (20, 40, 40), 10.0)] = 0.99  # the nodule with a halo of twice its diameter
    prob[_ball(shape, (20, 40, 40), 4.0)] = 0.999
    prob[_ball(shape, (10, 20, 4), 3.0)] = 0.9997  # in air, outside the region
    prob[_ball(shape, (32, 65, 65), 3.0)] = 0.998  # inside the region, but no dense core: lung only
    cands, labels = extract_candidates(prob, SPACING, 0.5, region=region, volume_hu=hu, solid_hu=-500.0)
    (nodule,) = cands
    true_volume = _ball(shape, (20, 40, 40), 5.0).sum()
    assert (labels > 0).sum() <= 1.1 * true_volume and nodule.diameter_mm == pytest.approx(10.0, rel=0.06)
    assert hu[labels > 0].min() >= -500.0 and nodule.probability == pytest.approx(0.999)
    assert np.allclose(nodule.centre_vox, (20, 40, 40), atol=0.2)
    with pytest.raises(ValueError, match="region"):
        extract_candidates(prob, SPACING, region=region[:-1])


def test_a_dense_vessel_beside_the_nodule_is_not_its_segment():
    shape = (30, 60, 60)
    hu = np.full(shape, -850.0, np.float32)
    hu[_ball(shape, (15, 30, 30), 4.0)] = 30.0
    hu[15, 30, 40:] = 40.0  # a vessel inside the probability halo, not touching the nodule
    prob = np.where(_ball(shape, (15, 30, 30), 12.0), 0.9, 0.0).astype(np.float32)
    prob[_ball(shape, (15, 30, 30), 3.0)] = 0.99
    cands, labels = extract_candidates(prob, SPACING, 0.5, volume_hu=hu)
    assert len(cands) == 1 and labels[15, 30, 45] == 0 and labels[15, 30, 30] == 1


def _tube(shape, start_vox, stop_vox, radius_mm, spacing=SPACING):
    """Voxels within ``radius_mm`` of the segment from ``start_vox`` to ``stop_vox``."""
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), axis=-1)
    a, b = np.multiply(start_vox, spacing), np.multiply(stop_vox, spacing)
    t = np.clip(((grid - a) @ (b - a)) / np.dot(b - a, b - a), 0.0, 1.0)
    return np.linalg.norm(grid - (a + t[..., None] * (b - a)), axis=-1) <= radius_mm


def test_elongation_of_a_sphere_and_of_a_tube():
    shape = (40, 80, 80)
    labels = _ball(shape, (20, 40, 40), 5.0).astype(np.int32)
    labels[_tube(shape, (5, 10, 10), (35, 10, 70), 1.5)] = 2  # 60 mm long, 3 mm wide
    sphere, tube = segment_elongation(labels, SPACING)
    assert sphere == pytest.approx(1.0, abs=0.05)
    assert tube > 10.0
    assert segment_elongation(np.zeros((4, 4, 4), np.int32), SPACING).size == 0
    with pytest.raises(ValueError, match="labels"):
        segment_elongation(np.zeros((4, 4, 4)), SPACING)


def test_a_vessel_is_dropped_a_nodule_kept_also_where_it_touches_a_vessel():
    """Issue 19: the false positives left were vessels; a tube-shaped dense segment is no nodule."""
    shape = (40, 96, 96)
    hu = np.full(shape, -850.0, np.float32)
    prob = np.zeros(shape, np.float32)
    vessel = _tube(shape, (8, 10, 20), (30, 40, 28), 1.5)  # a 35 mm stretch of a 3 mm vessel, no nodule
    hu[vessel], prob[vessel] = 40.0, 0.999
    nodule = _ball(shape, (12, 70, 30), 3.5)  # a 7 mm nodule, alone
    hu[nodule], prob[nodule] = 40.0, 0.99
    touching = _ball(shape, (28, 60, 75), 4.0)  # an 8 mm nodule on a 2.4 mm vessel
    branch = _tube(shape, (28, 60, 75), (28, 95, 75), 1.2)
    hu[touching | branch] = 40.0
    prob[_ball(shape, (28, 60, 75), 7.0)] = 0.98  # the probability halo covers the vessel near the nodule
    cands, labels = extract_candidates(prob, SPACING, 0.5, volume_hu=hu)
    assert sorted(round(c.probability, 2) for c in cands) == [0.98, 0.99]
    assert labels[vessel].max() == 0 and labels[12, 70, 30] > 0 and labels[28, 60, 75] > 0
    kept, _ = extract_candidates(prob, SPACING, 0.5, volume_hu=hu, max_elongation=None)
    assert len(kept) == 3
    with pytest.raises(ValueError, match="max_elongation"):
        extract_candidates(prob, SPACING, max_elongation=0.5)


def test_label_maximum_equals_scipy_on_the_labelled_voxels():
    from scipy import ndimage

    from models.nodule.postprocess import label_maximum

    rng = np.random.default_rng(3)
    values = rng.random((10, 30, 30)).astype(np.float32)
    labels, count = ndimage.label(ndimage.gaussian_filter(rng.random((10, 30, 30)), 2) > 0.53)
    where = np.nonzero(labels)
    got = label_maximum(values[where], labels[where], count)
    assert count > 3 and np.array_equal(got, ndimage.maximum(values, labels, np.arange(1, count + 1)))
