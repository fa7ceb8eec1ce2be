"""The nodule deployment's core on a whole generated CT: candidates and a label mask in the source grid."""
from __future__ import annotations

import numpy as np
import pytest

from models.registry import ModelRegistry
from serving.inference.deployments import ModelServer
from training.synthetic.ct import generate_ct


@pytest.fixture(scope="module")
def nodule():
    if "nodule" not in ModelRegistry().names():
        pytest.skip(reason="no nodule model registered")
    server = ModelServer("nodule", {})
    server.reconfigure({})
    return server


def test_whole_volume_gives_candidates_and_a_source_grid_mask(nodule):
    ct = generate_ct(np.random.default_rng(5))
    reply = nodule.run_batch([{"volume": ct.volume_hu, "spacing_mm": ct.spacing_mm}])[0]
    assert reply["mask"].shape == ct.volume_hu.shape
    assert reply["candidates"], "no candidate found"
    labels = {c["label"] for c in reply["candidates"]}
    assert set(np.unique(reply["mask"])) - {0} <= labels
    threshold = nodule.active.manifest.threshold
    assert all(c["probability"] >= threshold for c in reply["candidates"])
    big = [n for n in ct.nodules if n.diameter_mm >= 8]
    hits = [n for n in big if any(np.linalg.norm(np.subtract(c["centre_mm"], n.centre_mm)) <= n.diameter_mm
                                  for c in reply["candidates"])]
    assert hits, f"none of the {len(big)} nodules >= 8 mm was found"
