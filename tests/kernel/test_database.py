"""kernel.database: the shared SQLite database every owner store keeps its tables in."""
from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass

import pytest

from kernel.database import Database, Record, database_path

SCHEMA = "CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"


def test_sync_log_flushes_the_write_ahead_log(tmp_path, monkeypatch):
    """A commit made without waiting for the disk is made durable by an fsync of the write-ahead
    log, from any connection, after the write lock is released."""
    writer = Database(tmp_path / "db.sqlite3")
    reader = Database(tmp_path / "db.sqlite3")  # another connection: the bridge's, for a worker's commit
    synced: list[str] = []
    fdatasync = os.fdatasync

    def recorded(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fdatasync(fd)

    try:
        writer.create(SCHEMA)
        with writer.transaction(durable=False) as db:
            db.execute("INSERT INTO things(name) VALUES ('a')")
        assert writer.rows("PRAGMA synchronous")[0][0] == 2  # FULL again for other transactions
        monkeypatch.setattr("kernel.database.os.fdatasync", recorded)
        reader.sync_log()
        assert synced == [str(tmp_path / "db.sqlite3-wal")]
        assert reader.rows("SELECT name FROM things")[0][0] == "a"
    finally:
        writer.close()
        reader.close()
    writer.sync_log()  # no log left once the last connection closed: nothing to do
    assert len(synced) == 1


def test_an_owner_creates_its_tables_and_the_columns_added_later(tmp_path):
    database = Database(tmp_path / "db.sqlite3")
    try:
        database.create(SCHEMA)
        database.create(SCHEMA, {"things": (("colour", "TEXT"), ("size", "INTEGER"))})
        database.create(SCHEMA, {"things": (("colour", "TEXT"),)})  # present: left as it is
        assert [r["name"] for r in database.rows("PRAGMA table_info(things)")] == ["id", "name", "colour", "size"]
        assert database.has_table("things") and not database.has_table("nothing")
    finally:
        database.close()
    assert stat.S_IMODE(os.stat(tmp_path / "db.sqlite3").st_mode) == 0o600


def test_a_failed_transaction_keeps_nothing_and_close_runs_the_owners_callbacks(tmp_path):
    database = Database(tmp_path / "db.sqlite3")
    closed = []
    database.create(SCHEMA)
    database.on_close(lambda: closed.append(database.rows("SELECT count(*) FROM things")[0][0]))
    with pytest.raises(sqlite3.IntegrityError):
        with database.transaction() as db:
            db.execute("INSERT INTO things(name) VALUES ('kept?')")
            db.execute("INSERT INTO things(name) VALUES (NULL)")
    assert database.rows("SELECT count(*) FROM things")[0][0] == 0
    database.close()
    assert closed == [0]  # before the connection was closed


def test_a_read_only_database_never_writes_nor_creates(tmp_path):
    path = database_path(tmp_path)
    writer = Database(path)
    writer.create(SCHEMA)
    with writer.transaction() as db:
        db.execute("INSERT INTO things(name) VALUES ('a')")
    reader = Database(path, read_only=True)
    try:
        reader.create("CREATE TABLE IF NOT EXISTS other (x);")  # nothing
        assert not reader.has_table("other")
        assert reader.rows("SELECT name FROM things")[0]["name"] == "a"
        with pytest.raises(sqlite3.OperationalError):
            with reader.transaction() as db:
                db.execute("INSERT INTO things(name) VALUES ('b')")
    finally:
        reader.close()
        writer.close()


def test_records_give_their_fields_by_name_too():
    @dataclass(frozen=True)
    class Thing(Record):
        id: int
        name: str

    thing = Thing(1, "a")
    assert thing["name"] == "a" and dict(thing) == {"id": 1, "name": "a"}
    with pytest.raises(KeyError, match="Thing has no field 'colour'"):
        thing["colour"]
