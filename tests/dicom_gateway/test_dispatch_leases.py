"""Dispatch leases (dicom_gateway.ledger, dicom_gateway.leases): a completed group's dispatches are
leased to the node that claimed them, renewed while it holds them, taken over by one other node once
expired, ended by ``mark_processed``; every lease time is the database's clock.  On SQLite and on
PostgreSQL (``backend``); two nodes are two stores on two connections to one database."""
from __future__ import annotations

import threading
import time

import pytest

from dicom_gateway import ledger
from dicom_gateway.completion import StudyAssembler
from dicom_gateway.leases import DispatchLeases
from dicom_gateway.store import MIGRATIONS, GatewayStore
from kernel.database import open_database
from kernel.migrations import migrate, version


@pytest.fixture
def nodes(database_location):
    """Two gateway stores on one database, each on its own connection (two nodes)."""
    stores = [GatewayStore(open_database(database_location)) for _ in range(2)]
    yield stores
    for store in stores:
        store.close()


def received(store, study: str, models=("tb",), instances: int = 1) -> None:
    ledger.record_instances(store, [ledger.Arrival(
        f"{study}.{n}", study, f"{study}.0", "1.2.840.10008.5.1.4.1.1.1", "DX", f"/spool/{study}/{n}.dcm", "MOD",
        study, tuple(models), None, True) for n in range(1, instances + 1)])


def completed(store, study: str, node: str, lease_s: float, models=("tb",)) -> list[str]:
    received(store, study, models)
    return ledger.complete_group(store, study, "test", node_id=node, lease_s=lease_s)[1]


def wait_past(store, lease_end: float) -> None:
    """Until the database's clock is past ``lease_end``."""
    while store.database.now() <= lease_end:
        time.sleep(0.05)


def test_completion_leases_the_dispatches_to_its_node(nodes):
    a, _ = nodes
    assert version(a.database, "gateway") == 2
    before = a.database.now()
    assert completed(a, "1.2.1", "node-a", 30.0, models=("tb", "derm")) == ["tb", "derm"]
    dispatches = a.dispatches("1.2.1")
    assert {d.owner for d in dispatches} == {"node-a"}
    assert all(before + 30 <= d.lease_expires_at <= a.database.now() + 30 for d in dispatches)
    ledger.mark_processed(a, "1.2.1", "tb")
    tb = next(d for d in a.dispatches("1.2.1") if d.model == "tb")
    assert tb.processed_at is not None and tb.lease_expires_at is None and tb.owner == "node-a"


def test_a_live_lease_is_renewed_and_not_taken_over_an_expired_one_is_once(nodes):
    a, b = nodes
    completed(a, "1.2.2", "node-a", 2.0)
    assert ledger.take_over_expired(b, "node-b", 2.0) == []
    first_end = a.dispatches("1.2.2")[0].lease_expires_at
    assert ledger.renew_leases(a, "node-a", [("1.2.2", "tb")], 2.0) == {("1.2.2", "tb"): True}
    assert a.dispatches("1.2.2")[0].lease_expires_at >= first_end  # the clock has millisecond steps
    assert ledger.renew_leases(b, "node-b", [("1.2.2", "tb")], 2.0) == {("1.2.2", "tb"): False}  # not b's
    assert ledger.renew_leases(a, "node-a", [("9.9", "tb")], 2.0) == {("9.9", "tb"): None}  # no dispatch
    wait_past(a, a.dispatches("1.2.2")[0].lease_expires_at)
    assert ledger.take_over_expired(b, "node-b", 30.0) == [("1.2.2", "tb")]
    assert ledger.take_over_expired(a, "node-a", 30.0) == []  # b's now, live
    assert a.dispatches("1.2.2")[0].owner == "node-b"
    assert ledger.renew_leases(a, "node-a", [("1.2.2", "tb")], 30.0) == {("1.2.2", "tb"): False}
    ledger.mark_processed(b, "1.2.2", "tb")
    assert ledger.take_over_expired(a, "node-a", 30.0) == []  # processed: nobody's to take


def test_an_owner_renews_its_expired_lease_while_no_one_took_it(nodes):
    a, _ = nodes
    completed(a, "1.2.3", "node-a", 0.2)
    wait_past(a, a.dispatches("1.2.3")[0].lease_expires_at)
    assert ledger.renew_leases(a, "node-a", [("1.2.3", "tb")], 30.0) == {("1.2.3", "tb"): True}


