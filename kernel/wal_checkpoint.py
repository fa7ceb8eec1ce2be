"""WAL checkpoints of the store, on their own connection and thread.

SQLite's default runs a checkpoint inside the commit that takes the write-ahead log past 1,000
pages: that writer copies the pages back into the database file and fsyncs it before its commit
returns. The vitals bridge commits a batch of ~1,000 messages that touches ~1,000 index pages (one
per patient), so every batch paid for a checkpoint, and one bridge worker's checkpoint held up the
others' commits. Writers that call :meth:`kernel.database.Database.defer_checkpoints` skip that; this
worker runs a PASSIVE checkpoint (it never blocks readers or writers) every ``interval_s``
instead, so pages that every batch touches again are copied back once per interval, not once per
batch. Durability is unchanged: each commit is still fsynced in the WAL (``synchronous=FULL``).

A writer starts the log again from its beginning only when it finds every page of it copied
back. Under a steady stream of commits a passive checkpoint never sees that moment: the writers
append while it copies, and the log grew by ~1 GB in 30 s at 10,000 vitals messages a second,
each commit extending the file (and its fsync with it) and latency growing with it. So when
the log holds more than ``restart_frames`` pages after a pass, the checkpointer runs more passes,
each for the pages appended during the one before, until a pass saw fewer than ``HELD_FRAMES``
appended (at most ``CATCH_UP_PASSES``), then takes the writers' ``lock``
(:class:`iomt.workers.ProcessWorker`'s commit lock, or the store's) and copies the few pages
appended meanwhile; the next commit then restarts the log, and the file's blocks are written
over instead of added. The writers wait for that last pass only: with one catch-up pass it held
them 80-100 ms at 10,000 vitals messages a second (the pages of a whole pass, and the fsync of
the database), with up to six 24-35 ms.

SQLite flushes the database file in a checkpoint only when the pass copied the whole log, which
under a steady stream of commits is the held pass alone: that flush then wrote every page the
passes had copied since the last restart (~7 s of them at 10,000 messages a second): it held
the writers 77 ms for 30 pages, and in another run that flush alone took 114 ms. So the checkpointer flushes the database itself after every pass, outside the
lock: the held pass flushes only its own few pages, and the disk writes the copied pages
as they come instead of in one burst that the bridge's own flushes of the log queue behind.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from kernel.periodic import PeriodicWorker

log = logging.getLogger("medgate.store")

#: WAL pages after which a passive checkpoint that could not catch up is logged.
WARN_FRAMES = 100_000
#: WAL pages after which the checkpointer holds the writers to let the log restart (128 MiB).
RESTART_FRAMES = 32_768
#: Passes, at most, that catch up with the writers before the held pass.
CATCH_UP_PASSES = 6
#: Pages appended during a pass below which the next pass, the held one, is short.
HELD_FRAMES = 256
#: Seconds to wait for the writers' lock; then the log restarts at a later pass.
LOCK_WAIT_S = 1.0


class WalCheckpointer(PeriodicWorker):
    """Checkpoints the SQLite database at ``path`` every ``interval_s``."""

    worker_name = "medgate-wal-checkpoint"

    def __init__(self, path: str | Path, interval_s: float = 0.5, lock=None,
                 restart_frames: int = RESTART_FRAMES) -> None:
        super().__init__(interval_s)
        self.path = Path(path)
        self.lock, self.restart_frames = lock, restart_frames  # see the module docstring
        self.restarts = 0  # passes that held the writers so that the log could restart
        self._db: sqlite3.Connection | None = None
        self._fd: int | None = None  # the database file, flushed after each pass
        self.last: tuple[int, int, int] | None = None  # (busy, WAL pages, pages checkpointed)

    def tick(self) -> None:
        if self._db is None:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._fd = os.open(self.path, os.O_RDONLY)
        self.last = self._passive()
        if self.lock is not None and self.last[1] > self.restart_frames:
            for _ in range(CATCH_UP_PASSES):  # each copies what was appended during the one before
                before, self.last = self.last, self._passive()
                if self.last[1] - before[1] <= HELD_FRAMES:
                    break  # so few pages came during a pass that the held one is short
        if self.lock is not None and self.last[1] > self.restart_frames \
                and self.lock.acquire(timeout=LOCK_WAIT_S):
            try:
                self.last = self._passive()  # no writer appends meanwhile: it copies them all
                self.restarts += 1
            finally:
                self.lock.release()
        if self.last[1] - self.last[2] > WARN_FRAMES:
            log.warning("WAL checkpoint is %d pages behind", self.last[1] - self.last[2])

    def _passive(self) -> tuple[int, int, int]:
        """One pass, then the pages it copied are flushed (see the module docstring)."""
        last = tuple(self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
        os.fdatasync(self._fd)
        return last

    def stop(self) -> None:
        super().stop()
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
