"""training.reference on a copy of the registered tb 1.1.0: its ONNX file scores a small generated
held-out split, and reference.json describes it (scores, positive rate at the operating point,
input features of each model input)."""
from __future__ import annotations

import shutil

import numpy as np

from models.reference import ModelReference
from models.registry import DEFAULT_ROOT, ModelRegistry
from training import reference
from training.tasks.tb import TASK


def test_reference_of_a_registered_image_model(tmp_path):
    shutil.copytree(DEFAULT_ROOT / "tb", tmp_path / "tb", ignore=shutil.ignore_patterns("1.0.0", "reference.json"))
    manifest = ModelRegistry(tmp_path).get("tb", "1.1.0")
    config = reference._config_of(TASK, manifest)
    config = {**config, "data": {**config["data"], "n_test": 24}}
    datasets = TASK.datasets(config)
    made = reference.attach(manifest, TASK, datasets, config)
    assert ModelReference.read(manifest.folder) == made
    inputs = reference.image_inputs(datasets["test"])
    scores = reference.onnx_scores(manifest, inputs)
    assert made.n == 24 and made.score.n == 24 and sum(made.inputs["mean_intensity"].counts) == 24
    assert made.positive_rate == round(float(np.mean(scores >= manifest.operating_point["threshold"])), 6)
    assert made.inputs["source_size_px"].edges == (float("-inf"), 256.0, float("inf"))  # the generator's size
    assert "24 items of the held-out 'test' split" in made.data and "seed 0" in made.data
