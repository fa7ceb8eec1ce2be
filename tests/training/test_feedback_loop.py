"""The whole feedback loop on generated data: verdicts -> export -> train --from-feedback -> shadow ->
promote -> rollback.

A tiny ``tb`` version (32 px inputs) trained here on generated radiographs stands for the shipped
one, in a registry under tmp_path.  Ten generated studies carry its "calls" (six right, four wrong);
a radiologist's verdicts go in through the feedback service; ``medgate export-training
--with-feedback`` writes the de-identified folder; ``medgate train tb --from-feedback`` registers the
candidate with the current version's and its own figures on the same held-out set; ``medgate models``
deploys it as a shadow beside the current version in an in-process :class:`ModelServer`, promotes it
and rolls back, each change recorded and audited.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from models.registry import DEFAULT_ROOT, ROOT_ENV, ModelRegistry
from serving.cli.main import main as medgate
from serving.feedback.service import FeedbackService, Reviewer
from serving.feedback.store import FeedbackStore
from serving.governance.audit import AuditLog
from serving.inference.deployments import ModelServer
from serving.inference.versions import read_versions
from serving.store import Store
from training.bundle import write_version
from training.cli import measure
from training.config import load_task, resolve_config
from training.loop import train
from training.synthetic.cxr import generate_cxr, make_dataset
from training.synthetic.dicom import make_dx_dataset

SOURCE_PX, INPUT_PX = 48, 32
BASE = {"seed": 5, "data": {"n_train": 64, "n_val": 32, "n_test": 32, "source_size_px": SOURCE_PX, "workers": 1},
        "input": {"size_px": INPUT_PX}, "train": {"batch_size": 16, "max_steps": 16, "checkpoint_every": 100},
        "eval": {"bootstrap_resamples": 50}}
RETRAIN = {"feedback": {"generated_train": 48, "generated_val": 24, "generated_test": 24, "repeat": 2,
                        "epochs": 1, "heldout_fraction": 0.3}, "eval": {"bootstrap_resamples": 50}}
WRONG = {6, 7, 8, 9}  # studies whose model call is wrong: 6, 7 false positives, 8, 9 missed findings


@pytest.fixture()
def registry(tmp_path, monkeypatch) -> Path:
    """``tmp_path/models`` with tb 1.0.0, a tiny version trained on generated data."""
    root = tmp_path / "models"
    (root / "tb").mkdir(parents=True)
    shutil.copy(DEFAULT_ROOT / "tb" / "serving.json", root / "tb" / "serving.json")
    monkeypatch.setenv(ROOT_ENV, str(root))
    task = load_task("tb")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    config = resolve_config(task, tmp_path / "base.yaml")
    datasets = task.datasets(config)
    result = train(task, config, tmp_path / "base-run", datasets=datasets, progress=False)
    validation, test = measure(task, result.network, config, datasets)
    write_version(root, task, result.network, config, version="1.0.0", test=test, validation=validation,
                  training={"command": "tests/training/test_feedback_loop.py", "steps": result.steps})
    return root


def add_studies(state: Path) -> list[dict]:
    """Ten generated studies with tb 1.0.0's call on each (four wrong) and a radiologist's verdict."""
    store = Store(state / "medgate.sqlite3")
    service = FeedbackService(store, FeedbackStore(store.database))
    rng, studies = np.random.default_rng(11), []
    for i in range(10):
        truth = i % 2 == 0 if i < 6 else i >= 8
        sample = generate_cxr(rng, SOURCE_PX, tb=truth)
        ds = make_dx_dataset(sample.pixels, patient_id=f"0791234567{i:02d}")
        path = state / "spool" / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        store.add_instance({"sop_instance_uid": ds.SOPInstanceUID, "study_uid": ds.StudyInstanceUID,
                            "series_uid": ds.SeriesInstanceUID, "sop_class_uid": ds.SOPClassUID, "modality": "DX",
                            "path": str(path), "calling_ae": "CXR_ROOM_1"})
        store.set_study_status(ds.StudyInstanceUID, "done")
        called = truth != (i in WRONG)
        point = list(sample.lesion_centres_px[0]) if called and truth else None
        store.add_result(ds.StudyInstanceUID, "sr", str(state / f"SR-{i}.dcm"), {
            "model": "tb", "version": "1.0.0", "sop_instance_uid": f"1.2.826.0.1.{i}",
            "findings": [{"probability": 0.8 if called else 0.2, "positive": called, "location": None,
                          "point": point, "source": ds.SOPInstanceUID}]})
        body = {"study_uid": ds.StudyInstanceUID, "model": "tb", "version": "1.0.0", "finding": 1,
                "verdict": "agree"}
        if i in (6, 7):
            body.update(verdict="disagree", reason="false-positive")
        elif i in (8, 9):  # one on the finding, one marked on the report (no finding number)
            x, y = sample.lesion_centres_px[0]
            body.update(verdict="disagree", reason="missed-finding", point_fraction=[x / SOURCE_PX, y / SOURCE_PX],
                        finding=1 if i == 8 else None)
        service.on_finding(Reviewer("dr-a", "radiologist"), body)
        studies.append({"truth": truth, "called": called})
    store.close()
    return studies


def test_feedback_retrain_shadow_promote_rollback(tmp_path, registry, capsys):
    state = tmp_path / "var"
    (state / "spool").mkdir(parents=True)
    config = tmp_path / "medgate.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(state)}))
    cli = ["--config", str(config)]
    assert medgate(cli + ["models", "deploy", "tb@1.0.0"]) == 0
    studies = add_studies(state)

    out = tmp_path / "export"
    since = datetime.now(timezone.utc).date().isoformat()
    assert medgate(cli + ["export-training", "--since", since, "--out", str(out), "--with-feedback"]) == 0
    labels = json.loads((out / "tb" / "feedback.json").read_text())
    assert labels["numCases"] == 10 and labels["deployed_version"] == "1.0.0"
    assert "dr-a" not in (out / "tb" / "feedback.json").read_text()

    (tmp_path / "retrain.yaml").write_text(yaml.safe_dump(RETRAIN))
    assert medgate(["train", "tb", "--from-feedback", str(out / "tb"), "--registry", str(registry), "--config",
                    str(tmp_path / "retrain.yaml"), "--out", str(tmp_path / "retrain-run"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "10 reviewed cases" in printed and "vs" in printed
    assert ModelRegistry(registry).versions("tb") == ["1.0.0", "1.1.0"]  # the next minor version
    candidate = ModelRegistry(registry).get("tb", "1.1.0")
    comparison = candidate.raw["comparison"]
    current, new = comparison["current"]["metrics"], comparison["candidate"]["metrics"]
    assert comparison["current"]["version"] == "1.0.0"
    assert current["n"] == new["n"] == comparison["heldout"]["n"] == 24 + comparison["heldout"]["feedback"]
    assert comparison["heldout"]["feedback"] == 4  # round(30 %) of each label's 5 cases
    for figures in (current, new):
        assert 0.0 <= figures["auc"] <= 1.0 and 0.0 <= figures["balanced_accuracy"] <= 1.0
    mix = candidate.raw["feedback"]["mix"]
    assert mix["feedback_train"] == 6 and mix["generated_train"] == 48 and mix["repeat"] == 2
    assert candidate.raw["metrics"]["before: 1.0.0"]["auc"] == current["auc"]
    card = (registry / "tb" / "README.md").read_text()
    assert "NOT FOR CLINICAL USE" in card and "trained on generated data + 6 feedback cases" in card
    assert "before: 1.0.0: auc" in card
    with capsys.disabled():
        print(f"\nretrained tb on {len(studies)} feedback cases: {comparison['candidate']['feedback_heldout']} "
              f"(candidate) vs {comparison['current']['feedback_heldout']} (1.0.0) right calls on held-out feedback")
        print("before (1.0.0):", json.dumps(current))
        print("after  (1.1.0):", json.dumps(new))
        print(f"train --from-feedback: {candidate.raw['training']['total_seconds']} s in all")

    assert medgate(cli + ["models", "deploy", "tb", "--shadow", "1.1.0"]) == 0
    entry = read_versions(state)["tb"]
    assert (entry["version"], entry["shadow_version"]) == ("1.0.0", "1.1.0")
    server = ModelServer("tb", {"max_batch_size": 8})
    server.reconfigure(entry)
    images = make_dataset(8, 99, SOURCE_PX, INPUT_PX)[0]
    replies = server.run_batch(list(images))
    assert {r["version"] for r in replies} == {"1.0.0"}
    report = server.shadow_report()
    assert report["items"] == 8 and report["shadow_version"] == "1.1.0" and 0.0 <= report["agreement"] <= 1.0
    assert report["score_difference"]["max_abs"] >= abs(report["score_difference"]["mean"])
    with capsys.disabled():
        print("shadow 1.1.0 vs 1.0.0 on 8 live items:", json.dumps(report))

    shadow_loaded = server.shadow
    assert medgate(cli + ["models", "promote", "tb"]) == 0
    entry = read_versions(state)["tb"]
    assert entry["version"] == "1.1.0" and "shadow_version" not in entry and entry["previous"] == ["1.0.0"]
    server.reconfigure(entry)
    assert server.active is shadow_loaded and server.shadow is None  # promoted without loading again
    assert {r["version"] for r in server.run_batch(list(images[:2]))} == {"1.1.0"}

    assert medgate(cli + ["models", "rollback", "tb"]) == 0
    entry = read_versions(state)["tb"]
    assert entry["version"] == "1.0.0" and entry["previous"] == []
    server.reconfigure(entry)
    assert server.info()["version"] == "1.0.0"
    assert medgate(cli + ["models", "rollback", "tb"]) == 2  # nothing left to roll back to

    log = AuditLog(state / "medgate.sqlite3")
    changes = [r["query"] for r in log.rows() if r["action"] == "execute"]
    assert changes == ["models deploy tb 1.0.0", "models deploy tb 1.0.0 with shadow 1.1.0",
                       "models promote tb shadow 1.1.0 over 1.0.0", "models rollback tb from 1.1.0 to 1.0.0"]
    assert log.verify().ok
    log.close()
