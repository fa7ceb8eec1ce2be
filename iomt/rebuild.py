"""NEWS2 and alert de-duplication state read back from the store, for a node that takes over.

A bridge keeps each patient's latest NEWS2 values (:class:`iomt.state.StateTable`) and last alert
(:class:`iomt.alerts.AlertPolicy`) in memory. When another node takes a partition over
(:mod:`iomt.partitions`), or a bridge must drop what it held in memory because a batch could not
be processed (the database went away in the middle of it), that state is rebuilt from what the
store committed, before any message is taken:

- the patients: those of the partition's beds in the bed census (:meth:`iomt.store.VitalsStore.beds_of_ward`),
  or the ones the state already knew;
- their values: the stored vitals messages (:mod:`iomt.vital_records`) within ``staleness_s`` of
  each patient's newest, newest first, until every NEWS2 parameter has its latest value;
- the oxygen and consciousness values and the last alert: ``news2_context``
  (:class:`iomt.store.News2Context`, written by :class:`iomt.pipeline.VitalsPipeline`).

A message the previous holder had committed but not acknowledged is delivered again: its time is
not newer than the rebuilt state's newest, so it is stored again (the same ids) and neither
scored again nor alerted twice.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

from iomt import vital_records
from iomt.alerts import AlertPolicy
from iomt.news2 import ACVPU
from iomt.observations import UNIX_EPOCH
from iomt.state import CONSCIOUSNESS, ON_OXYGEN, SCORED_LOINC, StateTable
from iomt.topics import Partition

log = logging.getLogger("medgate.iomt")

#: Vitals rows read back per patient, step by step, until every scored parameter is found (a
#: monitor sends the pulse every second and the blood pressure every 15 minutes); None: the rest
#: of the staleness window.
ROW_STEPS: tuple[int | None, ...] = (64, 1024, None)


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild restored."""

    patients: int  # patients with values or an alert restored
    alerts: int  # of them, with a last alert
    seconds: float  # time it took


def _at(us: int) -> datetime:
    return UNIX_EPOCH + timedelta(microseconds=us)


def partition_patients(store, partitions: Iterable[Partition]) -> set[str]:
    """The patients in the beds of ``partitions`` (the bed census: the latest patient of each bed)."""
    return {row.patient_ref for p in partitions for row in store.beds_of_ward(p.ward, p.site)}


def latest_values(store, patient_ref: str, staleness_s: float
                  ) -> tuple[dict[str, tuple[datetime, Any]], datetime | None]:
    """The latest value of each scored vital sign of ``patient_ref`` within ``staleness_s`` of
    its newest stored message, and that message's time (None: nothing stored)."""
    newest_rows = store.vital_rows(patient_ref, limit=1)
    if not newest_rows:
        return {}, None
    newest = vital_records.message(newest_rows[0]).time
    since_us = newest_rows[0].effective_us - int(staleness_s * 1_000_000) - 1
    values: dict[str, tuple[datetime, Any]] = {}
    for limit in ROW_STEPS:
        rows = store.vital_rows(patient_ref, since_us, limit)
        for row in rows:  # newest first: the first value of a code is its latest
            msg = vital_records.message(row)
            for loinc, vital in msg.latest().items():
                if loinc in SCORED_LOINC and loinc not in values:
                    values[loinc] = (msg.time, vital.value)
        if len(values) == len(SCORED_LOINC) or limit is None or len(rows) < limit:
            break
    return values, newest


def restore(store, patients: Iterable[str], states: StateTable, alerts: AlertPolicy) -> Rebuilt:
    """Rebuild the NEWS2 state and the last alert of ``patients`` from ``store`` into ``states``
    and ``alerts`` (see the module docstring)."""
    started = time.monotonic()
    patients = sorted(set(patients))
    contexts = {c.subject: c for c in store.news2_contexts(patients)}
    restored = alerted = 0
    for patient in patients:
        values, newest = latest_values(store, patient, states.staleness_s)
        context = contexts.get(patient)
        if context is not None:
            if context.on_oxygen is not None and context.on_oxygen_us is not None:
                values[ON_OXYGEN] = (_at(context.on_oxygen_us), bool(context.on_oxygen))
            if context.consciousness is not None and context.consciousness_us is not None:
                values[CONSCIOUSNESS] = (_at(context.consciousness_us), ACVPU(context.consciousness))
            if context.alerted_us is not None and context.alerted_band is not None:
                alerts.restore(patient, _at(context.alerted_us), context.alerted_band)
                alerted += 1
        if values or newest is not None:
            states.restore(patient, values, newest)
            restored += 1
    return Rebuilt(restored, alerted, time.monotonic() - started)


def restore_partitions(store, partitions: Sequence[Partition], states: StateTable,
                       alerts: AlertPolicy) -> Rebuilt:
    """:func:`restore` for the patients in the beds of ``partitions``."""
    rebuilt = restore(store, partition_patients(store, partitions), states, alerts)
    log.info("state of %s rebuilt from the store: %d patients, %d with an alert, in %.3f s",
             ", ".join(p.name for p in partitions), rebuilt.patients, rebuilt.alerts, rebuilt.seconds)
    return rebuilt
