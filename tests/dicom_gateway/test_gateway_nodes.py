"""Several gateway nodes on one database: completion, arrivals and per-model processing happen once.

Each node is a store of its own on its own connection (two ``GatewayStore`` or ``serving.store.Store``
objects on one database).  The races run on SQLite and PostgreSQL (``backend``); the node that dies
mid-study runs the real imaging pipeline on PostgreSQL.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dicom_gateway import ledger
from dicom_gateway.completion import StudyAssembler
from dicom_gateway.store import GatewayStore
from dicom_testdata import make_ct_series
from kernel.database import open_database
from peers import wait_until

NODULE = {"name": "nodule", "version": "1.0.0", "threshold": 0.5,
          "finding": {"value": "786838002", "scheme": "SCT", "meaning": "Pulmonary nodule"}}


@pytest.fixture
def nodes(database_location):
    stores = [GatewayStore(open_database(database_location)) for _ in range(2)]
    yield stores
    for store in stores:
        store.close()


def arrival(study: str, n: int, models=("tb",), path: str | None = None, modality: str = "DX") -> ledger.Arrival:
    return ledger.Arrival(f"{study}.{n}", study, f"{study}.0", "1.2.840.10008.5.1.4.1.1.1", modality,
                          path or f"/spool/{study}/{n}.dcm", "MOD", study, tuple(models), None, modality == "DX")


def in_threads(*targets) -> None:
    start = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target):
        start.wait()
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def test_two_nodes_completing_the_same_groups_complete_each_once(nodes):
    a, b = nodes
    groups = [f"1.3.1.{n}" for n in range(60)]
    for group in groups:
        ledger.record_instances(a, [arrival(group, 1, models=("tb", "derm"))])
    outcomes: dict[str, list] = {"a": [], "b": []}

    def complete(store, node):
        for group in groups:
            claimed = ledger.complete_group(store, group, f"by {node}", node_id=node, lease_s=30.0)
            if claimed is not None:
                outcomes[node].append((group, claimed[1]))

    in_threads(lambda: complete(a, "a"), lambda: complete(b, "b"))
    done = outcomes["a"] + outcomes["b"]
    assert sorted(g for g, _ in done) == sorted(groups)  # every group completed, by one node
    assert all(models == ["tb", "derm"] for _, models in done)  # its dispatches claimed with it
    for node, completed in outcomes.items():
        for group, _ in completed:
            dispatches = a.dispatches(group)
            assert [d.owner for d in dispatches] == [node, node] and len(dispatches) == 2
            assert a.study(group).detail == f"complete (by {node})"


def test_two_nodes_receiving_one_study_at_once_count_every_instance(nodes):
    """A modality sending one study over two associations that a load balancer put on two nodes."""
    a, b = nodes
    study = "1.3.2"

    def receive(store, first: int, models):
        for n in range(first, first + 40, 2):
            ledger.record_instances(store, [arrival(study, n, models), arrival("1.3.2.9", n, models)])

    in_threads(lambda: receive(a, 1, ("tb",)), lambda: receive(b, 2, ("derm",)))
    for group in (study, "1.3.2.9"):
        (row,) = [g for g in a.receiving_groups() if g.group_uid == group]
        assert row.received_count == 40 and set(row.model_names) == {"tb", "derm"}
        assert len(a.instances_of(group)) == 40


def _node(store, node_id: str, results: Path, remote, lease_s: float):
    from serving.imaging.pipeline import ImagingPipeline

    info = SimpleNamespace(remote=lambda: SimpleNamespace(result=lambda timeout_s: NODULE))
    pipeline = ImagingPipeline(store, None, {"nodule": SimpleNamespace(remote=remote, info=info)}, results,
                               node_id=node_id, lease_s=lease_s)
    pipeline._info = {"nodule": dict(NODULE)}
    assembler = StudyAssembler(store, pipeline.submit, quiet_period_s=30.0, poll_interval_s=0.05, node_id=node_id,
                               lease_s=lease_s)
    return pipeline, assembler


def test_a_node_dying_mid_study_is_taken_over_after_its_lease_and_processed_once(tmp_path, postgres_url):
    """Node a completes a CT and starts its model call; while a renews its lease, b takes nothing.
    Then a dies (its renewals stop, its call never returns in time): after the lease b's sweep takes
    the dispatch over and processes it; a's call, returning late, writes nothing."""
    from serving.store import Store

    lease_s = 1.0
    store_a, store_b = Store(postgres_url), Store(postgres_url)
    series = make_ct_series(np.zeros((4, 16, 16), np.uint16))
    study = series[0].StudyInstanceUID
    arrivals = []
    for n, ds in enumerate(series):
        path = tmp_path / "spool" / study / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        arrivals.append(ledger.Arrival(ds.SOPInstanceUID, study, ds.SeriesInstanceUID, ds.SOPClassUID, "CT",
                                       str(path), "CT1", study, ("nodule",), None, False))
    ledger.record_instances(store_a, arrivals)
    reply = {"candidates": [], "max_probability": 0.2}
    in_call, a_returns, calls = threading.Event(), threading.Event(), {"a": 0, "b": 0}

    def remote_a(item):
        calls["a"] += 1
        in_call.set()
        return SimpleNamespace(result=lambda timeout_s: a_returns.wait(60) and reply)

    def remote_b(item):
        calls["b"] += 1
        return SimpleNamespace(result=lambda timeout_s: reply)

    pipeline_a, assembler_a = _node(store_a, "node-a", tmp_path / "results-a", remote_a, lease_s)
    pipeline_b, assembler_b = _node(store_b, "node-b", tmp_path / "results-b", remote_b, lease_s)
    try:
        pipeline_a.start()
        pipeline_b.start()
        assembler_b.start()
        assert assembler_a.check(now=time.time() + 60) == [study]  # a completes it, and holds it
        assert in_call.wait(10)
        time.sleep(3 * lease_s)  # three leases: a's renewals keep it a's
        assert calls["b"] == 0 and store_a.gateway.dispatches(study)[0].owner == "node-a"
        pipeline_a.leases.stop()  # a dies: its lease is no longer renewed
        wait_until(lambda: store_b.gateway.dispatches(study)[0].processed_at, timeout_s=10 + lease_s)
        dispatch = store_b.gateway.dispatches(study)[0]
        assert dispatch.owner == "node-b" and calls["b"] == 1
        a_returns.set()  # a's model call ends at last: its lease is gone, it writes nothing
        wait_until(lambda: not pipeline_a.leases.held(), timeout_s=10)  # a found its lease gone
        time.sleep(0.3)
        assert [r.kind for r in store_b.results_of(study)] == ["sr"]  # one SR: written once, by b
        assert list((tmp_path / "results-a").rglob("*.dcm")) == []
        assert len(list((tmp_path / "results-b").rglob("SR-*"))) == 1
        assert store_b.study(study).status == "done"
        assert ledger.take_over_expired(store_a, "node-a", lease_s) == []  # processed: nothing left
    finally:
        a_returns.set()
        assembler_b.stop()
        pipeline_a.stop()
        pipeline_b.stop()
        store_a.close()
        store_b.close()


