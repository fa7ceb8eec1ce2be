"""The stored form of a vitals message: one row, its FHIR vital-sign Observations built when read.

A monitor's message of three vitals is three R4 Observations of about 1 KB each. Stored as
such, they cost the bridge more than everything else it does with the message (serialising
them, three rows and their index entries, the bytes through the WAL). So the store keeps each
vitals message as one short row of table ``vital_signs`` (schema in :mod:`iomt.store`) and
builds the Observations when they are read (FHIR API, ward board) or sent to a FHIR server
(:mod:`iomt.sink`):

- ``effective_us``: the measurement time, Unix microseconds (UTC);
- ``subject``: the Patient reference;
- ``codes``: the message's LOINC codes in message order, comma-separated;
- ``device``: the device identifier (the Observation's ``device.display``), or NULL;
- ``effective``: the measurement time as sent (ISO 8601 with the sender's offset), or NULL when
  that offset is UTC (the time is then ``effective_us``: compact messages send epoch ms);
- ``vitals``: JSON ``[[loinc, value, out_of_range], ...]``, values normalised to UCUM;
- ``updated_at``: when the row was written (epoch seconds);
- ``identifier_system``: the system of the patient's identifier, a small integer code of table
  ``vital_identifier_systems`` (a few systems in all: the URI is not repeated in every row);
- ``identifier_value``: the identifier's value, NULL when it is the id of ``subject``
  (``Patient/<value>``, :func:`iomt.identity.patient_reference`), as it is for most patients.

The Observations' ``subject`` is the reference and, as on the NEWS2 Observations and Flags, the
patient's identifier (:mod:`iomt.pipeline`: the message's or the admission's system, else
``iomt.identifiers.citizen_id``). Rows stored before these two columns existed have NULL in both
(no default system is guessed: the message may have named another, and a hashed reference does
not give the value back): their Observations carry the reference alone, as they did.

The key is (``effective_us``, ``subject``, ``codes``): a message delivered again replaces its row,
and two messages about one patient at one instant with other codes both stay. The
Observations are built by :func:`iomt.observations.vital_observations` from the row, so they are
the ones the message itself gives: the same deterministic ids (subject, code, instant), the same
elements. When two rows give an Observation of the same id (one instant, overlapping codes),
the one written last is returned, as an upsert of the resource would have kept it. An
Observation id begins with its instant in Unix milliseconds (:mod:`iomt.observations`), so
reading one by id is a look-up of that millisecond in the key.

NEWS2 scores, ECG chunks, alerts and everything else stay whole resources in ``fhir_resources``.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import orjson

from iomt.identity import device_reference
from iomt.observations import UNIX_EPOCH, _number, unix_us, vital_observations
from iomt.payload import Vital, VitalsMessage
from models import clinical_codes as codes

if TYPE_CHECKING:  # the store reads what this module writes
    from iomt.store import VitalRow, VitalsStore

_UPDATED_AT = 8  # index of updated_at in a row read (a row of record() has 8 items)
_PATIENT = "Patient/"
_UUID_HEX = frozenset("0123456789abcdef-")


def record(msg: VitalsMessage, subject: str, device: str | None,
           identifier: tuple[str, str] | None = None) -> tuple:
    """The row of ``msg`` about ``subject`` (a Patient reference) from ``device``, without
    ``updated_at``; ``identifier``: the patient's identifier ``(system, value)``, whose system
    the store keeps as its code (:meth:`iomt.store.VitalsStore.commit_batch`)."""
    latest, at = msg.latest(), msg.time
    vitals = orjson.dumps([(v.loinc, v.value, v.out_of_range) for v in latest.values()])
    if identifier is None:
        system = value = None
    else:
        system, value = identifier
        if subject == _PATIENT + value:
            value = None  # the reference's id: not stored twice
    return (unix_us(at), subject, ",".join(latest), device,
            None if at.tzinfo is timezone.utc else at.isoformat(), vitals.decode("ascii"),
            system, value)


def _identifier(row: Sequence) -> dict[str, str] | None:
    """The patient's FHIR Identifier a row keeps, or None (a row stored without one)."""
    if row[6] is None:
        return None
    value = row[7]
    return {"system": row[6], "value": row[1][len(_PATIENT):] if value is None else value}


def _effective(row: Sequence) -> str:
    return row[4] or (UNIX_EPOCH + timedelta(microseconds=row[0])).isoformat()


