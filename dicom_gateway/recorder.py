"""Committing the rows of received instances in the background, in batches.

A C-STORE's instance is durable in the spool before Success is sent; its row in the store (and
its group's counters) is bookkeeping that can be made again from the file (see
:meth:`dicom_gateway.intake.Intake.recover`).  So the SCP hands each stored instance's
:class:`~dicom_gateway.ledger.Arrival` to a :class:`Recorder` and answers at once; the recorder's
thread commits whatever has queued up in one transaction while the association thread waits on
the network or the disk.  :meth:`Recorder.flush` waits for everything handed over so far: the SCP
calls it at the end of each association, before the sender counts as finished.

A batch whose commit fails (the database does not answer) is kept and committed again, after
:data:`RETRY_FIRST_S` doubling up to :data:`RETRY_MAX_S`, with whatever arrived meanwhile, until it
succeeds: an acknowledged instance is recorded without a restart once the database is back (and
from its spool file at the next start if the process ends first).  Until then
:attr:`Recorder.unavailable` says why, and the SCP refuses new instances.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from dicom_gateway import ledger

log = logging.getLogger("medgate.dicom")

#: The first wait before a failed batch is committed again, and the longest (it doubles).
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0


class Recorder:
    """Commits arrivals with ``record(arrivals) -> [new, ...]`` in its own thread; calls
    ``on_counted()`` after a batch in which a new instance announced its group's count."""

    def __init__(self, record: Callable[[list[ledger.Arrival]], list[bool]],
                 on_counted: Callable[[], None]) -> None:
        self._record, self._on_counted = record, on_counted
        self._queue: list[ledger.Arrival] = []
        self._submitted = self._done = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: Why the last commit failed while rows wait to be committed again; None when all is committed.
        self.unavailable: str | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="medgate-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def submit(self, arrival: ledger.Arrival) -> None:
        with self._cond:
            self._queue.append(arrival)
            self._submitted += 1
            self._cond.notify_all()

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until every arrival submitted so far was committed, or tried once and kept to be
        committed again."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target or self._thread is None, timeout_s)

    def _run(self) -> None:
        kept: list[ledger.Arrival] = []  # failed to commit: tried again
        delay_s = RETRY_FIRST_S
        while True:
            with self._cond:
                if kept:
                    self._cond.wait_for(lambda: self._stopping, delay_s)
                else:
                    self._cond.wait_for(lambda: self._queue or self._stopping)
                fresh, self._queue = self._queue, []
                stopping = self._stopping
            if not fresh and not kept:
                return
            batch = kept + fresh
            try:
                news, error = self._record(batch), None
            except Exception as exc:  # noqa: BLE001 - logged by the intake; kept and tried again
                news, error = [], exc
            with self._cond:
                self._done += len(fresh)
                self.unavailable = None if error is None else str(error) or type(error).__name__
                self._cond.notify_all()
            if error is None:
                if kept:
                    log.info("%d instance row(s) kept while the database did not answer are committed", len(kept))
                kept, delay_s = [], RETRY_FIRST_S
            elif stopping:  # the files stay in the spool: recorded at the next start
                log.error("%d instance row(s) not committed at stop; recorded from the spool at the next start",
                          len(batch))
                return
            else:
                kept, delay_s = batch, min(RETRY_MAX_S, delay_s * 2 if kept else RETRY_FIRST_S)
            if any(new and arrival.expected_count for arrival, new in zip(batch, news)):
                self._on_counted()
