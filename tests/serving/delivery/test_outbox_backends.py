"""The outbox on SQLite and on PostgreSQL (a throwaway cluster): same API, same behaviour.

Also ``medgate outbox list|retry`` on a dead letter.
"""
from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from peers import find_peer, free_port
from serving.delivery.outbox import Outbox
from serving.delivery.outbox_db import PostgresOutboxDb
from serving.store import Store

PG_BIN = Path("/usr/lib/postgresql")


def _pg_tool(name: str) -> str | None:
    found = find_peer(name)
    if found:
        return found
    versions = sorted(PG_BIN.glob(f"*/bin/{name}")) if PG_BIN.exists() else []
    return str(versions[-1]) if versions else None


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server in a temporary directory, run as the ``postgres`` user; yields its URL."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip(reason="PostgreSQL server not installed (apt-get install -y postgresql)")
    try:
        postgres = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(reason="no postgres system user to run the server as")
    if os.geteuid() != 0 and os.geteuid() != postgres.pw_uid:
        pytest.skip(reason="PostgreSQL must run as the postgres user: needs root or that user")
    # pytest's base temp is private to root (0700): the postgres user needs its own directory.
    root = Path(tempfile.mkdtemp(prefix="medgate-pg-"))
    os.chown(root, postgres.pw_uid, postgres.pw_gid)
    data, port = root / "data", free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    init = subprocess.run(as_postgres + [initdb, "-D", str(data), "--auth", "trust", "-U", "medgate"],
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        pytest.skip(reason=f"initdb failed: {init.stderr[-300:]}")
    start = subprocess.run(as_postgres + [pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                                          f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                           capture_output=True, text=True, timeout=120)
    if start.returncode != 0:
        pytest.skip(reason=f"PostgreSQL did not start: {start.stderr[-300:]}")
    try:
        yield f"postgresql://medgate@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_postgres + [pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(root, ignore_errors=True)


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
