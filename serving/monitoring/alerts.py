"""Alerts when a monitored figure crosses its configured line, raised once per crossing.

A :class:`Line` is one figure of one model version at one site (score PSI, an input feature's PSI,
agreement with clinicians) and the ``monitoring`` line it is held to.  :class:`AlertLatch` keeps the
lines over their limit: a line that crosses is raised (one WARNING log line, the alert then listed
until it falls back), one still over stays raised without a new log line however often the figures
are read (every ``/metrics`` scrape), and one back within its limit is cleared (an INFO line); a
later crossing raises it again.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

log = logging.getLogger("medgate.monitoring")

#: What a line measures; a drift line is over when above its limit, agreement when below.
SCORE_PSI, INPUT_PSI, AGREEMENT = "score_psi", "input_psi", "agreement"
_KINDS = (SCORE_PSI, INPUT_PSI, AGREEMENT)


@dataclass(frozen=True)
class Line:
    """One figure held to a limit (``feature`` names the input of an ``input_psi`` line)."""

    model: str
    version: str
    site: str
    kind: str
    value: float
    limit: float
    feature: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {list(_KINDS)}, {self.kind!r} is given")

    @property
    def key(self) -> tuple:
        return self.model, self.version, self.site, self.kind, self.feature

    @property
    def over(self) -> bool:
        return self.value < self.limit if self.kind == AGREEMENT else self.value > self.limit

    def describe(self) -> str:
        what = f"PSI of input {self.feature}" if self.kind == INPUT_PSI else (
            "score PSI" if self.kind == SCORE_PSI else "agreement with clinicians")
        side = "under" if self.kind == AGREEMENT else "over"
        return (f"{self.model} {self.version} at site {self.site}: {what} {self.value:.3f} is {side} "
                f"the line {self.limit:g}")


@dataclass(frozen=True)
class Alert:
    """A raised line: when it was raised, and its latest value."""

    line: Line
    raised_at: float

    def as_json(self) -> dict:
        ln = self.line
        return {"model": ln.model, "version": ln.version, "site": ln.site, "kind": ln.kind, "feature": ln.feature,
                "value": ln.value, "limit": ln.limit, "raised_at": self.raised_at, "message": ln.describe()}


class AlertLatch:
    """The raised lines of this process (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._raised: dict[tuple, Alert] = {}
        self._lock = threading.Lock()

    def update(self, lines: Iterable[Line]) -> list[Alert]:
        """Raise the lines now over that were not, clear those no longer over; the raised alerts.
        A line not given (no data in the window) keeps its state."""
        with self._lock:
            for line in lines:
                held = self._raised.get(line.key)
                if line.over and held is None:
                    log.warning("model monitoring alert: %s", line.describe())
                    self._raised[line.key] = Alert(line, self.clock())
                elif line.over:
                    self._raised[line.key] = Alert(line, held.raised_at)
                elif held is not None:
                    log.info("model monitoring alert cleared: %s", line.describe())
                    del self._raised[line.key]
            return sorted(self._raised.values(), key=lambda a: a.raised_at)
