"""``medgate models deploy / promote / rollback`` without a running server: what is recorded in
``model_versions.json`` and the audit log (the live swap is tests/training/test_feedback_loop.py's)."""
from __future__ import annotations

import shutil

import pytest
import yaml

from models.registry import DEFAULT_ROOT, ROOT_ENV
from serving.cli.main import main as medgate
from serving.fhir.report import device_resource
from serving.governance.audit import AuditLog
from serving.inference.versions import read_versions


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    """``medgate --config <tmp>`` over a registry holding tb 1.0.0 and 1.1.0 (copies of the shipped ones)."""
    root = tmp_path / "models"
    shutil.copytree(DEFAULT_ROOT / "tb", root / "tb", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setenv(ROOT_ENV, str(root))
    config = tmp_path / "medgate.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "var")}))
    return lambda *args: medgate(["--config", str(config), "models", *args])


def test_a_shadow_deployed_by_name_runs_beside_the_version_before_it_not_as_it(cli, tmp_path):
    assert cli("deploy", "tb", "--shadow", "1.1.0") == 0  # nothing recorded yet: the newest below the shadow
    entry = read_versions(tmp_path / "var")["tb"]
    assert (entry["version"], entry["shadow_version"]) == ("1.0.0", "1.1.0")
    assert cli("deploy", "tb@1.1.0", "--shadow", "1.1.0") == 2  # a version cannot shadow itself


def test_promote_then_rollback_are_recorded_and_audited(cli, tmp_path, capsys):
    assert cli("promote", "tb") == 2 and "no shadow version to promote" in capsys.readouterr().out
    assert cli("deploy", "tb@1.0.0") == 0
    assert cli("rollback", "tb") == 2 and "no previous version" in capsys.readouterr().out
    assert cli("deploy", "tb", "--shadow", "1.1.0") == 0
    assert read_versions(tmp_path / "var")["tb"]["version"] == "1.0.0"  # the recorded version is kept
    assert cli("promote", "tb") == 0
    entry = read_versions(tmp_path / "var")["tb"]
    assert entry["version"] == "1.1.0" and entry["previous"] == ["1.0.0"] and "shadow_version" not in entry
    assert entry["changed"]["what"] == "promote tb shadow 1.1.0 over 1.0.0"
    assert cli("rollback", "tb") == 0
    entry = read_versions(tmp_path / "var")["tb"]
    assert entry["version"] == "1.0.0" and entry["previous"] == []

    log = AuditLog(tmp_path / "var" / "medgate.sqlite3")
    rows = log.rows()
    assert [(r["action"], r["role"], r["client"]) for r in rows] == [("execute", "operator", "local")] * 4
    assert [r["query"] for r in rows][2:] == ["models promote tb shadow 1.1.0 over 1.0.0",
                                              "models rollback tb from 1.1.0 to 1.0.0"]
    assert rows[2]["resource_type"] == "Device" and rows[2]["resource_id"] == device_resource("tb", "1.1.0")["id"]
    assert log.verify().ok
    log.close()


def test_an_unknown_or_tampered_version_is_refused_and_nothing_recorded(cli, tmp_path, capsys):
    assert cli("deploy", "tb@9.9.9") == 2 and "no version '9.9.9'" in capsys.readouterr().out
    (tmp_path / "models" / "tb" / "1.1.0" / "model.onnx").write_bytes(b"not the model")
    assert cli("deploy", "tb@1.0.0", "--shadow", "1.1.0") == 2 and "SHA-256" in capsys.readouterr().out
    assert read_versions(tmp_path / "var") == {}
