"""Study completion against DCMTK storescu: concurrency, known counts, restarts, exactly-once."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydicom import dcmread

from dicom_gateway import ledger
from dicom_gateway.routing import Rule
from gateway_helpers import Running, storescu, write_ct_series
from peers import require_peer, wait_until

CT_TO_NODULE = (Rule(models=("nodule",), modalities=frozenset({"CT"})),
                Rule(models=("tb",), modalities=frozenset({"CR", "DX"})))


@pytest.fixture
def gateway(tmp_path):
    running = Running(tmp_path, rules=CT_TO_NODULE)
    yield running
    running.stop()


def test_ct_series_over_concurrent_associations_is_routed_once(gateway, tmp_path):
    require_peer("storescu", "dcmtk")
    first = write_ct_series(tmp_path / "a", 120, seed=1)
    second = write_ct_series(tmp_path / "b", 40, seed=2)
    chunks = [first[i::4] for i in range(4)] + [second[:20], second[20:]]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda files: storescu(gateway.scp.port, *files), chunks))
    assert all(r.returncode == 0 for r in results), [r.stderr[-300:] for r in results]
    studies = {dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in (first[0], second[0])}
    wait_until(lambda: len(gateway.completed) == 2, timeout_s=20)
    time.sleep(1.0)  # nothing more may arrive
    assert sorted(gateway.completed) == sorted((s, "nodule") for s in studies)
    counts = {s: len(gateway.store.instances_of(s)) for s in studies}
    assert sorted(counts.values()) == [40, 120]
    for study in studies:
        assert [d["model"] for d in ledger.dispatches(gateway.store, study)] == ["nodule"]


def test_known_count_completes_without_quiet_period(tmp_path):
    require_peer("storescu", "dcmtk")
    running = Running(tmp_path, rules=CT_TO_NODULE, quiet_period_s=60.0)
    try:
        files = write_ct_series(tmp_path / "ct", 12)
        for path in files:  # the modality announces the study's size (0020,1208)
            ds = dcmread(path)
            ds.NumberOfStudyRelatedInstances = len(files)
            ds.save_as(path)
        start = time.monotonic()
        assert storescu(running.scp.port, *files).returncode == 0
        wait_until(lambda: running.completed, timeout_s=10)
        assert time.monotonic() - start < 10  # far below the 60 s quiet period
        row = running.store.database.rows("SELECT reason FROM dicom_groups")[0]
        assert row["reason"] == "known count 12 reached"
    finally:
        running.stop()


def test_restart_resumes_a_half_received_study_and_never_redispatches(tmp_path):
    require_peer("storescu", "dcmtk")
    files = write_ct_series(tmp_path / "ct", 30)
    running = Running(tmp_path, rules=CT_TO_NODULE, quiet_period_s=1.0)
    assert storescu(running.scp.port, *files[:15]).returncode == 0
    running.stop()  # before the quiet period ends: the study stays "receiving"
    assert running.completed == []
    running = Running(tmp_path, rules=CT_TO_NODULE, quiet_period_s=1.0)
    try:
        assert storescu(running.scp.port, *files[15:]).returncode == 0
        wait_until(lambda: running.completed, timeout_s=10)
        study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        assert running.completed == [(study, "nodule")]
        assert len(running.store.instances_of(study)) == 30
    finally:
        running.stop()
    running = Running(tmp_path, rules=CT_TO_NODULE, quiet_period_s=1.0)  # a third start: nothing to do
    try:
        assert storescu(running.scp.port, files[0]).returncode == 0  # a duplicate after completion
        time.sleep(1.5)
        assert running.completed == []
    finally:
        running.stop()


def test_unrouted_study_is_stored_and_marked(gateway, tmp_path):
    require_peer("storescu", "dcmtk")
    from pydicom.data import get_testdata_file

    assert storescu(gateway.scp.port, get_testdata_file("MR_small.dcm")).returncode == 0
    study = dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True).StudyInstanceUID
    wait_until(lambda: gateway.store.study(study)["status"] == "unrouted", timeout_s=10)
    assert gateway.completed == []


def test_rows_lost_with_the_machine_are_rebuilt_from_the_spool(tmp_path, caplog):
    """The record of an instance is committed without waiting for the disk; its spool file is
    durable.  If a power loss takes the rows, the next start records the files again."""
    require_peer("storescu", "dcmtk")
    files = write_ct_series(tmp_path / "ct", 12)
    running = Running(tmp_path, rules=CT_TO_NODULE, quiet_period_s=30.0)
    assert storescu(running.scp.port, *files, calling="CTSCANNER").returncode == 0
    study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    with running.store.database.transaction() as db:  # what a lost tail of the database looks like
        db.execute("DELETE FROM instances WHERE rowid IN (SELECT rowid FROM instances LIMIT 5)")
        for table in ("dicom_instance_routes", "dicom_groups", "studies"):
            db.execute(f"DELETE FROM {table}")
    running.stop()
    running = Running(tmp_path, rules=CT_TO_NODULE, quiet_period_s=0.5)
    try:
        wait_until(lambda: running.completed, timeout_s=10)
        assert running.completed == [(study, "nodule")]
        assert len(running.store.instances_of(study)) == 12
        rows = running.store.database.rows("SELECT DISTINCT calling_ae FROM instances")
        assert [r["calling_ae"] for r in rows] == ["CTSCANNER"]
        assert "recorded 5 spool file(s) whose database rows were lost" in caplog.text
    finally:
        running.stop()


def test_every_model_of_a_study_cut_off_by_a_crash_is_resumed(tmp_path):
    """A study routed to two models: each (study, model) dispatch is resumed until processed."""
    from types import SimpleNamespace

    from serving.imaging.pipeline import ImagingPipeline

    require_peer("storescu", "dcmtk")
    files = write_ct_series(tmp_path / "ct", 4)
    two = (Rule(models=("nodule", "tb"), modalities=frozenset({"CT"})),)
    running = Running(tmp_path, rules=two, quiet_period_s=0.2)
    try:
        assert storescu(running.scp.port, *files).returncode == 0
        wait_until(lambda: len(running.completed) == 2, timeout_s=10)
        study = running.completed[0][0]
        assert ledger.unprocessed_dispatches(running.store) == [(study, "nodule"), (study, "tb")]
        ledger.mark_processed(running.store, study, "nodule")  # the crash came before tb ran

        class Recording(ImagingPipeline):
            def submit(self, study_uid, model):
                resumed.append((study_uid, model))

        info = SimpleNamespace(remote=lambda: SimpleNamespace(result=lambda timeout_s: {}))
        resumed: list[tuple[str, str]] = []
        pipeline = Recording(running.store, None, {"tb": SimpleNamespace(info=info)}, tmp_path / "results")
        pipeline.start()
        pipeline.stop()
        assert resumed == [(study, "tb")]
    finally:
        running.stop()


def test_a_timed_out_model_call_is_tried_again_not_failed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from serving.imaging import pipeline as imaging_pipeline
    from serving.store import Store

    monkeypatch.setattr(imaging_pipeline, "RETRY_DELAY_S", 0.05)
    calls: list[str] = []

    class Flaky(imaging_pipeline.ImagingPipeline):
        def process(self, study_uid, model):
            calls.append(study_uid)
            if len(calls) < 3:
                raise TimeoutError("model call took longer than 60 s")
            return []

    store = Store(tmp_path / "db.sqlite3")
    info = SimpleNamespace(remote=lambda: SimpleNamespace(result=lambda timeout_s: {}))
    pipeline = Flaky(store, None, {"tb": SimpleNamespace(info=info)}, tmp_path / "results")
    pipeline.start()
    try:
        pipeline.submit("1.2.3", "tb")
        wait_until(lambda: len(calls) == 3, timeout_s=10)
        time.sleep(0.3)
    finally:
        pipeline.stop()
        store.close()
    assert calls == ["1.2.3"] * 3
