"""Committing the rows of received instances in the background, in batches.

A C-STORE's instance is durable in the spool before Success is sent; its row in the store (and
its group's counters) is bookkeeping that can be made again from the file (see
:meth:`dicom_gateway.intake.Intake.recover`).  So the SCP hands each stored instance's
:class:`~dicom_gateway.ledger.Arrival` to a :class:`Recorder` and answers at once; the recorder's
thread commits whatever has queued up in one transaction while the association thread waits on
the network or the disk.  :meth:`Recorder.flush` waits for everything handed over so far: the SCP
calls it at the end of each association, before the sender counts as finished.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from dicom_gateway import ledger

log = logging.getLogger("medgate.dicom")


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
        """Wait until every arrival submitted so far is committed (or failed and logged)."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target or self._thread is None, timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            try:
                news = self._record(batch)
            except Exception:  # noqa: BLE001 - logged by the intake; the files are recorded at start
                news = []
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()
            if any(new and arrival.expected_count for arrival, new in zip(batch, news)):
                self._on_counted()
