"""The versioned model registry and manifest integrity check."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.finding import Concept
from models.registry import (
    ModelIntegrityError,
    ModelManifest,
    ModelNotFoundError,
    ModelRegistry,
    parse_reference,
    semantic_version,
)


def test_tb_manifest_loads_and_verifies():
    registry = ModelRegistry()
    assert "tb" in registry.names()
    manifest = registry.get("tb")
    assert manifest.name == "tb" and manifest.version == registry.versions("tb")[-1]
    assert manifest.path.name == "model.onnx" and manifest.path.is_file()
    assert manifest.input_name == "image" and manifest.input_size_px > 0
    assert 0.0 < manifest.threshold < 1.0
    assert manifest.finding == Concept("154283005", "SCT", "Pulmonary tuberculosis")
    assert manifest.metrics["auc"] > 0.5
    assert "NOT FOR CLINICAL USE" in manifest.intended_use
    manifest.verify()


def _copy_tb(tmp_path: Path, version: str = "1.0.0") -> Path:
    source = ModelRegistry().get("tb", "1.0.0").path.parent
    target = tmp_path / "tb" / version
    shutil.copytree(source, target)
    if version != "1.0.0":
        data = json.loads((target / "metadata.json").read_text())
        data["version"] = version
        (target / "metadata.json").write_text(json.dumps(data))
    return target


def test_tampered_copy_raises_naming_the_file(tmp_path):
    folder = _copy_tb(tmp_path)
    with open(folder / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    manifest = ModelRegistry(tmp_path).get("tb")
    with pytest.raises(ModelIntegrityError, match="model.onnx"):
        manifest.verify()


def test_missing_model_file_raises(tmp_path):
    folder = _copy_tb(tmp_path)
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        ModelRegistry(tmp_path).get("tb").verify()


def test_latest_version_is_semantic_not_lexical(tmp_path):
    for version in ("1.0.0", "1.2.0", "1.10.0"):
        _copy_tb(tmp_path, version)
    (tmp_path / "tb" / "notes").mkdir()  # ignored: not a version folder
    registry = ModelRegistry(tmp_path)
    assert registry.versions("tb") == ["1.0.0", "1.2.0", "1.10.0"]
    assert registry.get("tb").version == "1.10.0"
    assert registry.get("tb", "1.2.0").version == "1.2.0"


def test_unknown_model_or_version_fails_fast(tmp_path):
    _copy_tb(tmp_path)
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelNotFoundError, match="pneumonia"):
        registry.get("pneumonia")
    with pytest.raises(ModelNotFoundError, match="available: 1.0.0"):
        registry.get("tb", "9.9.9")
    with pytest.raises(ValueError, match="`name`"):
        registry.get("../tb")


def test_manifest_that_disagrees_with_its_folder_is_rejected(tmp_path):
    folder = _copy_tb(tmp_path)
    data = json.loads((folder / "metadata.json").read_text())
    data["threshold"] = 1.5
    (folder / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="threshold"):
        ModelManifest.from_file(folder / "metadata.json")


def test_name_at_version_reference(tmp_path):
    _copy_tb(tmp_path)
    registry = ModelRegistry(tmp_path)
    assert registry.get("tb@1.0.0").version == "1.0.0"
    assert parse_reference("tb@1.2.3") == ("tb", "1.2.3") and parse_reference("tb") == ("tb", None)
    with pytest.raises(ValueError, match="contradicts"):
        registry.get("tb@1.0.0", "2.0.0")


def test_semantic_version_parsing():
    assert semantic_version("2.10.3") == (2, 10, 3)
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        semantic_version("1.0")
