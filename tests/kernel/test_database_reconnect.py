"""kernel.database_pg after its connection is lost: the call that finds it broken raises a database
error, the next call opens a new connection (on a real PostgreSQL server)."""
from __future__ import annotations

import os
import shlex
import subprocess

import psycopg
import pytest

from kernel.database import open_database
from postgres import Unavailable, pg_tool, start_server


def terminate_backends(url: str) -> int:
    """Terminate every other connection to ``url``'s database (what an administrator or a failover
    does); returns how many."""
    with psycopg.connect(url, autocommit=True) as conn:
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall())


def test_a_terminated_connection_fails_one_call_and_the_next_reconnects(postgres_url):
    database = open_database(postgres_url)
    try:
        database.create("CREATE TABLE IF NOT EXISTS notes (body TEXT NOT NULL);")
        assert terminate_backends(postgres_url) == 1
        with pytest.raises(database.errors) as raised:
            database.rows("SELECT count(*) FROM notes")
        assert isinstance(raised.value, psycopg.OperationalError)
        assert database.rows("SELECT count(*) FROM notes")[0][0] == 0

        terminate_backends(postgres_url)
        with pytest.raises(database.errors):  # a write whose connection is gone is not committed
            with database.transaction() as db:
                db.execute("INSERT INTO notes(body) VALUES (?)", ("lost",))
        with database.transaction() as db:
            db.execute("INSERT INTO notes(body) VALUES (?)", ("kept",))
        assert [r[0] for r in database.rows("SELECT body FROM notes")] == ["kept"]
        assert database.now() > 0 and database.has_table("notes")
    finally:
        database.close()
    with pytest.raises(database.errors, match="closed"):  # closed on purpose: not re-opened
        database.rows("SELECT 1")


def test_a_read_only_connection_is_read_only_again_after_reconnecting(postgres_url):
    writer = open_database(postgres_url)
    writer.create("CREATE TABLE IF NOT EXISTS notes (body TEXT NOT NULL);")
    reader = open_database(postgres_url, read_only=True)
    try:
        terminate_backends(postgres_url)
        with pytest.raises(reader.errors):
            reader.rows("SELECT 1")
        assert reader.rows("SELECT count(*) FROM notes")[0][0] == 0
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            with reader.transaction() as db:
                db.execute("INSERT INTO notes(body) VALUES (?)", ("no",))
    finally:
        reader.close()
        writer.close()


def test_a_server_restart_fails_calls_while_it_is_down_and_not_after():
    """A server of its own, stopped and started again with ``pg_ctl`` (the run's server stays up)."""
    try:
        server = start_server()
        url = server.__enter__()
    except Unavailable as e:
        pytest.skip(reason=str(e))
    try:
        database = open_database(url)
        data = database.rows("SHOW data_directory")[0][0]
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        pg_ctl = pg_tool("pg_ctl")
        with open(os.path.join(data, "postmaster.opts")) as f:  # the server's command line: port, socket, ...
            options = " ".join(shlex.quote(o) for o in shlex.split(f.read())[3:])
        stop = subprocess.run(as_postgres + [pg_ctl, "-D", data, "-m", "fast", "-w", "stop"],
                              capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        with pytest.raises(database.errors):  # the connection found broken
            database.rows("SELECT 1")
        with pytest.raises(database.errors):  # reconnecting: refused while the server is down
            database.rows("SELECT 1")
        start = subprocess.run(as_postgres + [pg_ctl, "-D", data, "-l", os.path.join(os.path.dirname(data), "log"),
                                              "-w", "-o", options, "start"], capture_output=True, text=True, timeout=60)
        assert start.returncode == 0, start.stderr
        assert database.rows("SELECT 1")[0][0] == 1
        database.close()
    finally:
        server.__exit__(None, None, None)
