"""``kill -9`` of ``medgate serve`` mid-study, restart, the rest arrives: processed exactly once."""
from __future__ import annotations

import time

import pytest
from pydicom import dcmread

from dicom_gateway import ledger
from gateway_helpers import storescu, write_ct_series
from peers import find_peer, free_port, wait_until
from server_process import ServerProcess
from serving.store import Store

SLICES = 10


def _config(root, dicom_port: int) -> dict:
    return {
        "state_dir": str(root / "var"),
        "dicom": {"ae_title": "MEDGATE", "port": dicom_port,
                  "completion": {"group_by": "study", "quiet_period_s": 5.0},
                  "routes": [{"models": ["tb"], "modality": ["CT"]}]},  # a 2D model per slice
        "http": {"port": free_port()},
        "mqtt": {"url": None, "embedded_port": free_port()},
        "fhir": {"base_url": None},
    }


def test_kill_9_mid_study_then_restart(tmp_path):
    if find_peer("storescu") is None:
        pytest.skip(reason="storescu not installed (Debian package dcmtk)")
    files = write_ct_series(tmp_path / "ct", SLICES, size_px=64)
    for path in files:  # the modality announces the study size: completion needs no quiet period
        ds = dcmread(path)
        ds.NumberOfStudyRelatedInstances = SLICES
        ds.save_as(path)
    study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    dicom_port = free_port()
    first = ServerProcess(_config(tmp_path, dicom_port), tmp_path)
    first.start()
    try:
        assert storescu(dicom_port, *files[:4]).returncode == 0
    finally:
        first.proc.kill()  # kill -9: no clean shutdown of anything
        first.proc.wait(30)
    store = Store(tmp_path / "var" / "medgate.sqlite3")
    try:
        assert len(store.instances_of(study)) == 4  # every acknowledged instance survived
        assert store.study(study)["status"] == "receiving"
        second = ServerProcess(_config(tmp_path, dicom_port), tmp_path)  # same state_dir and port
        second.start()
        try:
            assert storescu(dicom_port, *files[2:]).returncode == 0  # overlapping resend is fine
            wait_until(lambda: store.study(study)["status"] in ("done", "failed"), timeout_s=120)
            row = store.study(study)
            assert row["status"] == "done", row["detail"]
            results = store.results_of(study)
            time.sleep(2.0)  # nothing is processed a second time
            assert store.results_of(study) == results
            assert len([r for r in results if r["kind"] == "sr"]) == SLICES
            assert [d["model"] for d in ledger.dispatches(store, study)] == ["tb"]
            assert len(store.instances_of(study)) == SLICES
        finally:
            second.stop()
    finally:
        store.close()
        print((tmp_path / "server.log").read_text()[-3000:])
