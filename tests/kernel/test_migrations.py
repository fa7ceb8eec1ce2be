"""Versioned migrations (kernel.migrations) on SQLite and PostgreSQL: applied once, adopted, refused when newer."""
from __future__ import annotations

import sqlite3

import pytest

from kernel.database import Database, open_database
from kernel.migrations import Migration, NewerSchemaError, migrate, version

V1 = Migration(1, "notes", "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                           " body TEXT NOT NULL, at REAL NOT NULL);")
V2 = Migration(2, "notes_tag", "ALTER TABLE notes ADD COLUMN tag TEXT;"
                               " CREATE INDEX IF NOT EXISTS notes_tag ON notes(tag);")


@pytest.fixture
def database(database_location):
    db = open_database(database_location)
    yield db
    db.close()


def test_steps_apply_once_and_record_the_version(database):
    assert migrate(database, "notes", [V1]) == 1
    with database.transaction() as db:
        db.execute("INSERT INTO notes(body, at) VALUES (?, ?)", ("first", 1.5))
    assert migrate(database, "notes", [V1, V2]) == 2
    assert migrate(database, "notes", [V1, V2]) == 2  # again: nothing to do
    assert version(database, "notes") == 2
    assert "tag" in database.columns("notes")
    assert [tuple(r) for r in database.rows("SELECT id, body, at, tag FROM notes")] == [(1, "first", 1.5, None)]


def test_a_newer_database_is_refused_naming_owner_and_versions(database):
    migrate(database, "notes", [V1, V2])
    with pytest.raises(NewerSchemaError, match=r"'notes' is at version 2.*versions 1 to 1"):
        migrate(database, "notes", [V1])


def test_owners_are_versioned_apart(database):
    migrate(database, "notes", [V1, V2])
    assert migrate(database, "other", [Migration(1, "o", "CREATE TABLE IF NOT EXISTS o (x TEXT)")]) == 1
    assert (version(database, "notes"), version(database, "other")) == (2, 1)


def test_steps_must_be_numbered_from_one():
    with pytest.raises(ValueError, match=r"numbered 1, 2, \.\.\. in order, \[2\] are given"):
        migrate(None, "notes", [Migration(2, "x", "SELECT 1")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="owner must match"):
        migrate(None, "Notes; DROP", [V1])  # type: ignore[arg-type]


def test_a_failed_step_leaves_the_version_and_tables_as_they_were(database):
    migrate(database, "notes", [V1])
    bad = Migration(2, "bad", "ALTER TABLE notes ADD COLUMN tag TEXT; ALTER TABLE nowhere ADD COLUMN x TEXT")
    with pytest.raises(Exception):
        migrate(database, "notes", [V1, bad])
    assert version(database, "notes") == 1
    assert "tag" not in database.columns("notes")


def test_a_sqlite_database_of_before_versions_is_adopted_as_version_1(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, at REAL NOT NULL)")
    old.execute("INSERT INTO notes(body, at) VALUES ('kept', 2.0)")
    old.commit()
    old.close()
    database = Database(path)
    legacy = {"notes": (("source", "TEXT"),)}  # a column Database.create(added_columns=...) added
    assert migrate(database, "notes", [V1, V2], legacy_columns=legacy) == 2
    assert {"source", "tag"} <= set(database.columns("notes"))
    assert [tuple(r) for r in database.rows("SELECT body, source FROM notes")] == [("kept", None)]
    database.close()


def test_a_read_only_database_is_only_checked(tmp_path):
    path = tmp_path / "m.sqlite3"
    database = Database(path)
    migrate(database, "notes", [V1, V2])
    database.close()
    reader = Database(path, read_only=True)
    assert migrate(reader, "notes", [V1, V2]) == 2
    with pytest.raises(NewerSchemaError):
        migrate(reader, "notes", [V1])
    reader.close()
