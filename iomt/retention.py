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

from kernel.periodic import PeriodicWorker

log = logging.getLogger("medgate.iomt")

#: Observation categories written by the bridge (FHIR observation-category codes).
BRIDGE_CATEGORIES = ("vital-signs", "survey")
#: Rows examined per transaction, so the bridge's writers wait at most one short delete.
BATCH_ROWS = 5000
#: The vitals tables and their keys (:mod:`iomt.vital_index`, :mod:`iomt.vital_records`).
VITAL_TABLES = (("vital_subjects", "subject, effective_us, codes"),
                ("vital_signs", "effective_us, subject, codes"))


class VitalsRetention(PeriodicWorker):
    """Deletes the bridge's resources older than ``retention_hours`` every ``interval_s``."""

    worker_name = "medgate-vitals-retention"

    def __init__(self, store, retention_hours: float, interval_s: float = 60.0) -> None:
        super().__init__(interval_s)
        if retention_hours <= 0:
            raise ValueError(f"`retention_hours` must be positive, {retention_hours} is given.")
        self.store, self.retention_s = store, retention_hours * 3600.0
        self._reached = 0  # every row at or below this rowid was examined and kept

    def tick(self, now: float | None = None) -> int:
        """One pass; returns how many resources and vitals messages were deleted."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        deleted = self._vital_signs(cutoff)
        while True:
            rows = self.store.query(  # read outside the write lock: the bridge commits meanwhile
                "SELECT rowid, updated_at, resource_type,"
                " CASE WHEN resource_type='Observation' AND updated_at < ?"
                " THEN json_extract(body, '$.category[0].coding[0].code') END AS category"
                " FROM fhir_resources WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (cutoff, self._reached, BATCH_ROWS))
            young = next((i for i, row in enumerate(rows) if row[1] >= cutoff), len(rows))
            old = rows[:young]
            doomed = [row[0] for row in old if row[2] == "RiskAssessment"
                      or (row[2] == "Observation" and row[3] in BRIDGE_CATEGORIES)]
            if doomed:  # rows read above are only ever replaced by younger ones: the cutoff still holds
                with self.store.transaction(durable=False) as db:
                    db.executemany("DELETE FROM fhir_resources WHERE rowid=? AND updated_at<?",
                                   [(rowid, cutoff) for rowid in doomed])
            deleted += len(doomed)
            if old:
                self._reached = old[-1][0]
            if len(old) < len(rows) or len(rows) < BATCH_ROWS:  # reached rows younger than the cutoff
                break
        if deleted:
            log.info("retention: deleted %d vitals messages and resources older than %.0f h",
                     deleted, self.retention_s / 3600.0)
        return deleted

    def _vital_signs(self, cutoff: float) -> int:
        deleted, cutoff_us = 0, int(cutoff * 1e6)
        while True:
            with self.store.transaction(durable=False) as db:
                for table, key in VITAL_TABLES:  # the patient index, then the rows
                    count = db.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM vital_signs"
                        " WHERE effective_us<? ORDER BY effective_us LIMIT ?)",
                        (cutoff_us, BATCH_ROWS)).rowcount
            deleted += count
            if count < BATCH_ROWS:
                return deleted
