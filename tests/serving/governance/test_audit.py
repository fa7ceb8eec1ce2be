"""serving.governance.audit: an append-only, hash-chained log, in SQLite or in PostgreSQL (``backend``)."""
from __future__ import annotations

import sqlite3

import psycopg
import pytest

from serving.governance.audit import GENESIS, AuditLog


@pytest.fixture
def audit(database_location):
    log = AuditLog(database_location)
    yield log
    log.close()


def test_rows_are_chained_read_back_and_counted(audit):
    assert audit.record(who="dr a", role="clinician", action="read", resource_type="Observation",
                        resource_id="o1", client="127.0.0.1") == 1
    assert audit.record(who="dr b", role="clinician", action="search", outcome="denied") == 2
    first, second = audit.rows()
    assert (first["seq"], first["prev_hash"], second["prev_hash"]) == (1, GENESIS, first["hash"])
    assert set(first) == {"seq", "recorded", "who", "role", "action", "resource_type", "resource_id",
                          "study_uid", "query", "client", "outcome", "detail", "prev_hash", "hash"}
    assert audit.count({"who": "dr b"}) == 1 and audit.rows(where={"outcome": "denied"})[0]["seq"] == 2
    assert [r["seq"] for r in audit.rows(newest_first=True, limit=1)] == [2]
    verified = audit.verify()
    assert verified.ok and (verified.rows, verified.head_seq, verified.head_hash) == (2, 2, second["hash"])


def test_rows_cannot_be_changed_or_deleted(audit):
    audit.record(who="dr a", role=None, action="export")
    for sql in ("UPDATE audit_log SET who='x'", "DELETE FROM audit_log"):
        with pytest.raises((sqlite3.Error, psycopg.Error), match="append-only"):
            if audit.db_path is None:
                with audit._pg.transaction() as db:
                    db.execute(sql)
            else:
                audit._db.execute(sql)
    assert audit.verify().ok and audit.count() == 1


def test_a_second_log_on_the_same_database_continues_the_chain(database_location):
    first = AuditLog(database_location)
    first.record(who="a", role=None, action="read")
    second = AuditLog(database_location)
    try:
        assert second.record(who="b", role=None, action="read") == 2 and second.verify().ok
    finally:
        first.close()
        second.close()


def test_governance_commands_read_store_url(postgres_url, tmp_path, capsys, monkeypatch):
    """On a cluster the audit chain lives in PostgreSQL (``store.url``): ``medgate audit`` reads it there,
    not an empty SQLite file under the node's state_dir."""
    from serving.cli.main import main

    log = AuditLog(postgres_url)
    log.record(who="dr-lan", role="clinician", action="read", resource_type="Patient", resource_id="p1")
    log.close()
    config = tmp_path / "medgate.yaml"
    config.write_text(f"state_dir: {tmp_path / 'var'}\nstore:\n  url: {postgres_url}\n")
    monkeypatch.delenv("MEDGATE_STORE__URL", raising=False)
    assert main(["--config", str(config), "audit", "list"]) == 0
    assert "dr-lan (clinician) read Patient/p1" in capsys.readouterr().out
    assert main(["--config", str(config), "audit", "verify"]) == 0
    assert not (tmp_path / "var" / "medgate.sqlite3").exists()
