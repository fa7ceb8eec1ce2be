"""Store.sync_log: a commit made without waiting for the disk is made durable by an fsync of the
write-ahead log, from any connection, after the write lock is released."""
from __future__ import annotations

import os

from serving.store import Store


def test_sync_log_flushes_the_write_ahead_log(tmp_path, monkeypatch):
    store = Store(tmp_path / "db.sqlite3")
    reader = Store(tmp_path / "db.sqlite3")  # another connection: the bridge's, for a worker's commit
    synced: list[str] = []
    fdatasync = os.fdatasync

    def recorded(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fdatasync(fd)

    try:
        store.commit_batch([], [("mqtt:w/b/vitals", "not JSON", b"x", None)], durable=False)
        assert store.query("PRAGMA synchronous")[0][0] == 2  # FULL again for other transactions
        monkeypatch.setattr("serving.store.os.fdatasync", recorded)
        reader.sync_log()
        assert synced == [str(tmp_path / "db.sqlite3-wal")]
        assert len(reader.dead_letters()) == 1
    finally:
        store.close()
        reader.close()
    Store.sync_log(store)  # no log left once the last connection closed: nothing to do
    assert synced == [str(tmp_path / "db.sqlite3-wal")]
