"""The outbox on SQLite and on PostgreSQL (a throwaway cluster): same API, same behaviour.

Also ``medgate outbox list|retry`` on a dead letter.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.delivery.outbox import Outbox
from serving.delivery import outbox_db
from serving.delivery.outbox_db import PostgresOutboxDb
from serving.store import Store


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures, self.sent = failures, []

    def __call__(self, destination, payload) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError("destination down")
        self.sent.append((destination, payload))


@pytest.fixture
def local_store(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, local_store):
    if request.param == "sqlite":
        db = local_store.outbox
    else:
        url = request.getfixturevalue("postgres_url")
        db = PostgresOutboxDb(url, local=local_store.outbox)
        db._execute("TRUNCATE outbox")
    yield db
    db.close()


def test_idempotent_delivery_backoff_dead_letter_and_retry(backend):
    sender = Flaky(2)
    box = Outbox(backend, {"dicom": sender}, max_attempts=2, backoff_base_s=0.0)
    assert box.enqueue("k1", "dicom", "pacs", {"paths": ["a"]})
    assert not box.enqueue("k1", "dicom", "pacs", {"paths": ["a"]})
    box.deliver_due()
    box.deliver_due()
    (dead,) = box.items("dead")
    assert dead["attempts"] == 2 and "ConnectionRefusedError: destination down" in dead["last_error"]
    assert box.counts() == {("dicom", "dead"): 1}
    assert box.retry(["k1"]) == 1 and box.retry() == 0
    assert box.deliver_due() == 1 and box.deliver_due() == 0
    assert sender.sent == [("pacs", {"paths": ["a"]})]
    assert box.items("sent")[0]["key"] == "k1"


def test_a_node_claims_only_the_kinds_it_has_a_sender_for(backend):
    """On a cluster a bridge node has no result files (``dicom``) and a gateway node no MQTT session
    (``mqtt``): each leaves the other's items pending for a node that can send them."""
    gateway, bridge = Flaky(0), Flaky(0)
    senders = {"dicom": gateway, "mqtt": bridge}
    on_gateway = Outbox(backend, senders, backoff_base_s=0.0, delivers={"dicom"})
    on_bridge = Outbox(backend, senders, backoff_base_s=0.0, delivers={"mqtt"})
    on_gateway.enqueue("sr", "dicom", "pacs", {"paths": ["a"]})
    on_gateway.enqueue("alert", "mqtt", "medgate/alerts/icu/b1", {"band": "high"})
    assert on_bridge.deliver_due() == 1 and bridge.sent == [("medgate/alerts/icu/b1", {"band": "high"})]
    assert on_bridge.items("pending")[0]["key"] == "sr"  # not claimed, not failed
    assert on_gateway.deliver_due() == 1 and gateway.sent == [("pacs", {"paths": ["a"]})]
    assert on_gateway.items("dead") == []


def test_items_keep_their_correlation_id_and_depth_counts_them(backend, local_store):
    from kernel.correlation import bound, current_id

    seen = []

    def send(destination: str, payload: dict) -> None:
        seen.append(current_id())
        if destination == "down":
            raise ConnectionRefusedError("destination down")

    box = Outbox(backend, {"dicom": send}, max_attempts=2, backoff_base_s=0.0)
    with bound("1.2.3"):
        box.enqueue("k1", "dicom", "pacs", {})
        box.enqueue("k2", "dicom", "down", {})
    box.enqueue("k3", "dicom", "pacs", {}, correlation_id="1.2.4")
    if isinstance(backend, PostgresOutboxDb):  # a row the bridge wrote locally, relayed with its id
        local_store.vitals.commit_batch([], [], [("k4", "dicom", "pacs", "{}", "mqtt:MON-1@2026-11-22T03:00:00Z")])
    box.deliver_due()
    relayed = 1 if isinstance(backend, PostgresOutboxDb) else 0
    assert sorted(seen) == ["1.2.3", "1.2.3", "1.2.4"] + ["mqtt:MON-1@2026-11-22T03:00:00Z"] * relayed
    assert {(r["destination"], r["state"]): r["n"] for r in backend.depth()} == {
        ("down", "failed"): 1, ("pacs", "sent"): 2 + relayed}
    box.deliver_due()
    assert [(r["destination"], r["state"]) for r in backend.depth()][0] == ("down", "dead")


