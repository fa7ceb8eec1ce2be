"""The derm task: data sources, training steps, evaluation, export and metadata."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from training.derm_report import CLASS_CODES, macro_auc_ci, threshold_for_sensitivity
from training.tasks.derm import TASK, BalancedView, augment


def _tiny_config() -> dict:
    config = copy.deepcopy(TASK.default_config())
    config["data"].update(n_train=42, n_val=35, n_test=35, source_size_px=48, workers=1)
    config["input"]["size_px"] = 48
    config["network"]["image_size_px"] = 48
    config["eval"]["bootstrap_resamples"] = 20
    return config


def test_unknown_source_and_mismatched_size_fail_fast():
    config = _tiny_config()
    config["data"]["source"] = "dermnet"
    with pytest.raises(ValueError, match="`data.source`"):
        TASK.datasets(config)
    config = _tiny_config()
    config["network"]["image_size_px"] = 64
    with pytest.raises(ValueError, match="image_size_px"):
        TASK.build_network(config)


def test_datasets_items_and_balanced_training_split():
    splits = TASK.datasets(_tiny_config())
    item = splits["train"][0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    labels = splits["train"].tensors["label"].numpy()
    assert np.bincount(labels, minlength=7).tolist() == [6] * 7
    assert not torch.equal(splits["val"][0]["image"], splits["test"][0]["image"])


def test_a_few_training_steps_reduce_the_loss():
    from models.derm.preprocess import to_derm_input_batch
    from training.synthetic.derm import BALANCED_PRIOR, make_dataset

    torch.manual_seed(0)
    config = _tiny_config()
    config["input"]["size_px"] = config["network"]["image_size_px"] = 32
    images, labels = make_dataset(14, seed=2, size_px=32, prior=BALANCED_PRIOR)
    batch = {"image": torch.from_numpy(to_derm_input_batch(images, 32)), "label": torch.from_numpy(labels)}
    network = TASK.build_network(config)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    network.train()

    def measured() -> float:
        torch.manual_seed(1)  # the same augmentation and dropout draws before and after
        with torch.no_grad():
            return float(TASK.training_step(network, batch))

    before = measured()
    for _ in range(10):
        loss = TASK.training_step(network, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert measured() < before


def test_augment_keeps_shape_range_and_is_a_symmetry_for_flat_images():
    x = torch.rand(8, 3, 16, 16)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    flat = torch.full((4, 3, 8, 8), 0.5)
    assert torch.allclose(augment(flat).std(dim=(2, 3)), torch.zeros(4, 3), atol=1e-6)


def test_evaluate_export_spec_and_metadata():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(7), 20)
    logits = rng.normal(0, 1, (140, 7)) * 4
    logits[np.arange(140), y] += 14.0
    config = _tiny_config()
    val = TASK.evaluate({"logits": logits, "label": y}, config)
    op = val.operating_point
    assert op["temperature"] > 0.0 and 0.0 < op["mel_threshold"] < 1.0
    test = TASK.evaluate({"logits": logits, "label": y}, config, op)
    m = test.metrics
    assert m["balanced_accuracy"] > 0.8 and m["macro_auc_ci95"][0] <= m["macro_auc"] <= m["macro_auc_ci95"][1]
    assert m["nll"] <= m["nll_before_scaling"]
    assert m["melanoma"]["sensitivity"] >= 0.85
    assert np.array(m["confusion_matrix"]["counts"]).sum() == 140
    assert set(test.plots) == {"reliability", "confusion", "roc"}
    network = TASK.build_network(config)
    spec = TASK.export_spec(network, config)
    assert spec.output_names == ["probabilities"] and float(network.temperature) == pytest.approx(op["temperature"])
    with torch.no_grad():
        probs = spec.module(*spec.example_inputs)
    assert probs.shape == (2, 7) and torch.allclose(probs.sum(1), torch.ones(2))
    meta = TASK.metadata(config, test)
    assert "NOT FOR CLINICAL USE" in meta["intended_use"] and "generated images only" in meta["intended_use"]
    assert [c["name"] for c in meta["classes"]] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert all({"value", "scheme", "meaning"} <= set(c) for c in meta["classes"])
    assert meta["outputs"]["probabilities"]["shape"] == [None, 7]


def _verhoeff_ok(number: str) -> bool:
    d = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
         [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
         [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
         [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
    p = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
         [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
         [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]
    c = 0
    for i, digit in enumerate(reversed(number)):
        c = d[c][p[i % 8][int(digit)]]
    return c == 0


def test_shipped_snomed_codes_are_well_formed_and_unverified_ones_are_not_sct():
    for name, concept in CLASS_CODES.items():
        if concept["scheme"] == "SCT":
            assert concept["value"].isdigit() and _verhoeff_ok(concept["value"]), name
        else:
            assert concept["scheme"] == "99MEDGATE" and concept.get("snomed_ct") == "UNVERIFIED", name


def test_report_helpers():
    assert threshold_for_sensitivity([1, 1, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.95], 0.75) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="`positive`"):
        threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9)
    y = np.repeat(np.arange(3), 30)
    auc, lo, hi = macro_auc_ci(y, np.eye(3)[y] * 0.8 + 0.1, n_resamples=20)
    assert auc == 1.0 and lo == 1.0 and hi == 1.0
    view = BalancedView(list(range(10)), np.array([0] * 8 + [1] * 2), seed=0)
    got = [view[i] for i in range(10)]
    assert sum(g >= 8 for g in got) == 5
