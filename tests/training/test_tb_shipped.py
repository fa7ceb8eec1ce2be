"""The shipped tb model (latest version) separates freshly generated radiographs it never saw."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from models.registry import ModelRegistry, semantic_version
from training.metrics import roc_auc
from training.synthetic.cxr import make_dataset

FRESH_SEED = 987_654  # the training config derives its split seeds from seed 0: 1, 2, 3


def test_latest_tb_has_high_auc_on_fresh_generated_images():
    manifest = ModelRegistry().get("tb")
    manifest.verify()
    assert semantic_version(manifest.version) >= (1, 1, 0) and manifest.raw["training"]["config"]["seed"] == 0
    images, labels, _ = make_dataset(64, FRESH_SEED, 256, manifest.input_size_px)
    session = ort.InferenceSession(str(manifest.path), providers=["CPUExecutionProvider"])
    probability, _ = session.run(["probability", "heatmap"], {manifest.input_name: images})
    assert roc_auc(labels, probability[:, 0]) >= 0.85
    called = probability[:, 0] >= manifest.threshold
    assert np.mean(called == labels.astype(bool)) >= 0.75
