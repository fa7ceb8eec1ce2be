"""The nodule task: datasets, a few training steps, prediction and FROC evaluation on tiny data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from training.config import deep_merge, load_task

TINY = {"data": {"n_train": 2, "n_val": 2, "n_test": 1, "shape_vox": [32, 64, 64], "workers": 1},
        "input": {"patch_vox": [32, 32, 32], "train_patch_vox": [16, 32, 32], "positive_fraction": 1.0},
        "eval": {"component_threshold": 0.5}}


@pytest.fixture(scope="module")
def tiny():
    task = load_task("nodule")
    config = deep_merge(task.default_config(), TINY)
    return task, config, task.datasets(config)


def test_items_and_unknown_source(tiny):
    task, config, data = tiny
    item = data["train"][0]
    assert item["image"].shape == (1, 16, 32, 32) and item["label"].shape == item["image"].shape
    whole = data["val"][0]
    assert whole["volume"].shape == (1, 32, 64, 64) and whole["nodules"].shape == (4, 5)
    with pytest.raises(ValueError, match="data.source"):
        task.datasets(deep_merge(config, {"data": {"source": "luna16"}}))


def test_a_few_steps_reduce_the_loss(tiny):
    task, config, data = tiny
    torch.manual_seed(0)
    np.random.seed(0)
    network = task.build_network(config)
    batch = default_collate([data["train"][0], data["train"][1]])
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = task.training_step(network, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_predict_and_evaluate(tiny):
    task, config, data = tiny
    network = task.build_network(config).eval()
    with torch.no_grad():
        out = task.predict(network, default_collate([data["val"][0], data["val"][1]]))
    assert out["candidates"].shape == (2, 32, 6) and out["nodules"].shape == (2, 4, 5)
    # Perfect candidates: one per true nodule, plus one false positive in the first scan.
    perfect = np.zeros_like(out["candidates"])
    for s, nods in enumerate(out["nodules"]):
        valid = nods[nods[:, 4] > 0]
        perfect[s, : len(valid)] = np.c_[valid[:, :4], np.full(len(valid), 0.9), np.ones(len(valid))]
    perfect[0, 10] = (1, 1, 1, 5.0, 0.2, 1)
    evaluation = task.evaluate({**out, "candidates": perfect}, config)
    if evaluation.metrics["n_nodules"]:
        assert evaluation.metrics["sensitivity"] == 1.0 and evaluation.metrics["cpm"] == 1.0
        # the lowest threshold within 1 FP per scan keeps the 0.2 false positive: 1 FP over 2 scans
        assert evaluation.operating_point["threshold"] == pytest.approx(0.2)
        assert evaluation.metrics["fp_per_scan"] == 0.5