def test_of_two_nodes_sweeping_at_once_one_claims_each_dispatch(nodes):
    a, b = nodes
    studies = [f"1.2.4.{n}" for n in range(40)]
    for study in studies:
        completed(a, study, "node-dead", 0.1)
    wait_past(a, max(a.dispatches(s)[0].lease_expires_at for s in studies))
    claimed: dict[str, list] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def sweep(store, node):
        start.wait()
        while taken := ledger.take_over_expired(store, node, 30.0, limit=3):
            claimed[node].extend(taken)

    threads = [threading.Thread(target=sweep, args=(store, node)) for store, node in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    together = claimed["a"] + claimed["b"]
    assert sorted(together) == sorted((s, "tb") for s in studies)  # every one claimed, none twice
    owners = {s: a.dispatches(s)[0].owner for s in studies}
    assert all(owners[s] == "a" for s, _ in claimed["a"]) and all(owners[s] == "b" for s, _ in claimed["b"])


@pytest.mark.parametrize("skew_s", [3600.0, -3600.0])
def test_a_skewed_node_clock_neither_steals_nor_keeps_a_lease(nodes, monkeypatch, skew_s):
    """Every lease time is the database's: a node clock an hour ahead takes no live lease, one an
    hour behind does not keep an expired one from being taken over."""
    a, b = nodes
    completed(a, "1.2.5", "node-a", 1.0)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)
    assert ledger.take_over_expired(b, "node-b", 1.0) == []  # live on the database's clock
    assert ledger.resume_dispatches(b, "node-b", 1.0) == []
    wait_past(a, a.dispatches("1.2.5")[0].lease_expires_at)
    assert ledger.take_over_expired(b, "node-b", 30.0) == [("1.2.5", "tb")]
    assert ledger.renew_leases(a, "node-a", [("1.2.5", "tb")], 30.0) == {("1.2.5", "tb"): False}


def test_a_starting_node_resumes_its_own_and_expired_dispatches_not_a_live_node_s(nodes):
    a, b = nodes
    completed(a, "1.2.6.1", "node-a", 30.0)  # a's, live: a is running
    completed(a, "1.2.6.2", "node-b", 30.0)  # b's own, from before b's restart
    completed(a, "1.2.6.3", "node-c", 0.1)  # c died
    completed(a, "1.2.6.4", "node-a", 30.0)
    ledger.mark_processed(a, "1.2.6.4", "tb")
    wait_past(a, a.dispatches("1.2.6.3")[0].lease_expires_at)
    assert ledger.resume_dispatches(b, "node-b", 30.0) == [("1.2.6.2", "tb"), ("1.2.6.3", "tb")]
    assert [a.dispatches(s)[0].owner for s in ("1.2.6.1", "1.2.6.2", "1.2.6.3")] == ["node-a", "node-b", "node-b"]


def test_dispatches_of_before_leases_are_claimable(database_location):
    """A database at gateway version 1: its unprocessed dispatches have no owner and are resumed."""
    database = open_database(database_location)
    try:
        migrate(database, "gateway", MIGRATIONS[:1])
        with database.transaction() as db:
            db.execute("INSERT INTO dicom_dispatches(group_uid, model, study_uid, dispatched_at) VALUES"
                       " ('1.2.7', 'tb', '1.2.7', 1.0)")
        gateway = GatewayStore(database)
        assert version(database, "gateway") == 2
        assert gateway.dispatches("1.2.7")[0].owner is None
        assert ledger.resume_dispatches(gateway, "local", 30.0) == [("1.2.7", "tb")]
    finally:
        database.close()


def test_held_leases_are_renewed_until_the_node_stops_then_taken_over(nodes):
    a, b = nodes
    completed(a, "1.2.8", "node-a", 0.6)
    leases = DispatchLeases(a, node_id="node-a", lease_s=0.6)
    assert leases.hold("1.2.8", "tb") and not leases.hold("1.2.8", "tb")  # held once
    leases.start()
    try:
        deadline = time.monotonic() + 2.0  # more than three leases
        while time.monotonic() < deadline:
            assert ledger.take_over_expired(b, "node-b", 30.0) == []
            time.sleep(0.1)
    finally:
        leases.stop()  # the node dies: no more renewals
    wait_past(a, a.dispatches("1.2.8")[0].lease_expires_at)
    assert ledger.take_over_expired(b, "node-b", 30.0) == [("1.2.8", "tb")]
    assert leases.confirm("1.2.8", "tb") is False and leases.held() == set()


def test_the_assembler_sweep_hands_expired_dispatches_to_its_pipeline(nodes):
    a, b = nodes
    completed(a, "1.2.9", "node-a", 0.2)
    handed: list[tuple[str, str]] = []
    assembler = StudyAssembler(b, lambda study, model: handed.append((study, model)), node_id="node-b",
                               lease_s=0.3, poll_interval_s=0.05)
    assembler.start()
    try:
        deadline = time.monotonic() + 10
        while not handed and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assembler.stop()
    assert handed == [("1.2.9", "tb")] and a.dispatches("1.2.9")[0].owner == "node-b"


def test_node_ids_and_leases_are_checked(nodes):
    a, _ = nodes
    with pytest.raises(ValueError, match="node id"):
        DispatchLeases(a, node_id="../x")
    with pytest.raises(ValueError, match="lease_s"):
        StudyAssembler(a, lambda s, m: None, lease_s=0)
