"""Live model monitoring of this process: the figures of the window, their alerts, and the gauges'
source.

:class:`Monitor` reads the window (``monitoring.window_days``, at most ``monitoring.max_results``
results), each version's reference (``models/<name>/<version>/reference.json``,
:mod:`models.reference`) and the clinicians' verdicts, builds a :class:`MonitoringReport` and
passes its lines to an :class:`serving.monitoring.alerts.AlertLatch`.  A report is reused for
``monitoring.cache_s`` seconds: ``/metrics`` scrapes and page loads within it read the same figures.

:func:`install` makes a monitor this process's (the HTTP routes do, over the web context);
:func:`current_report` is what ``/metrics`` reads (None when no monitor is installed).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from models.reference import SCORE_EDGES, ModelReference
from models.registry import ModelNotFoundError, ModelRegistry
from serving.config import MonitoringConfig
from serving.monitoring.alerts import Alert, AlertLatch
from serving.monitoring.drift import EPSILON
from serving.monitoring.report import GroupReport, group_reports
from serving.monitoring.window import ResultWindow
from serving.monitoring.verdicts import FeedbackRows, StudyResults, tally

log = logging.getLogger("medgate.monitoring")
DAY_S = 86400.0


@dataclass(frozen=True)
class MonitoringReport:
    """The figures of every (model, version, site) over one window, and the raised alerts."""

    made_at: float
    since: float
    config: MonitoringConfig
    groups: list[GroupReport]
    alerts: list[Alert]

    def alert_keys(self) -> set[tuple]:
        return {a.line.key for a in self.alerts}

    def as_json(self) -> dict:
        raised = {}
        for a in self.alerts:
            raised.setdefault((a.line.model, a.line.version, a.line.site), []).append(a.line.kind)
        c = self.config
        return {"made_at": self.made_at,
                "window": {"since": self.since, "days": c.window_days, "max_results": c.max_results},
                "lines": {"score_psi": c.score_psi_alert, "input_psi": c.input_psi_alert,
                          "min_agreement": c.min_agreement, "min_results": c.min_results,
                          "min_feedback": c.min_feedback},
                "bins": {"score": list(SCORE_EDGES), "inputs": "the reference's deciles, outer edges open",
                         "psi": "sum((a - e) * ln(a / e)), shares floored at %g" % EPSILON},
                "groups": [g.as_json() | {"alerts": raised.get((g.model, g.version, g.site), [])}
                           for g in self.groups],
                "alerts": [a.as_json() for a in self.alerts]}


class Monitor:
    """Builds :class:`MonitoringReport`\\ s (see the module docstring).

    Parameters
    ----------
    results
        The window's results (:class:`serving.monitoring.window.ResultWindow`).
    studies
        A study's results rows (:meth:`serving.store.Store.results_of`), to find the calls judged.
    feedback
        The verdicts (:meth:`serving.feedback.store.FeedbackStore.of_model`).
    config
        The ``monitoring`` section.
    registry
        Where the versions' references are read; the default registry when None.
    """

    def __init__(self, results: ResultWindow, studies: StudyResults, feedback: FeedbackRows,
                 config: MonitoringConfig, registry: ModelRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.results, self.studies, self.feedback = results, studies, feedback
        self.config, self.clock = config, clock
        self.registry = registry or ModelRegistry()
        self.latch = AlertLatch(clock)
        self._references: dict[tuple[str, str], ModelReference | None] = {}
        self._last: MonitoringReport | None = None
        self._lock = threading.Lock()

    def reference(self, model: str, version: str) -> ModelReference | None:
        """The version's reference, or None (no such version, or none was made for it)."""
        if (model, version) not in self._references:
            try:
                found = ModelReference.read(self.registry.get(model, version).folder)
            except (ModelNotFoundError, ValueError) as exc:
                log.warning("no monitoring reference for %s %s: %s", model, version, exc)
                found = None
            self._references[(model, version)] = found
        return self._references[(model, version)]

    def report(self, fresh: bool = False) -> MonitoringReport:
        """The figures of the window now (or of the last ``cache_s`` seconds' report)."""
        with self._lock:
            now = self.clock()
            if not fresh and self._last is not None and now - self._last.made_at < self.config.cache_s:
                return self._last
            since = now - self.config.window_days * DAY_S
            served = self.results.since(since, self.config.max_results)
            versions = sorted({(r.model, r.version) for r in served})
            tallies = {(m, v): tally(self.feedback, self.studies, m, v, since) for m, v in versions}
            groups = group_reports(served, self.reference, tallies)
            alerts = self.latch.update(line for g in groups for line in g.lines(self.config))
            self._last = MonitoringReport(now, since, self.config, groups, alerts)
            return self._last


_monitor: Callable[[], Monitor] | None = None


def install(monitor: Callable[[], Monitor] | None) -> None:
    """Make ``monitor()`` this process's monitor (None: none)."""
    global _monitor
    _monitor = monitor


def current_report() -> MonitoringReport | None:
    """The installed monitor's report, or None (none installed, or its figures cannot be read now)."""
    if _monitor is None:
        return None
    try:
        return _monitor().report()
    except Exception:  # noqa: BLE001 - the gauges are left out this scrape; the error is logged
        log.exception("model monitoring figures could not be read")
        return None
