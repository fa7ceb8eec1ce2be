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


def test_medgate_train_writes_the_reference_of_the_new_version(tmp_path, capsys):
    import yaml

    from serving.cli.main import main

    tiny = {"data": {"n_train": 32, "n_val": 16, "n_test": 16, "source_size_px": 64, "workers": 1},
            "input": {"size_px": 48}, "train": {"batch_size": 8, "max_steps": 2}, "eval": {"bootstrap_resamples": 20}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    (tmp_path / "registry" / "tb").mkdir(parents=True)
    shutil.copy(DEFAULT_ROOT / "tb" / "serving.json", tmp_path / "registry" / "tb")  # served as the shipped tb
    assert main(["train", "tb", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), "--seed", "1",
                 "--version", "0.0.1", "--registry", str(tmp_path / "registry"), "--no-progress"]) == 0
    made = ModelReference.read(ModelRegistry(tmp_path / "registry").get("tb", "0.0.1").folder)
    assert made is not None and made.n == 16 and made.inputs["source_size_px"].edges[1] == 64.0
    assert "monitoring reference: 16 held-out items" in capsys.readouterr().out
