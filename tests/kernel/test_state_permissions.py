"""state_dir holds patient data and secrets: folders 0700, files 0600, old installs fixed at start."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_gateway.storage import write_durably
from serving.config import load_config
from serving.server import Server
from kernel.state_permissions import secure_tree
from serving.store import Store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():
    """The common login umask (022): files are world-readable unless created otherwise."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_store_creates_an_owner_only_database(tmp_path, open_umask):
    state = tmp_path / "var"
    store = Store(state / "medgate.sqlite3")
    try:
        store.set_study_status("1.2.3", "complete")  # a write: the WAL and its index exist now
        assert _mode(state) == 0o700
        for name in ("medgate.sqlite3", "medgate.sqlite3-wal", "medgate.sqlite3-shm"):
            assert _mode(state / name) == 0o600, name
    finally:
        store.close()


def test_store_fixes_a_world_readable_database(tmp_path, open_umask):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    db = folder / "medgate.sqlite3"
    sqlite3.connect(db).execute("PRAGMA journal_mode=WAL").close()
    db.chmod(0o644)
    Path(f"{db}-wal").write_bytes(b"")
    Path(f"{db}-wal").chmod(0o644)
    store = Store(db)
    try:
        assert _mode(db) == 0o600
        assert _mode(Path(f"{db}-wal")) == 0o600
    finally:
        store.close()
    assert _mode(folder) == 0o755  # an existing folder is the server's start to fix, not the store's


def test_spool_and_result_files_are_written_owner_only(tmp_path, open_umask):
    path = tmp_path / "results" / "1.2.3" / "sr.dcm"
    write_durably(path, b"DICM")
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700


def _old_install(state: Path) -> list[Path]:
    """A state_dir as earlier releases left it: 0755 folders, 0644 files."""
    state.mkdir(mode=0o755)
    db = state / "medgate.sqlite3"
    sqlite3.connect(db).execute("PRAGMA journal_mode=WAL").close()
    files = [db, state / "components.json", state / "spool" / "1.2.3" / "4.5.6.dcm",
             state / "results" / "1.2.3" / "sr.dcm", state / "auth" / "admin.token"]
    for path in files[1:]:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_bytes(b"x")
    for path in files:
        path.chmod(0o644)
    for folder in (state, state / "spool", state / "spool" / "1.2.3", state / "results"):
        folder.chmod(0o755)
    return files


def test_server_start_fixes_an_old_install(tmp_path, open_umask):
    state = tmp_path / "var"
    files = _old_install(state)
    server = Server(load_config(state_dir=state))
    try:
        assert _mode(state) == 0o700
        for path in files:
            assert _mode(path) == 0o600, path
        for folder in (p for p in state.rglob("*") if p.is_dir()):
            assert _mode(folder) == 0o700, folder
    finally:
        server.store.close()


def test_secure_tree_counts_what_it_changed_and_leaves_links(tmp_path, open_umask):
    state = tmp_path / "var"
    _old_install(state)
    outside = tmp_path / "shared.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (state / "link").symlink_to(outside)
    assert secure_tree(state) == 11  # 6 folders (state_dir itself included) and 5 files
    assert secure_tree(state) == 0
    assert _mode(outside) == 0o644  # a link is not followed


CHILD = "import sys; open(sys.argv[1], 'w').close()"
PARENT = ("import subprocess, sys; from kernel.state_permissions import restrict_umask; restrict_umask(); "
          f"subprocess.run([sys.executable, '-c', {CHILD!r}, sys.argv[1]], check=True)")


def test_restricted_umask_reaches_child_processes(tmp_path):
    """``medgate serve`` restricts its umask first; Ray's processes, started from it, inherit it."""
    made = tmp_path / "made-by-a-child"
    subprocess.run([sys.executable, "-c", PARENT, str(made)], check=True, timeout=60, cwd=Path(__file__).parents[2])
    assert _mode(made) == 0o600


@pytest.mark.parametrize("opener", ["audit", "sessions"])
def test_audit_log_and_sessions_alone_create_an_owner_only_database(tmp_path, open_umask, opener):
    """`medgate audit` before any start opens the database through the audit log alone."""
    from serving.governance.audit import AuditLog
    from serving.http.sessions import SessionStore

    db = tmp_path / "var" / "medgate.sqlite3"
    handle = AuditLog(db) if opener == "audit" else SessionStore(db)
    try:
        assert _mode(db.parent) == 0o700
        assert _mode(db) == 0o600
    finally:
        handle.close()


def test_checking_a_database_this_process_has_open_keeps_sqlites_locks(tmp_path):
    """Closing any descriptor of a file drops the process's POSIX locks on it: were the check to open
    the database, another process closing its connection would believe itself the last one and delete
    the WAL that this process's connection still writes to, losing its later commits."""
    from kernel.state_permissions import private_database

    db = tmp_path / "medgate.sqlite3"
    held = sqlite3.connect(db, isolation_level=None)
    held.execute("PRAGMA journal_mode=WAL")
    held.execute("CREATE TABLE t(x)")
    held.execute("INSERT INTO t VALUES (1)")
    private_database(db)  # e.g. the audit log opened after the store, in the same process
    other = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
             " c.execute('INSERT INTO t VALUES (2)'); c.close()")
    subprocess.run([sys.executable, "-c", other, str(db)], check=True)
    held.execute("INSERT INTO t VALUES (3)")  # committed: every other process must see it now
    reader = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
              " print(*[r[0] for r in c.execute('SELECT x FROM t ORDER BY x')])")
    seen = subprocess.run([sys.executable, "-c", reader, str(db)], check=True, capture_output=True, text=True)
    held.close()
    assert seen.stdout.split() == ["1", "2", "3"]
