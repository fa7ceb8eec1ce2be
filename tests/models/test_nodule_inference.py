"""Sliding-window inference over a region: patches without a region voxel are not run, and the
map inside the region is what running every patch gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.nodule.inference import infer_volume


def counting(calls: list):
    def run(patch: torch.Tensor) -> torch.Tensor:
        calls.append(patch.shape[0])
        return torch.sigmoid(patch * 3.0 - 1.0 + patch.mean(dim=(1, 2, 3, 4), keepdim=True))  # on the whole patch
    return run


@pytest.mark.parametrize("shape", [(40, 150, 130), (30, 50, 70)])  # the second is padded to the patch
def test_skipping_patches_outside_the_region_keeps_the_map_inside_it(shape):
    rng = np.random.default_rng(1)
    volume = rng.random(shape).astype(np.float32)
    region = np.zeros(shape, dtype=bool)
    region[5:20, 5:15, 5:15] = True
    every, some = [], []
    full = infer_volume(counting(every), volume, (32, 32, 32), overlap=0.25, sw_batch_size=3)
    part = infer_volume(counting(some), volume, (32, 32, 32), overlap=0.25, sw_batch_size=3, region=region)
    assert part.shape == full.shape == shape
    assert np.allclose(part[region], full[region], atol=1e-6)
    assert sum(some) < sum(every)


def test_an_empty_region_runs_no_patch():
    calls = []
    out = infer_volume(counting(calls), np.ones((40, 40, 40), np.float32), (32, 32, 32),
                       region=np.zeros((40, 40, 40), bool))
    assert calls == [] and not out.any()


def test_a_region_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="`region` must have the volume's shape"):
        infer_volume(counting([]), np.ones((40, 40, 40), np.float32), (32, 32, 32), region=np.ones((4, 4, 4), bool))
