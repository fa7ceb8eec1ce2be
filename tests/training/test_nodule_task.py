"""The nodule task: datasets, a few training steps, prediction and FROC evaluation on tiny data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from training.config import deep_merge, load_task

TINY = {"data": {"n_train": 2, "n_val": 2, "n_test": 1, "shape_vox": [32, 64, 64], "workers": 1},
        "input": {"patch_vox": [32, 32, 32], "train_patch_vox": [16, 32, 32], "positive_fraction": 1.0},
        "eval": {"component_threshold": 0.5},
        "shift": {"n_lesion_free": 1, "n_air_heavy": 1, "n_nodule": 2, "shape_vox": [16, 96, 96]}}


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


def test_test_split_holds_the_second_generator_and_reports_it(tiny):
    task, config, data = tiny
    test = data["test"]
    assert test.sources == [0, 1, 2, 3, 3] and len(test) == 5
    items = [test[i] for i in range(len(test))]
    assert all(item["volume"].shape == (1, 32, 96, 96) for item in items)  # padded to one shape
    assert tuple(items[1]["shape"].tolist()) == (16, 96, 96)
    network = task.build_network(config).eval()
    with torch.no_grad():
        out = task.predict(network, default_collate(items))
    assert out["source"].tolist() == [0, 1, 2, 3, 3] and out["segment_max_hu"].shape == (5, 32)
    # Perfect detections on the shift nodules, one false positive in air on the air-heavy volume.
    perfect = np.zeros_like(out["candidates"])
    for s, nods in enumerate(out["nodules"]):
        valid = nods[nods[:, 4] > 0]
        perfect[s, : len(valid)] = np.c_[valid[:, :4], np.full(len(valid), 0.9), np.ones(len(valid))]
    perfect[2, 0] = (1, 1, 1, 5.0, 0.95, 1)
    hu = np.full_like(out["segment_max_hu"], 0.0)
    hu[2, 0] = -1000.0
    metrics = task.evaluate({**out, "candidates": perfect, "segment_max_hu": hu}, config,
                            {"threshold": 0.5}).metrics
    assert metrics["n_scans"] == 1  # FROC and sensitivity on the training generator only
    assert metrics["shift_fp_per_volume_lesion_free"] == 0.0 and metrics["shift_fp_per_volume_air_heavy"] == 1.0
    assert metrics["shift_candidates_in_air"] == 1
    if metrics.get("shift_sensitivity") is not None:
        assert metrics["shift_sensitivity"] == 1.0 and metrics["shift_oversegmentation"] == pytest.approx(1.0)


def test_detection_counts_on_lesion_free_scans():
    from training.metrics import detection_counts

    counts = detection_counts([[((0, 0, 0), 0.9)], [((10, 0, 0), 0.9), ((0, 0, 0), 0.8)]],
                              [[], [((10, 0, 0), 4.0)]])
    assert counts == {"fp_per_scan": 1.0, "sensitivity": 1.0, "n_scans": 2, "n_lesions": 1, "n_false_positives": 2}
