"""``medgate export-training``: de-identified DICOM + model findings, loadable by the tb task."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import yaml
from pydicom import dcmread

from serving.governance.audit import AuditLog
from serving.store import Store
from training.synthetic.dicom import make_dx_dataset


def add_study(store: Store, folder, patient_id: str, positive: bool, burned_in: bool = False) -> str:
    pixels = (np.random.default_rng(1).random((128, 128)) * 4000).astype(np.uint16)
    ds = make_dx_dataset(pixels, patient_id=patient_id)
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    store.add_instance({"sop_instance_uid": ds.SOPInstanceUID, "study_uid": ds.StudyInstanceUID,
                        "series_uid": ds.SeriesInstanceUID, "sop_class_uid": ds.SOPClassUID, "modality": "DX",
                        "path": str(path), "calling_ae": "MODALITY"})
    store.set_study_status(ds.StudyInstanceUID, "done")
    store.add_result(ds.StudyInstanceUID, "sr", str(folder / "SR-x.dcm"), {
        "model": "tb", "version": "1.0.0", "sop_instance_uid": "1.2.3",
        "findings": [{"probability": 0.9 if positive else 0.1, "positive": positive, "location": None,
                      "point": [32, 64] if positive else None, "source": ds.SOPInstanceUID}]})
    return ds.PatientID


def test_export_is_deidentified_labelled_and_trainable(tmp_path):
    state = tmp_path / "var"
    (state / "spool").mkdir(parents=True)
    store = Store(state / "medgate.sqlite3")
    patients = [add_study(store, state / "spool", f"07912345678{i}", positive=i % 2 == 0) for i in range(3)]
    add_study(store, state / "spool", "079999999999", positive=True, burned_in=True)
    store.close()
    config = tmp_path / "medgate.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(state)}))
    out = tmp_path / "export"
    since = datetime.now(timezone.utc).date().isoformat()
    result = subprocess.run([sys.executable, "-m", "serving.cli", "--config", str(config), "export-training",
                             "--since", since, "--out", str(out)], capture_output=True, text=True, timeout=120)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "tb: 3 de-identified images" in result.stdout and "burned in annotation): 1" in result.stdout

    datalist = json.loads((out / "tb" / "dataset.json").read_text())
    assert datalist["numTraining"] == 3 and "pseudo-labels" in datalist["labelSource"]
    assert sorted(e["label"] for e in datalist["training"]) == [0, 1, 1]
    positive = next(e for e in datalist["training"] if e["label"] == 1)
    assert positive["centres"] == [[0.25, 0.5]]
    for entry in datalist["training"]:
        ds = dcmread(out / "tb" / entry["image"])
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientID.startswith("ANON-")
        assert ds.PatientID not in patients and ds.SOPInstanceUID.startswith("2.25.")
    assert not any(p in (out / "tb" / "dataset.json").read_text() for p in patients)
    assert not list(out.rglob("*.bin"))  # the salt stays under state_dir
    assert len(list((state / "exports").glob("salt-*.bin"))) == 1

    from training.loaders import medgate_export

    dataset = medgate_export(out / "tb", size_px=64)
    item = dataset[0]
    assert tuple(item["image"].shape) == (1, 64, 64) and item["label"].item() in (0.0, 1.0)

    log = AuditLog(state / "medgate.sqlite3")
    rows = log.rows()
    assert [r["action"] for r in rows] == ["export"] * 3 and log.verify().ok
    log.close()
