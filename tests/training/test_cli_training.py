"""``medgate train / evaluate / export`` end to end on a tiny generated tb run."""
from __future__ import annotations

import json

import pytest
import yaml

from models.registry import ModelRegistry
from serving.cli.main import main

TINY = {"data": {"n_train": 32, "n_val": 16, "n_test": 16, "source_size_px": 64, "workers": 1},
        "input": {"size_px": 48}, "train": {"batch_size": 8, "max_steps": 3, "checkpoint_every": 2},
        "eval": {"bootstrap_resamples": 20}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb_cli")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (root / "registry").mkdir()
    argv = ["train", "tb", "--config", str(root / "tiny.yaml"), "--out", str(root / "run"), "--seed", "1",
            "--version", "0.0.1", "--registry", str(root / "registry"), "--no-progress"]
    assert main(argv) == 0
    return root


def test_train_registers_a_version_with_card(run):
    manifest = ModelRegistry(run / "registry").get("tb@0.0.1")
    manifest.verify()
    assert manifest.input_size_px == 48 and manifest.raw["training"]["steps"] == 3
    assert manifest.raw["training"]["command"].startswith("medgate train tb --config")
    assert "--seed 1 --version 0.0.1" in manifest.raw["training"]["command"]
    assert {"roc.png", "reliability.png"} <= {p.name for p in manifest.folder.iterdir()}
    assert "generated data, not for clinical use" in (run / "registry" / "tb" / "README.md").read_text()
    assert json.loads((run / "run" / "eval-test" / "metrics.json").read_text())["metrics"]["n"] == 16


def test_resume_extends_the_run(run, capsys):
    assert main(["train", "tb", "--out", str(run / "run"), "--resume", "--max-steps", "4", "--no-progress"]) == 0
    assert '"steps": 4' in capsys.readouterr().out


def test_evaluate_registered_version_on_fresh_data(run, capsys):
    out = run / "eval"
    assert main(["evaluate", "tb@0.0.1", "--registry", str(run / "registry"), "--seed", "99", "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["seed"] == 99 and record["metrics"]["n"] == 16 and (out / "roc.png").is_file()


def test_export_checkpoint_as_new_version(run):
    checkpoint = run / "run" / "checkpoints" / "last.pt"
    argv = ["export", "tb", "--checkpoint", str(checkpoint), "--version", "0.0.2", "--registry", str(run / "registry")]
    assert main(argv) == 0
    assert ModelRegistry(run / "registry").get("tb").version == "0.0.2"
    assert main(argv) == 2  # an existing version is refused


def test_unknown_model_fails_clearly(capsys):
    assert main(["train", "pneumonia"]) == 2
    assert "pneumonia" in capsys.readouterr().out
