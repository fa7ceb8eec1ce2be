"""The registered nodule ONNX model finds large nodules in a fresh generated CT volume."""
from __future__ import annotations

import numpy as np
import pytest

from models.registry import ModelRegistry

ort = pytest.importorskip("onnxruntime")


def _manifest():
    try:
        return ModelRegistry().get("nodule")
    except LookupError:
        pytest.skip(reason="no nodule model is registered under models/nodule")


def test_metadata_is_complete():
    manifest = _manifest()
    manifest.verify()
    raw = manifest.raw
    assert manifest.finding.value == "786838002" and 0 < manifest.threshold < 1
    assert raw["network_data_format"]["inputs"]["image"]["shape"] == [None, 1, 64, 64, 64]
    assert "NOT FOR CLINICAL USE" in raw["intended_use"]
    assert manifest.path.stat().st_size < 20 * 2**20


def test_finds_a_large_nodule_with_few_false_positives():
    from models.nodule.inference import detect, onnx_runner
    from training.synthetic.ct import generate_ct

    manifest = _manifest()
    session = ort.InferenceSession(str(manifest.path), providers=["CPUExecutionProvider"])
    sample = None
    for seed in range(1000, 1100):  # a fresh volume (the training splits use other seed streams)
        sample = generate_ct(np.random.default_rng(seed), n_nodules=2)
        if any(n.diameter_mm >= 8.0 for n in sample.nodules):
            break
    post = manifest.raw["postprocessing"]
    found = detect(onnx_runner(session), sample.volume_hu, sample.spacing_mm, threshold=manifest.threshold,
                   component_threshold=post["component_threshold"], min_volume_mm3=post["min_volume_mm3"])
    large = [n for n in sample.nodules if n.diameter_mm >= 8.0]
    hits = [any(np.linalg.norm(np.subtract(c.centre_mm, n.centre_mm)) <= n.diameter_mm / 2 for c in found)
            for n in large]
    false_positives = [c for c in found if not any(
        np.linalg.norm(np.subtract(c.centre_mm, n.centre_mm)) <= n.diameter_mm / 2 for n in sample.nodules)]
    assert any(hits), f"no hit on {large}; candidates {found}"
    assert len(false_positives) <= 3


#: The issue's volume size.  Smaller volumes of the same generator were tried and keep the vessel
#: false positives but not the whole point: 64 x 384 x 384 (~30 s) gives 7 vessel false positives
#: before the shape bound and 3 after, but before the lung mask no candidate in air and the nodule
#: segment only 1.6x its volume; fewer than 64 slices (the patch depth) are padded with air in z
#: and the model then misses the nodule altogether.
ISSUE_SHAPE_VOX = (80, 512, 512)
#: Vessel false positives at the operating point on that volume after the shape bound (10 before
#: it); the assertion leaves a margin of 2.
MEASURED_FP = 1


def test_no_candidate_outside_the_lungs_on_a_volume_of_another_generator():
    """Issue 19: a chest CT from a generator the model never saw, one dense 10 mm nodule.

    Through the serving entry: no candidate in air (every reported segment has voxels above -950 HU
    and lies inside the lung mask), the nodule found, its segment at most twice its true volume, and
    the vessels that were reported as nodules dropped by the shape bound (few false positives left).
    """
    from models.nodule.lung import lung_mask
    from models.nodule.serving import serve_volume
    from training.synthetic.ct_phantom2 import generate_phantom

    manifest = _manifest()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(manifest.path), options, providers=["CPUExecutionProvider"])
    sample = generate_phantom(np.random.default_rng(1), ISSUE_SHAPE_VOX, (1.25, 0.7, 0.7), n_nodules=1,
                              nodule_diameter_mm=10.0, nodule_hu=40.0, body_fraction=0.7)
    volume = sample.volume_hu.astype(np.float32)
    reply = serve_volume(lambda patches: session.run(["probability"], {"image": patches})[0], volume,
                         sample.spacing_mm, manifest.raw)
    lungs = lung_mask(volume, sample.spacing_mm)
    labels, (nodule,) = reply["mask"], sample.nodules
    hits, false_positives = [], []
    for cand in reply["candidates"]:
        segment = labels == cand["label"]
        assert volume[segment].max() > -950, f"candidate {cand} lies wholly in air"
        assert lungs[segment].all(), f"candidate {cand} reaches outside the lung mask"
        if np.linalg.norm(np.subtract(cand["centre_mm"], nodule.centre_mm)) <= nodule.diameter_mm / 2:
            hits.append(segment.sum())
        else:
            false_positives.append(cand)
    assert hits, f"the nodule at {nodule.centre_vox} is missed: {reply['candidates']}"
    assert max(hits) <= 2 * sample.nodule_mask.sum()
    assert len(false_positives) <= MEASURED_FP + 2, f"vessels reported as nodules: {false_positives}"
