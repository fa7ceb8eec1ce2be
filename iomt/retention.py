"""Retention of the bridge's resources in the local store.

Every vitals message leaves a row in the store (``vital_signs``, :mod:`iomt.vital_records`,
about 200 bytes with its index entry) and now and then FHIR resources (NEWS2 scores,
RiskAssessments). The store is the ward's working copy and the delivery buffer, not the health
record (that is ``fhir.base_url``), so it keeps them for ``iomt.retention_hours`` and then
deletes them; the SQLite file stops growing once its free pages are reused, at about
``bytes per message x messages per hour x retention_hours``.

Deleted are:

- vitals messages measured before the cutoff. Their key starts with the measurement time, so a
  pass deletes from the start of the table, a batch at a time. A message that arrives later
  than the retention window after it was measured goes at the next pass;
- Observations of category ``vital-signs`` or ``survey`` (NEWS2) and RiskAssessments last
  written before the cutoff. These rows are visited in insertion (rowid) order, which is time
  order, a batch at a time: a pass stops at the first row younger than the cutoff, so it never
  scans the recent part of a large table, and it remembers the rowid it reached, so rows kept
  forever are read once per process.

Imaging results, alerts (Flag, DetectedIssue, Communication), patients, devices and anything not
yet delivered through the outbox (it keeps its own copy) stay.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from iomt.store import VitalsStore
from kernel.periodic import PeriodicWorker

log = logging.getLogger("medgate.iomt")

#: Observation categories written by the bridge (FHIR observation-category codes).
BRIDGE_CATEGORIES = ("vital-signs", "survey")
#: Rows examined per transaction, so the bridge's writers wait at most one short delete.
BATCH_ROWS = 5000


@dataclass(frozen=True)
class ResourceAge:
    """When a stored FHIR resource was last written: its row (insertion order), time, type, and
    for an Observation written before the cutoff its first category code (else None)."""

    rowid: int
    updated_at: float
    resource_type: str
    category: str | None


class AgingResources(Protocol):
    """The stored FHIR resources as retention sees them (the server's store provides them)."""

    def resource_ages(self, after_rowid: int, cutoff: float, limit: int) -> list[ResourceAge]:
        """Up to ``limit`` resources after row ``after_rowid``, in insertion order."""

    def delete_resources(self, rowids: list[int], cutoff: float) -> None:
        """Delete those of ``rowids`` still last written before ``cutoff`` (without waiting for the disk)."""


class VitalsRetention(PeriodicWorker):
    """Deletes the bridge's resources older than ``retention_hours`` every ``interval_s``."""

    worker_name = "medgate-vitals-retention"

    def __init__(self, store: VitalsStore, retention_hours: float, interval_s: float = 60.0, *,
                 resources: AgingResources) -> None:
        super().__init__(interval_s)
        if retention_hours <= 0:
            raise ValueError(f"`retention_hours` must be positive, {retention_hours} is given.")
        self.store, self.resources, self.retention_s = store, resources, retention_hours * 3600.0
        self._reached = 0  # every row at or below this rowid was examined and kept

    def tick(self, now: float | None = None) -> int:
        """One pass; returns how many resources and vitals messages were deleted."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        deleted = self._vital_signs(cutoff)
        while True:
            rows = self.resources.resource_ages(self._reached, cutoff, BATCH_ROWS)  # outside the write lock
            young = next((i for i, row in enumerate(rows) if row.updated_at >= cutoff), len(rows))
            old = rows[:young]
            doomed = [row.rowid for row in old if row.resource_type == "RiskAssessment"
                      or (row.resource_type == "Observation" and row.category in BRIDGE_CATEGORIES)]
            if doomed:  # rows read above are only ever replaced by younger ones: the cutoff still holds
                self.resources.delete_resources(doomed, cutoff)
            deleted += len(doomed)
            if old:
                self._reached = old[-1].rowid
            if len(old) < len(rows) or len(rows) < BATCH_ROWS:  # reached rows younger than the cutoff
                break
        if deleted:
            log.info("retention: deleted %d vitals messages and resources older than %.0f h",
                     deleted, self.retention_s / 3600.0)
        return deleted

    def _vital_signs(self, cutoff: float) -> int:
        deleted, cutoff_us = 0, int(cutoff * 1e6)
        while True:
            count = self.store.delete_vitals_before(cutoff_us, BATCH_ROWS)
            deleted += count
            if count < BATCH_ROWS:
                return deleted
