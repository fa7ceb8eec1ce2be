"""WAL checkpoints run on the checkpointer's thread, not inside the commits of deferring writers."""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from kernel.wal_checkpoint import WalCheckpointer
from serving.store import Store


def _write(store: Store, n: int, start: int = 0) -> None:
    store.put_resources([{"resourceType": "Observation", "id": f"o{i}", "subject": {"reference": f"Patient/{i}"},
                          "note": [{"text": "x" * 2000}]} for i in range(start, start + n)])


def _wal_pages(path) -> tuple[int, int]:
    """(pages in the WAL, pages of it already copied back), without checkpointing anything new."""
    db = sqlite3.connect(path)
    try:
        busy, frames, backfilled = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return frames, backfilled
    finally:
        db.close()


def test_deferring_writer_leaves_checkpoints_to_the_checkpointer(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        store.database.defer_checkpoints()
        sizes = []
        for batch in range(4):  # ~3,000 pages: past SQLite's default of a checkpoint every 1,000
            _write(store, 1500, batch * 1500)
            sizes.append((tmp_path / "db.sqlite3-wal").stat().st_size)
        assert sizes == sorted(sizes) and sizes[-1] > 2500 * 4096  # it only grew: no commit restarted it
        checkpointer = WalCheckpointer(store.path)
        checkpointer.tick()
        busy, frames, backfilled = checkpointer.last
        assert busy == 0 and frames == backfilled > 1000  # every page is back in the database file
        _write(store, 10, 10_000)  # the next writer starts the WAL again from its beginning
        assert _wal_pages(tmp_path / "db.sqlite3")[0] < 100
        checkpointer.stop()
        assert len(store.resources("Observation")) == 6010
    finally:
        store.close()


def test_default_writer_still_checkpoints_itself(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        for batch in range(4):
            _write(store, 1500, batch * 1500)
        assert (tmp_path / "db.sqlite3-wal").stat().st_size < 2000 * 4096  # restarted after ~1,000 pages
    finally:
        store.close()


class CountingLock:
    def __init__(self) -> None:
        self.inner, self.acquired = threading.Lock(), 0

    def acquire(self, timeout: float = -1) -> bool:
        got = self.inner.acquire(timeout=timeout)
        self.acquired += got
        return got

    def release(self) -> None:
        self.inner.release()


def test_a_long_log_is_copied_with_the_writers_held_so_that_it_restarts(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    lock = CountingLock()
    try:
        store.database.defer_checkpoints()
        checkpointer = WalCheckpointer(store.path, lock=lock, restart_frames=500)
        _write(store, 100)  # ~100 pages: under the threshold, the writers are not held
        checkpointer.tick()
        assert lock.acquired == 0 and checkpointer.restarts == 0
        _write(store, 1500, 100)
        checkpointer.tick()
        assert lock.acquired == 1 and checkpointer.restarts == 1
        busy, frames, backfilled = checkpointer.last
        assert frames == backfilled
        _write(store, 10, 10_000)
        assert _wal_pages(tmp_path / "db.sqlite3")[0] < 100  # the log started again
        checkpointer.stop()
    finally:
        store.close()


def test_writers_that_hold_their_lock_only_delay_the_restart(tmp_path, monkeypatch):
    monkeypatch.setattr("kernel.wal_checkpoint.LOCK_WAIT_S", 0.05)
    store = Store(tmp_path / "db.sqlite3")
    lock = CountingLock()
    try:
        store.database.defer_checkpoints()
        checkpointer = WalCheckpointer(store.path, lock=lock, restart_frames=500)
        _write(store, 1500)
        lock.acquire()  # a writer holds it
        checkpointer.tick()  # passive pass only; returns after the wait
        assert checkpointer.restarts == 0 and checkpointer.last[1] == checkpointer.last[2]
        lock.release()
        checkpointer.stop()
    finally:
        store.close()


def test_each_pass_flushes_the_database_file_before_the_writers_are_held(tmp_path, monkeypatch):
    """SQLite itself flushes the database in the pass that copies the whole log, the held one;
    the checkpointer's own flush after every pass leaves that one only its own pages."""
    events: list[str] = []
    fdatasync = os.fdatasync

    def recorded(fd: int) -> None:
        events.append(f"flush {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        fdatasync(fd)

    class RecordingLock(CountingLock):
        def acquire(self, timeout: float = -1) -> bool:
            events.append("hold")
            return super().acquire(timeout)

    monkeypatch.setattr("kernel.wal_checkpoint.os.fdatasync", recorded)
    store = Store(tmp_path / "db.sqlite3")
    try:
        store.database.defer_checkpoints()
        checkpointer = WalCheckpointer(store.path, lock=RecordingLock(), restart_frames=500)
        _write(store, 100)
        checkpointer.tick()
        assert events == ["flush db.sqlite3"]  # under the threshold: one pass, then its flush
        events.clear()
        _write(store, 1500, 100)
        checkpointer.tick()
        assert checkpointer.restarts == 1
        held = events.index("hold")
        assert held >= 2 and events[held - 1] == "flush db.sqlite3"  # catch-up pass(es) flushed
        assert events[held + 1:] == ["flush db.sqlite3"]  # the held pass, then its (tiny) flush
        checkpointer.stop()
    finally:
        store.close()
