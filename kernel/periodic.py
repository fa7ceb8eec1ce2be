"""A background thread that runs one pass every interval, or at once when woken."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("medgate.worker")


class PeriodicWorker:
    """Subclasses implement :meth:`tick`; :meth:`wake` makes the next pass start now.

    A pass that raises is logged and the worker goes on: one bad item or a locked database must
    not stop delivery or scoring for everyone else.
    """

    worker_name = "medgate-worker"

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"`interval_s` must be positive, {interval_s} is given.")
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.worker_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - see the class docstring
                log.exception("%s pass failed", self.worker_name)
            self._wake.wait(self.interval_s)
            self._wake.clear()
