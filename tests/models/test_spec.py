"""Serving specs: each model folder declares how it is served; invalid declarations are refused
naming the field."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from models.registry import ROOT_ENV, ModelRegistry, default_root, registered
from models.spec import (SPEC_FILE, InputKind, ReplyFormat, RunnerKind, ServingSpec, load_spec)

TB = {"input": "image", "preprocess": "models.transforms:to_model_input", "reply": "finding",
      "results": ["sr", "sc", "gsps", "fhir"], "uploads": ["dicom", "png", "jpeg"]}


def test_every_shipped_model_declares_how_it_is_served():
    registry = ModelRegistry()
    specs = {name: registry.get(name).serving for name in registry.names()}
    assert specs["tb"].input is InputKind.IMAGE and specs["tb"].reply is ReplyFormat.FINDING
    assert specs["derm"].reply is ReplyFormat.CLASSES
    assert specs["nodule"].runner is RunnerKind.VOLUME and specs["nodule"].yields("seg")
    assert specs["nodule"].uploads == ()  # a CT series comes by C-STORE or STOW-RS
    assert specs["vitals"].input is InputKind.WINDOW and specs["vitals"].accepts("json")
    for name, spec in specs.items():  # every dotted reference resolves to a function
        for field in ("preprocess", "entry"):
            if getattr(spec, field):
                assert callable(spec.function(field)), (name, field)


def test_strings_become_enums_once_and_round_trip():
    spec = ServingSpec.from_dict(TB)
    assert spec.input is InputKind.IMAGE and spec.runner is RunnerKind.STACK
    assert spec.results == ("sr", "sc", "gsps", "fhir")
    assert ServingSpec.from_dict(spec.to_dict()) == spec
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()


@pytest.mark.parametrize("change, message", [
    ({"input": "movie"}, "`input` must be one of ['image', 'volume', 'window'], 'movie' is given"),
    ({"results": ["sr", "pdf"]}, "`results` must be among ['sr', 'seg', 'sc', 'gsps', 'fhir'], ['pdf'] are given"),
    ({"preprocess": None}, "`preprocess` is required to accept the uploads ['dicom', 'png', 'jpeg']"),
    ({"preprocess": "os:system"}, "under the 'models' package, 'os:system' is given"),
    ({"preprocess": "models.transforms"}, "\"module:function\""),
    ({"input": "volume"}, "`uploads` ['dicom', 'png', 'jpeg'] need input \"image\", 'volume' is given"),
    ({"uploads": ["json"]}, "`uploads` [\"json\"] needs input \"window\", 'image' is given"),
    ({"runner": "volume"}, "`entry` is required with runner \"volume\""),
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"results": "sr"}, "`results` must be a list, 'sr' is given"),
])
def test_invalid_specs_are_refused_naming_the_field(change, message):
    with pytest.raises(ValueError) as info:
        ServingSpec.from_dict({**TB, **change}, "fracture/serving.json")
    assert message in str(info.value) and str(info.value).startswith("fracture/serving.json: ")


def test_missing_keys_are_named():
    with pytest.raises(ValueError, match=r"missing \['reply'\]"):
        ServingSpec.from_dict({"input": "image"})


def test_a_version_metadata_block_wins_over_the_folder_file(tmp_path):
    (tmp_path / SPEC_FILE).write_text(json.dumps(TB))
    assert load_spec(tmp_path, {"name": "x", "version": "1.0.0"}).reply is ReplyFormat.FINDING
    volume = {"input": "volume", "reply": "candidates", "runner": "volume",
              "entry": "models.nodule.serving:serve_volume"}
    assert load_spec(tmp_path, {"serving": volume}).input is InputKind.VOLUME


def test_a_folder_without_a_spec_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {tmp_path / SPEC_FILE} and no `serving` key"):
        load_spec(tmp_path, {})
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_spec(tmp_path)


def test_the_registry_root_comes_from_the_environment(tmp_path, monkeypatch):
    source = ModelRegistry().get("tb")
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    assert default_root() == tmp_path
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / SPEC_FILE).write_text(json.dumps({**TB, "results": ["sr"]}))
    version = tmp_path / "tb" / source.version
    version.mkdir()
    (version / "metadata.json").write_text(json.dumps(source.raw))
    assert ModelRegistry().names() == ["tb"]
    assert registered("tb", source.version).serving.results == ("sr",)  # this root's, not the package's
    monkeypatch.delenv(ROOT_ENV)
    assert registered("tb", source.version).serving.results == ("sr", "sc", "gsps", "fhir")



def test_the_documented_example_is_a_valid_spec():
    """docs/serving.md's serving.json example is tb's own declaration."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text(encoding="utf-8")
    [example] = re.findall(r"```json\n(.*?)```", doc, re.S)
    assert ServingSpec.from_dict(json.loads(example)) == ModelRegistry().get("tb").serving
