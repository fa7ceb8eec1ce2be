"""End to end: a tiny, few-second training run writes a consistent model version."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from models.registry import ModelRegistry
from training.train_tb import main, roc_auc, sensitivity_specificity, youden_threshold


def test_main_writes_manifest_and_onnx(tmp_path):
    out = tmp_path / "tb" / "0.0.1"
    argv = ["--out", str(out), "--seconds", "3", "--seed", "1", "--input-size-px", "64", "--source-size-px", "96",
            "--n-train", "48", "--n-val", "16", "--n-test", "16", "--batch", "8", "--workers", "1"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    onnx_file = out / manifest["file"]
    assert onnx_file.is_file()
    assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == manifest["sha256"]
    assert manifest["name"] == "tb" and manifest["version"] == "0.0.1"
    assert manifest["input"] == {"name": "image", "shape": [None, 1, 64, 64], "dtype": "float32",
                                 "preprocessing": "models.transforms.to_model_input", "size_px": 64}
    assert 0.0 < manifest["threshold"] < 1.0
    assert manifest["metrics"]["n"] == 16
    assert "no real patient data" in manifest["training_data"]
    assert manifest["intended_use"].startswith("NOT FOR CLINICAL USE")
    ModelRegistry(tmp_path).get("tb").verify()


def test_rank_auc_handles_ties_and_extremes():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), rng.random(200)
    pairs = np.mean([(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]])
    assert roc_auc(y, s) == pytest.approx(pairs)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])


def test_youden_threshold_separates_separable_scores():
    labels, scores = np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    t = youden_threshold(labels, scores)
    assert 0.3 < t < 0.7
    assert sensitivity_specificity(labels, scores, t) == (1.0, 1.0)
