"""Shared fixtures: real peers (DCMTK, Mosquitto) started on free loopback ports, stopped by pid."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from peers import DCMTK_ENV, free_port, require_peer, stop_process, wait_for_port
from postgres import Unavailable, fresh_database, start_server


@pytest.fixture(autouse=True)
def _ray_auth_mode_left_as_it_was():
    """A ``medgate`` command run in-process sets ``RAY_AUTH_MODE`` (serving.cli.main.fix_ray_auth_mode).
    Left set, a Ray started later in this process hands it to its GCS while the driver keeps the mode
    Ray read at import: the GCS asks for a token the driver does not send, and every later Ray test
    fails to start ("InvalidAuthToken").  Each test leaves the variable as it found it."""
    before = os.environ.get("RAY_AUTH_MODE")
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A real Mosquitto broker on a free loopback port; yields the port."""
    binary = require_peer("mosquitto", "mosquitto")
    port = free_port()
    cfg = tmp_path / "mosquitto.conf"
    cfg.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
                   "persistence false\n")
    proc = subprocess.Popen([binary, "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole run (:func:`postgres.start_server`); yields its URL."""
    try:
        with start_server() as url:
            yield url
    except Unavailable as e:
        pytest.skip(reason=str(e))


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the run's PostgreSQL server; yields its URL."""
    return fresh_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """``sqlite`` or ``postgresql``: run a store test on both backends."""
    return request.param


@pytest.fixture
def database_location(backend, tmp_path, request):
    """Where a store test's database lives on ``backend``: a SQLite file's path or a PostgreSQL URL."""
    if backend == "sqlite":
        return tmp_path / "medgate.sqlite3"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def pacs(tmp_path: Path):
    """DCMTK storescp playing the PACS (AE ``PACS``); yields (port, directory receiving files)."""
    binary = require_peer("storescp", "dcmtk")
    port = free_port()
    out = tmp_path / "pacs"
    out.mkdir()
    proc = subprocess.Popen([binary, "-aet", "PACS", "-od", str(out), str(port)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc=proc)
        yield port, out
    finally:
        stop_process(proc)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print how many SR/SEG/SC objects dciodvfy checked in this run, and how many had errors."""
    from collections import Counter

    from peers import DCIODVFY_CHECKED

    if not DCIODVFY_CHECKED:
        return
    kinds = Counter(iod for _, iod, _ in DCIODVFY_CHECKED)
    failed = [(path, errors) for path, _, errors in DCIODVFY_CHECKED if errors]
    terminalreporter.write_sep("-", "dciodvfy summary")
    terminalreporter.write_line(
        f"{len(DCIODVFY_CHECKED)} objects checked ("
        + ", ".join(f"{n} {iod}" for iod, n in sorted(kinds.items()))
        + f"); {len(failed)} with Error lines"
    )
    for path, errors in failed:
        terminalreporter.write_line(f"  {path}: {errors[0]}")
