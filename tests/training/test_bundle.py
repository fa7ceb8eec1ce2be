"""Registering a version in MONAI bundle form, reading it back, and its model card."""
from __future__ import annotations

import json

import pytest

from models.registry import ModelIntegrityError, ModelRegistry
from toy_task import TASK
from training.bundle import write_version
from training.cli import measure
from training.loop import train
from training.modelcard import GENERATED_NOTE, write_model_card

BUNDLE_KEYS = {"version", "changelog", "monai_version", "pytorch_version", "numpy_version",
               "required_packages_version", "task", "description", "authors", "copyright", "data_source",
               "data_type", "intended_use", "network_data_format"}
MEDGATE_KEYS = {"name", "file", "sha256", "threshold", "operating_point", "finding", "metrics", "training"}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    config = TASK.default_config()
    datasets = TASK.datasets(config)
    result = train(TASK, config, root.parent / "run", datasets=datasets, progress=False)
    validation, test = measure(TASK, result.network, config, datasets)
    facts = {"command": "medgate train toy --version 0.1.0", "steps": result.steps, "seconds": result.seconds,
             "device": result.device}
    for version in ("0.1.0", "0.2.0"):
        write_version(root, TASK, result.network, config, version=version, test=test, validation=validation,
                      training=facts, check_inputs=[(datasets["val"][:4]["features"],)])
    return root, write_model_card(root, "toy")


def test_metadata_json_has_bundle_and_medgate_keys(registered):
    root, _ = registered
    meta = json.loads((root / "toy" / "0.1.0" / "metadata.json").read_text())
    assert BUNDLE_KEYS | MEDGATE_KEYS <= set(meta)
    assert set(meta["network_data_format"]) == {"inputs", "outputs"}
    assert meta["training"]["config"] == TASK.default_config() and meta["training"]["steps"] == 6
    assert meta["onnx"]["parity_max_relative_error"]["probability"] <= 1e-4
    assert {"model.onnx", "model.pt", "metrics.json", "roc.png"} <= {p.name for p in (root / "toy" / "0.1.0").iterdir()}
    assert not list((root / "toy").glob(".*partial"))


def test_registry_round_trip_with_name_at_version(registered):
    root, _ = registered
    registry = ModelRegistry(root)
    latest = registry.get("toy")
    assert latest.version == "0.2.0" and latest.input_name == "features" and latest.input_size_px is None
    pinned = registry.get("toy@0.1.0")
    assert pinned.version == "0.1.0" and 0 < pinned.threshold < 1 and pinned.finding.scheme == "TOY"
    pinned.verify()
    assert set(latest.raw["changelog"]) == {"0.1.0", "0.2.0"}
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        registry.get("toy@1")


def test_existing_version_is_never_overwritten(registered):
    root, _ = registered
    network = TASK.build_network(TASK.default_config())
    with pytest.raises(FileExistsError, match="0.1.0"):
        write_version(root, TASK, network, TASK.default_config(), version="0.1.0", test=None, validation=None,
                      training={})


def test_tampered_onnx_fails_verification(registered, tmp_path):
    import shutil

    root, _ = registered
    shutil.copytree(root / "toy", tmp_path / "toy")
    with open(tmp_path / "toy" / "0.2.0" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="model.onnx"):
        ModelRegistry(tmp_path).get("toy@0.2.0").verify()


def test_model_card_describes_the_latest_version(registered):
    _, card = registered
    text = card.read_text()
    assert text.startswith("# Model card: `toy` 0.2.0")
    assert GENERATED_NOTE in text and "NOT FOR CLINICAL USE" in text
    assert "| auc |" in text and " – " in text  # CI column filled
    assert "![roc](0.2.0/roc.png)" in text
    assert "`medgate train toy --version 0.1.0`" in text
    assert "| 0.1.0 |" in text and "| 0.2.0 |" in text
