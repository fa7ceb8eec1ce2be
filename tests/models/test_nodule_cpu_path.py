"""The CPU fast path of the nodule model gives what the reference path gives: candidates computed on
the foreground's bounding box, sliding windows in larger engine calls, no resize of an empty mask."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from models.nodule.postprocess import extract_candidates, segment_elongation


def blobs(shape=(40, 60, 70), seed=3) -> tuple[np.ndarray, np.ndarray]:
    """A probability map with a sphere, a tube and noise, and a CT with dense voxels under them."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    prob = np.clip(rng.normal(0.1, 0.1, shape), 0, 1).astype(np.float32)
    sphere = (z - 20) ** 2 + (y - 25) ** 2 + (x - 30) ** 2 <= 36
    tube = (np.abs(y - 45) <= 1) & (np.abs(x - 50) <= 1) & (z > 5) & (z < 35)
    prob[sphere] = rng.uniform(0.6, 1.0, int(sphere.sum()))
    prob[tube] = rng.uniform(0.55, 0.9, int(tube.sum()))
    hu = np.where(sphere | tube, 20.0, -800.0).astype(np.float32)
    return prob, hu


@pytest.mark.parametrize("dense", [False, True])
def test_candidates_do_not_depend_on_the_empty_surroundings(dense):
    prob, hu = blobs()
    spacing = (1.25, 0.7, 0.7)
    kwargs = {"volume_hu": hu if dense else None, "max_elongation": 2.5}
    found, labels = extract_candidates(prob, spacing, 0.5, 4.0, **kwargs)
    offset = (7, 11, 5)
    big_prob = np.pad(prob, [(o, o + 3) for o in offset])
    big_hu = np.pad(hu, [(o, o + 3) for o in offset], constant_values=-1000.0)
    kwargs["volume_hu"] = big_hu if dense else None
    big_found, big_labels = extract_candidates(big_prob, spacing, 0.5, 4.0, **kwargs)
    assert found and len(found) == len(big_found)
    inner = tuple(slice(o, o + n) for o, n in zip(offset, prob.shape))
    assert np.array_equal(big_labels[inner], labels) and big_labels.sum() == labels.sum()
    for a, b in zip(found, big_found):
        assert np.allclose(np.asarray(b.centre_vox) - offset, a.centre_vox, atol=1e-9)
        assert (a.probability, a.volume_mm3, a.diameter_mm) == (b.probability, b.volume_mm3, b.diameter_mm)
    # the centre is the probability-weighted centre of the segment, in the map's voxel indices
    centre = ndimage.center_of_mass(big_prob * (big_labels == 1))
    assert np.allclose(big_found[0].centre_vox, centre, atol=1e-6)


def test_elongation_of_a_cut_out_segment_with_its_origin_is_that_of_the_map():
    prob, _ = blobs()
    labels, count = ndimage.label(prob >= 0.5, structure=np.ones((3, 3, 3)))
    box = ndimage.find_objects((labels > 0).astype(np.uint8))[0]
    whole = segment_elongation(labels, (1.25, 0.7, 0.7), count)
    cut = segment_elongation(labels[box], (1.25, 0.7, 0.7), count, origin=[s.start for s in box])
    assert np.allclose(whole, cut, rtol=1e-9, equal_nan=True)


@pytest.fixture(scope="module")
def onnx_nodule():
    import onnxruntime as ort

    from models.nodule.inference import onnx_runner
    from models.registry import ModelRegistry

    manifest = ModelRegistry().get("nodule")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return onnx_runner(ort.InferenceSession(str(manifest.path), options, providers=["CPUExecutionProvider"]))


def test_patches_per_engine_call_do_not_change_the_map_or_the_candidates(onnx_nodule):
    from models.nodule.inference import infer_volume, segment_volume
    from models.nodule.preprocess import window_hu
    from training.synthetic.ct import generate_ct

    sample = generate_ct(np.random.default_rng([0, 3, 1]), (64, 96, 112), (1.25, 0.7, 0.7))
    volume01 = window_hu(sample.volume_hu)
    maps = [infer_volume(onnx_nodule, volume01, overlap=0.25, sw_batch_size=n) for n in (1, 4)]
    assert np.array_equal(maps[0], maps[1])
    two, four = (segment_volume(onnx_nodule, volume01, (1.25, 0.7, 0.7), sw_batch_size=n) for n in (2, 4))
    assert np.array_equal(two.labels, four.labels) and two.candidates == four.candidates


def test_a_volume_without_candidates_gets_an_empty_mask_of_its_own_grid():
    from models.nodule.serving import serve_volume
    from models.registry import ModelRegistry
    from training.synthetic.ct import generate_ct

    sample = generate_ct(np.random.default_rng(5), (24, 80, 80), (2.5, 0.8, 0.8))
    reply = serve_volume(lambda patches: np.zeros_like(patches), sample.volume_hu, (2.5, 0.8, 0.8),
                         ModelRegistry().get("nodule").raw)
    assert reply["candidates"] == [] and reply["mask"].shape == sample.volume_hu.shape
    assert reply["mask"].dtype == np.int32 and not reply["mask"].any()


@pytest.mark.parametrize("window", [(-1000.0, 400.0), None])
def test_volume_features_slice_by_slice_equal_numpy_on_the_whole_volume(window):
    from models.reference import volume_features

    hu = np.random.default_rng(2).normal(-500, 450, (12, 40, 48)).astype(np.float32)
    v = hu.astype(np.float64)
    if window is not None:
        v = np.clip((v - window[0]) / (window[1] - window[0]), 0.0, 1.0)
    assert volume_features(hu, window) == {"mean_intensity": round(float(v.mean()), 6),
                                           "intensity_std": round(float(v.std()), 6), "slices": 12}