def test_a_starting_pipeline_leaves_a_live_node_s_dispatch_alone(tmp_path, nodes):
    from serving.imaging.pipeline import ImagingPipeline

    a, b = nodes
    for study, node, lease_s in (("1.3.4.1", "node-a", 30.0), ("1.3.4.2", "node-b", 30.0),
                                 ("1.3.4.3", "node-c", 0.1)):
        ledger.record_instances(a, [arrival(study, 1)])
        ledger.complete_group(a, study, "test", node_id=node, lease_s=lease_s)
    time.sleep(0.3)  # node-c's lease has expired
    resumed: list[tuple[str, str]] = []

    class Recording(ImagingPipeline):
        def submit(self, study_uid, model):
            resumed.append((study_uid, model))

    info = SimpleNamespace(remote=lambda: SimpleNamespace(result=lambda timeout_s: {}))
    pipeline = Recording(b, None, {"tb": SimpleNamespace(info=info)}, tmp_path / "results", node_id="node-b")
    pipeline.start()
    pipeline.stop()
    assert resumed == [("1.3.4.2", "tb"), ("1.3.4.3", "tb")]  # its own and the expired one; not node-a's


def test_a_surviving_node_records_what_a_dead_node_acknowledged_but_did_not_record(tmp_path, database_location):
    """C-STORE Success goes out once the file is durable in the shared spool, and the row follows: a
    node killed in between leaves a file without a row.  Another node records it after a lease,
    without waiting for the dead node's restart."""
    from dicom_gateway.scp import StorageScp
    from dicom_gateway.storage import instance_path
    from peers import free_port

    spool = tmp_path / "spool"
    store = GatewayStore(open_database(database_location))
    survivor = StorageScp("MEDGATE", "127.0.0.1", free_port(), store, spool, lambda study, model: None,
                          quiet_period_s=0.5, poll_interval_s=0.05, node_id="node-b", lease_s=0.6)
    survivor.start()
    try:
        (ds,) = make_ct_series(np.zeros((1, 16, 16), np.uint16))
        ds.Modality = "OT"  # no model reads it: only the recording is checked
        ds.file_meta.SourceApplicationEntityTitle = "MODALITY"
        left = instance_path(spool, ds.StudyInstanceUID, ds.SOPInstanceUID)  # what node-a wrote, then died
        left.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(left, enforce_file_format=True)
        fresh = time.time()
        wait_until(lambda: ledger.unrecorded_files(store, spool) == [], timeout_s=15)
        assert time.time() - fresh >= 0.6 * 0.9  # not before a lease had passed: a live node's row may follow
        assert str(left) in store.instance_paths()
    finally:
        survivor.stop()
        store.close()


def test_a_node_whose_clock_runs_ahead_does_not_complete_a_study_still_arriving(postgres_url, monkeypatch):
    """Arrival times and the quiet period are read on one clock, the database's on PostgreSQL: a
    node 120 s ahead does not take another node's study, still arriving, for one quiet for 120 s.
    (On SQLite every node is this machine, one clock.)"""
    receiving, ahead = (GatewayStore(open_database(postgres_url)) for _ in range(2))
    study = "1.3.9.1"
    ledger.record_instances(receiving, [ledger.Arrival(f"{study}.1", study, f"{study}.0", "1.2.840.10008.5.1.4.1.1.2",
                                                       "CT", f"/spool/{study}/1.dcm", "MOD", study, ("nodule",),
                                                       None, False)])
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120.0)
    assembler = StudyAssembler(ahead, lambda s, m: None, quiet_period_s=2.0, node_id="ahead", lease_s=30.0)
    assembler.started_at = ledger.clock(ahead) - 60.0  # started long ago
    assert assembler.check() == []  # still receiving: 120 s by the skewed clock, not by the database's
    assert assembler.check(now=ledger.clock(ahead) + 3.0) == [study]  # quiet once 2 s pass on the one clock
    receiving.close()
    ahead.close()