def _vital(loinc: str, value: float, out_of_range: bool) -> Vital:
    unit = codes.VITAL_SIGNS[loinc].ucum
    return Vital(loinc=loinc, value=value, unit=unit, out_of_range=out_of_range,
                 source_code=loinc, source_system=codes.LOINC_SYSTEM, source_value=value,
                 source_unit=unit)


def message_of(row: Sequence, effective: str) -> VitalsMessage:
    """The message a row keeps: normalised vitals, time, device (the patient is ``row[1]``);
    ``effective`` is the row's time as ISO 8601 (:func:`_effective`)."""
    vitals = tuple(_vital(*item) for item in orjson.loads(row[5]))
    return VitalsMessage.checked(patient_id=None, patient_system=None,
                                 time=datetime.fromisoformat(effective), vitals=vitals,
                                 device=row[3])


def message(row: Sequence) -> VitalsMessage:
    """The message a row keeps, at the time it was sent with (:func:`message_of`)."""
    return message_of(row, _effective(row))


def observations(rows: Iterable[Sequence]) -> list[dict[str, Any]]:
    """The vital-sign Observations of ``rows`` (in their order; of two with one id, the later
    row's, or the one with the greater ``updated_at`` when the rows carry it)."""
    built: dict[str, tuple[float, dict[str, Any]]] = {}
    for n, row in enumerate(rows):
        rank = row[_UPDATED_AT] if len(row) > _UPDATED_AT else n
        device, effective = row[3], _effective(row)
        for resource in vital_observations(message_of(row, effective), row[1],
                                           device_reference(device) if device else None,
                                           effective=effective, patient_identifier=_identifier(row)):
            kept = built.get(resource["id"])
            if kept is None or rank >= kept[0]:
                built[resource["id"]] = (rank, resource)
    return [resource for _, resource in built.values()]


def select(store: VitalsStore, subject: str | None = None, since: datetime | None = None,
           limit: int | None = None, waiting: dict[str, list] | None = None) -> list[VitalRow]:
    """Rows of ``subject`` (all when None) measured after ``since``, newest first. A patient's
    are found through the patient index and the log of keys not in it yet
    (:mod:`iomt.vital_index`), or, for many patients, in ``waiting`` (:func:`waiting_rows`, the
    log read once)."""
    since_us = None if since is None else unix_us(since)
    rows = store.vital_rows(subject, since_us, limit, indexed_only=waiting is not None)
    if subject is None or waiting is None or subject not in waiting:
        return rows
    merged = {tuple(row[:3]): row for row in rows}
    merged.update((tuple(row[:3]), row) for row in waiting[subject]
                  if since_us is None or row[0] > since_us)
    return sorted(merged.values(), key=lambda row: row[0], reverse=True)[:limit]


def waiting_rows(store: VitalsStore, since: datetime | None = None,
                 subjects: Iterable[str] | None = None) -> dict[str, list[VitalRow]]:
    """The rows measured after ``since`` whose keys are not in the patient index yet, by
    patient (of ``subjects`` alone when given): the log read once for many patients (the ward
    board), where each patient's own look-up would read the whole log again."""
    found: dict[str, list] = {}
    for row in store.unindexed_rows(None if since is None else unix_us(since),
                                    None if subjects is None else list(subjects)):
        found.setdefault(row[1], []).append(row)
    return found


def find(store: VitalsStore, observation_id: str) -> dict[str, Any] | None:
    """The vital-sign Observation of that id, or None."""
    if len(observation_id) != 36 or not _UUID_HEX.issuperset(observation_id):
        return None
    millis = int(observation_id[:8] + observation_id[9:13], 16)
    rows = store.rows_measured_between(millis * 1000, millis * 1000 + 999)
    return next((r for r in observations(rows) if r["id"] == observation_id), None)


def subjects(store: VitalsStore, since: datetime) -> set[str]:
    """Patients with vitals measured after ``since`` (:meth:`iomt.store.VitalsStore.subjects_since`)."""
    return store.subjects_since(unix_us(since))


def readings(row: Sequence) -> tuple[str, list[tuple[str, int | float]]]:
    """A row's time (ISO 8601) and ``(LOINC code, value)`` readings, the values as its
    Observations give them: what a chart needs, without building the Observations."""
    return _effective(row), [(loinc, _number(value)) for loinc, value, _ in orjson.loads(row[5])]


def has_subject(store: VitalsStore, subject: str) -> bool:
    return store.has_subject(subject)


def count(store: VitalsStore, loinc: str) -> int:
    """Stored vitals messages with a reading of ``loinc`` (each gives one such Observation)."""
    return store.count(loinc)
