"""The patient index of the stored vitals messages, written a few patients per commit.

``vital_signs`` (:mod:`iomt.vital_records`) is keyed by measurement time, so a batch of vitals
messages appends to the end of the table. An index by patient cannot be appended to: with 1,000
monitored beds each message of a batch adds its entry at another patient's place, and the commit
writes one 4 KiB page per message to the write-ahead log (and the checkpoint writes it again).
At 10,000 messages a second that was ~40 MB/s of random page writes, and the bridge's latency
grew with the disk's backlog when the rate was held.

So the patient index is a table, ``vital_subjects`` (patient, time, codes), filled a few patients
at a time, and what it does not hold yet is in a short log, ``vital_unindexed``:

- each commit appends the keys of its batch to the log (a rowid table, so an append), and the
  writer keeps them in memory by patient;
- a commit at least ``every_s`` after the last one that did (so that a few commits a second,
  not every one, touch the index's and the log's pages) indexes the patients that have waited
  longest, about ``len(waiting) x seconds since then / lag_s`` of them: every patient's keys are
  indexed ``lag_s`` after they came, its keys of those ``lag_s`` seconds together on one page of
  the index;
- and it settles the start of the log: keys logged more than ``settle_s`` ago are indexed (a
  look-up that finds them there, unless their writer stopped or died before it indexed them)
  and deleted, about as many as were appended since it last did.

A reader by patient takes the index and the log together (:func:`iomt.vital_records.select`), so
a message is found from the commit that stored it. Nothing else is needed to recover: keys that a
crashed writer left in the log are read from there and settled by the next commit of any writer.
A key indexed twice is harmless (the index ignores a key it has). If a commit fails, the writer
forgets what it was waiting for: the log still has it.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Protocol, Sequence

#: Seconds a patient's keys wait in memory before they are indexed together: a worker's commit of
#: 59 messages from 500 patients wrote 33 WAL pages with 1 s, 26 with 2 s (90.8 with an index).
LAG_S = 2.0
#: Seconds after which any writer indexes and deletes keys still in the log.
SETTLE_S = 4.0
#: Seconds between the commits that index and settle: at 10,000 messages a second (two writers,
#: ~40 messages a commit) 50 ms between them wrote 17 WAL pages a commit instead of 21.
EVERY_S = 0.05
#: Keys settled per commit at least (more when the commit appended more).
SETTLE_MIN = 100


class IndexTables(Protocol):
    """The index's tables inside the writer's transaction (:class:`iomt.store.VitalsStore` gives them)."""

    def log(self, entries: list[tuple[str, int, str, float]]) -> None:
        """Append ``(subject, effective_us, codes, at)`` keys to ``vital_unindexed``."""

    def index(self, entries: list[tuple[str, int, str]]) -> None:
        """Add ``(subject, effective_us, codes)`` keys to ``vital_subjects`` (a known key is ignored)."""

    def settle(self, limit: int, before: float) -> int:
        """Index and delete up to ``limit`` of the oldest log entries logged before ``before``."""


class VitalIndex:
    """One writer's side of the index (one per store connection); see the module docstring."""

    def __init__(self, lag_s: float = LAG_S, settle_s: float = SETTLE_S, every_s: float = EVERY_S,
                 clock=time.monotonic, wall=time.time) -> None:
        if not 0 <= every_s < lag_s < settle_s:
            raise ValueError(f"0 <= every_s < lag_s < settle_s is required, {every_s}, {lag_s} "
                             f"and {settle_s} are given.")
        self.lag_s, self.settle_s, self.every_s = lag_s, settle_s, every_s
        self._clock, self._wall = clock, wall
        self._waiting: dict[str, list[tuple[int, str]]] = {}  # patient -> keys, oldest first
        self._last = clock()  # the last commit that indexed
        self._logged = 0  # keys logged since then

    @property
    def waiting(self) -> int:
        """Patients with keys not yet indexed by this writer."""
        return len(self._waiting)

    def write(self, tables: IndexTables, rows: Sequence[Sequence]) -> None:
        """In the writer's transaction: log the keys of ``rows`` (``vital_signs`` rows), index
        the patients due and settle the start of the log, at most every ``every_s``."""
        now = self._clock()
        due = math.ceil(len(self._waiting) * min(1.0, (now - self._last) / self.lag_s))
        if rows:
            self._log(tables, rows)
            self._logged += len(rows)
        if now - self._last < self.every_s:
            return
        self._last = now
        if due:
            self._index(tables, due)
        self.settle(tables, 2 * self._logged + SETTLE_MIN)
        self._logged = 0

    def flush(self, tables: IndexTables) -> None:
        """Index everything this writer waits for (before it closes)."""
        self._index(tables, len(self._waiting))

    def discard(self) -> None:
        """Forget the waiting keys (the commit that logged them may have been rolled back)."""
        self._waiting.clear()
        self._logged = 0

    def settle(self, tables: IndexTables, limit: int, older_than_s: float | None = None) -> int:
        """Index and delete up to ``limit`` of the oldest log entries logged more than
        ``older_than_s`` (``settle_s``) ago; returns how many."""
        return tables.settle(limit, self._wall() - (self.settle_s if older_than_s is None else older_than_s))

    def _log(self, tables: IndexTables, rows: Sequence[Sequence]) -> None:
        at, entries = self._wall(), []
        for effective_us, subject, codes, *_ in rows:
            entries.append((subject, effective_us, codes, at))
            keys = self._waiting.get(subject)
            if keys is None:
                self._waiting[subject] = keys = []
            keys.append((effective_us, codes))
        tables.log(entries)

    def _index(self, tables: IndexTables, count: int) -> None:
        entries = []
        for subject in list(itertools.islice(self._waiting, count)):
            entries += [(subject, effective_us, codes)
                        for effective_us, codes in self._waiting.pop(subject)]
        tables.index(entries)
