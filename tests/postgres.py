"""A throwaway PostgreSQL server for the tests (Debian's ``postgresql``), and a fresh database per test.

:func:`start_server` runs ``initdb`` and ``pg_ctl`` as the ``postgres`` user in a temporary folder
(the session fixture ``postgres_server`` in ``tests/conftest.py`` starts one for the whole run;
:func:`restart_server` stops and starts one again, for the tests of a database restart);
:func:`fresh_database` creates an empty database on it (``CREATE DATABASE``) and gives its URL.
"""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from peers import find_peer, free_port

PG_BIN = Path("/usr/lib/postgresql")
_numbers = itertools.count(1)
_SERVERS: dict[str, tuple[list[str], list[str]]] = {}  # URL -> (stop command, start command)


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why (a test skips with it)."""


def pg_tool(name: str) -> str | None:
    """The path of PostgreSQL's ``name`` (``initdb``, ``pg_ctl``): on PATH or under Debian's versioned folder."""
    found = find_peer(name)
    if found:
        return found
    versions = sorted(PG_BIN.glob(f"*/bin/{name}")) if PG_BIN.exists() else []
    return str(versions[-1]) if versions else None


@contextmanager
def start_server(*, fast: bool = True) -> Iterator[str]:
    """A PostgreSQL server on a free loopback port, stopped on exit; yields the URL of its
    ``postgres`` database.  ``fast``: ``fsync=off`` (a test server; never for a benchmark).

    Raises :class:`Unavailable` where it cannot start (not installed, no ``postgres`` user, ...)."""
    initdb, pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
    if not initdb or not pg_ctl:
        raise Unavailable("PostgreSQL server not installed (apt-get install -y postgresql)")
    try:
        postgres = pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("no postgres system user to run the server as") from None
    if os.geteuid() not in (0, postgres.pw_uid):
        raise Unavailable("PostgreSQL must run as the postgres user: needs root or that user")
    # pytest's base temp is private to root (0700): the postgres user needs its own directory.
    root = Path(tempfile.mkdtemp(prefix="medgate-pg-"))
    os.chown(root, postgres.pw_uid, postgres.pw_gid)
    data, port = root / "data", free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    try:
        init = subprocess.run(as_postgres + [initdb, "-D", str(data), "--auth", "trust", "-U", "medgate"],
                              capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise Unavailable(f"initdb failed: {init.stderr[-300:]}")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        if fast:
            options += " -c fsync=off -c full_page_writes=off"
        start_command = as_postgres + [pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o", options,
                                       "start"]
        stop_command = as_postgres + [pg_ctl, "-D", str(data), "-m", "fast", "stop"]
        start = subprocess.run(start_command, capture_output=True, text=True, timeout=120)
        if start.returncode != 0:
            raise Unavailable(f"PostgreSQL did not start: {start.stderr[-300:]}")
        url = f"postgresql://medgate@127.0.0.1:{port}/postgres"
        _SERVERS[url] = (stop_command, start_command)
        try:
            yield url
        finally:
            _SERVERS.pop(url, None)
            subprocess.run(stop_command, capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def restart_server(server_url: str, down_s: float = 0.0) -> None:
    """Stop the server :func:`start_server` started at ``server_url`` (``pg_ctl stop -m fast``: every
    connection cut), keep it down ``down_s``, and start it again on the same port and data."""
    stop_command, start_command = _SERVERS[server_url]
    stopped = subprocess.run(stop_command, capture_output=True, text=True, timeout=60)
    if stopped.returncode != 0:
        raise RuntimeError(f"pg_ctl stop failed: {stopped.stderr[-300:]}")
    time.sleep(down_s)
    started = subprocess.run(start_command, capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed: {started.stderr[-300:]}")


def fresh_database(server_url: str) -> str:
    """The URL of a new, empty database on the server at ``server_url``."""
    import psycopg

    name = f"t{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    return server_url.rsplit("/", 1)[0] + "/" + name