def test_postgres_relays_rows_written_to_the_local_store(postgres_url, tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    store.vitals.commit_batch([], [], [("fhir:bundle:1", "fhir", "http://fhir", '{"resourceType": "Bundle"}')])
    db = PostgresOutboxDb(postgres_url, local=store.outbox)
    db._execute("TRUNCATE outbox")
    sender = Flaky(0)
    box = Outbox(db, {"fhir": sender})
    assert box.deliver_due() == 1 and box.deliver_due() == 0
    assert sender.sent == [("http://fhir", {"resourceType": "Bundle"})]
    assert store.database.rows("SELECT status FROM outbox")[0]["status"] == "relayed"
    db.close()
    store.close()


def test_postgres_dates_items_by_the_database_clock_not_a_nodes(postgres_url, monkeypatch):
    """Two nodes whose clocks differ by 120 s share the outbox: what the one ahead enqueues or puts
    back for a retry at once is due for the other at once, and what the other claimed the one ahead
    does not claim again (it would send it a second time)."""
    ahead, right = PostgresOutboxDb(postgres_url), PostgresOutboxDb(postgres_url)
    ahead._execute("TRUNCATE outbox")
    real = time.time

    def clock(offset_s: float) -> None:
        monkeypatch.setattr(outbox_db, "time", SimpleNamespace(time=lambda: real() + offset_s))

    try:
        clock(120.0)
        assert ahead.insert("k1", "fhir", "x", "{}")
        clock(0.0)
        (claimed,) = right.claim_due(real())
        clock(120.0)
        assert ahead.claim_due(real() + 120.0) == []  # claimed by the other for CLAIM_LEASE_S, by the database's clock
        ahead.mark_failed(claimed.id, "pending", 1, real() + 120.0, "down")  # again at once, by its clock
        clock(0.0)
        assert [item.key for item in right.claim_due(real())] == ["k1"]
    finally:
        ahead.close()
        right.close()


def test_postgres_outbox_reconnects_after_its_connection_was_cut(postgres_url):
    """A server restart (here: its backend terminated) fails one call; the next opens a new connection."""
    import psycopg

    db = PostgresOutboxDb(postgres_url)
    try:
        db._execute("TRUNCATE outbox")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (db._conn.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            db.insert("k1", "fhir", "x", "{}")
        assert db.insert("k1", "fhir", "x", "{}")
        assert [item.key for item in db.claim_due(time.time())] == ["k1"]
    finally:
        db.close()


def test_cli_lists_and_retries_dead_letters(tmp_path):
    from serving.cli.outbox import list_items, retry_items
    from serving.config import load_config

    settings = load_config(None, state_dir=str(tmp_path))
    store = Store(settings.db_path)
    box = Outbox(store, {"dicom": Flaky(9)}, max_attempts=1)
    box.enqueue("dicom:1.2.3:pacs", "dicom", "pacs", {"paths": ["x"]})
    box.deliver_due()
    out = io.StringIO()
    assert list_items(settings, "dead", out=out) == 0
    assert "dicom:1.2.3:pacs" in out.getvalue() and "destination down" in out.getvalue()
    out = io.StringIO()
    assert retry_items(settings, [], out=out) == 0 and "1 dead item(s)" in out.getvalue()
    assert box.items()[0]["status"] == "pending"
    assert retry_items(settings, ["nope"], out=io.StringIO()) == 1
    store.close()
    cli = subprocess.run([sys.executable, "-m", "serving.cli", "outbox", "list",
                          "--json"], env={**os.environ, "MEDGATE_STATE_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[3])
    assert cli.returncode == 0, cli.stderr
    assert '"key": "dicom:1.2.3:pacs"' in cli.stdout
