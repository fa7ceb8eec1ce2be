"""The gateway's store: received instances, study state and the completion bookkeeping.

Tables (in the shared database, :class:`kernel.database.Database`; the gateway creates them):

``instances``
    One row per received instance: its UIDs, modality, spool file and sender.
``studies``
    One row per study: ``status`` (:data:`STUDY_STATUSES`), the route it was handed to, a detail.
    A study whose instances were all refused at intake has a row ``refused`` and no instances.
``dicom_groups``
    One row per completion group (a study, or a series with ``dicom.completion.group_by: series``):
    instances received, the expected count when the data announces one, the time of the last
    instance, whether the last sender finished (association released, STOW-RS request answered),
    the models the group routes to, and ``state`` (``receiving`` -> ``complete``).
``dicom_instance_routes``
    The models each instance was routed to when it arrived (so the pipeline uses the same decision).
``dicom_series_geometry``
    Rows, Columns and Image Orientation (Patient) of the first slice of each volume series.
``dicom_dispatches``
    The *dispatched* marker: one row per (group, model), inserted in the same transaction that
    marks the group complete.  A group is handed to a model only when that insert created the row,
    so a study is dispatched exactly once, across restarts and across processes (SCP and STOW-RS).

What the rows mean for the gateway's work is :mod:`dicom_gateway.ledger`'s; the SQL is here alone.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

from kernel.database import Database, Record

if TYPE_CHECKING:  # the ledger's record types; the ledger imports this module
    from dicom_gateway.ledger import Arrival, Refusal

log = logging.getLogger("medgate.dicom")

#: ``studies.status``: receiving | complete | done | unrouted | failed | refused.
STUDY_STATUSES = ("receiving", "complete", "done", "unrouted", "failed", "refused")

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    modality TEXT,
    path TEXT NOT NULL,
    calling_ae TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    status TEXT NOT NULL,          -- receiving | complete | done | unrouted | failed | refused
    route TEXT,
    detail TEXT,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dicom_groups (
    group_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    models TEXT NOT NULL DEFAULT '[]',
    expected_count INTEGER,
    received_count INTEGER NOT NULL DEFAULT 0,
    single_image INTEGER NOT NULL DEFAULT 1,
    released_at REAL,
    last_received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'receiving',
    completed_at REAL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS dicom_groups_state ON dicom_groups(state);
CREATE TABLE IF NOT EXISTS dicom_instance_routes (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    group_uid TEXT NOT NULL,
    models TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dicom_instance_routes_study ON dicom_instance_routes(study_uid);
CREATE TABLE IF NOT EXISTS dicom_series_geometry (
    series_uid TEXT PRIMARY KEY,
    rows INTEGER NOT NULL,
    columns INTEGER NOT NULL,
    orientation TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dicom_dispatches (
    group_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    dispatched_at REAL NOT NULL,
    processed_at REAL,            -- set when the model's results were produced (or it failed)
    PRIMARY KEY (group_uid, model)
);
"""


@dataclass(frozen=True)
class Instance(Record):
    """One received instance (a row of ``instances``)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str | None
    path: str
    calling_ae: str | None
    received_at: float


@dataclass(frozen=True)
class Study(Record):
    """One study's state (a row of ``studies``)."""

    study_uid: str
    status: str
    route: str | None
    detail: str | None
    received_at: float
    updated_at: float


@dataclass(frozen=True)
class Group(Record):
    """One completion group (a row of ``dicom_groups``); ``models`` is the JSON array as stored."""

    group_uid: str
    study_uid: str
    models: str
    expected_count: int | None
    received_count: int
    single_image: int
    released_at: float | None
    last_received_at: float
    state: str
    completed_at: float | None
    reason: str | None

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(json.loads(self.models))


@dataclass(frozen=True)
class Dispatch(Record):
    """One group handed to one model (a row of ``dicom_dispatches``)."""

    group_uid: str
    model: str
    study_uid: str
    dispatched_at: float
    processed_at: float | None


class StudyPatient(NamedTuple):
    """Whose study it is: Patient ID (0010,0020) and Issuer of Patient ID (0010,0021), '' when absent."""

    patient_id: str
    issuer: str


class SeriesGeometry(NamedTuple):
    """Rows (0028,0010), Columns (0028,0011) and Image Orientation (Patient) (0020,0037) of a series'
    first slice, the orientation as :func:`dicom_gateway.ledger.orientation_text` writes it."""

    rows: int
    columns: int
    orientation: str


def _record(cls, row) -> Any:
    return cls(*row) if row is not None else None


class GatewayStore:
    """The gateway's tables in ``database`` (created when missing)."""

    def __init__(self, database: Database) -> None:
        if not isinstance(database, Database):
            raise TypeError(f"database must be a kernel.database.Database, {type(database).__name__} is given.")
        self.database = database
        database.create(SCHEMA)
        self._migrate()

    def close(self) -> None:
        """Close the database (a gateway store that opened its own: :func:`open_gateway_store`)."""
        self.database.close()

    def _migrate(self) -> None:
        if self.database.read_only:
            return
        with self.database.transaction() as db:
            columns = {r["name"] for r in db.execute("PRAGMA table_info(dicom_dispatches)")}
            if "processed_at" not in columns:  # databases created before the column existed
                db.execute("ALTER TABLE dicom_dispatches ADD COLUMN processed_at REAL")
                db.execute("UPDATE dicom_dispatches SET processed_at=dispatched_at WHERE study_uid NOT IN"
                           " (SELECT study_uid FROM studies WHERE status='complete')")

    # -- instances and studies -------------------------------------------------------------------
    def add_instance(self, row: dict[str, Any]) -> bool:
        """Record a received instance outside the completion bookkeeping (uploads, tests); returns
        False when it was already known (a duplicate)."""
        now = time.time()
        with self.database.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO instances VALUES (:sop_instance_uid, :study_uid, :series_uid,"
                " :sop_class_uid, :modality, :path, :calling_ae, :received_at)",
                {**row, "received_at": now})
            db.execute("INSERT OR IGNORE INTO studies(study_uid, status, received_at, updated_at)"
                       " VALUES (?, 'receiving', ?, ?)", (row["study_uid"], now, now))
            return cur.rowcount == 1

    def set_study_status(self, study_uid: str, status: str, route: str | None = None,
                         detail: str | None = None) -> None:
        if status not in STUDY_STATUSES:
            raise ValueError(f"status must be one of {STUDY_STATUSES}, {status!r} is given.")
        with self.database.transaction() as db:
            db.execute("UPDATE studies SET status=?, route=COALESCE(?, route), detail=?, updated_at=?"
                       " WHERE study_uid=?", (status, route, detail, time.time(), study_uid))

    def study(self, study_uid: str) -> Study | None:
        rows = self.database.rows("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        return Study(*rows[0]) if rows else None

    def studies_with_status(self, *statuses: str) -> list[str]:
        """UIDs of the studies in any of ``statuses``, oldest received first."""
        marks = ",".join("?" * len(statuses))
        return [r[0] for r in self.database.rows(
            f"SELECT study_uid FROM studies WHERE status IN ({marks}) ORDER BY received_at", statuses)]

    def recent_studies(self, limit: int) -> list[Study]:
        """The ``limit`` studies received last, newest first (the worklist)."""
        return [Study(*r) for r in self.database.rows(
            "SELECT * FROM studies ORDER BY received_at DESC LIMIT ?", (limit,))]

    def done_studies(self, since: float) -> list[str]:
        """UIDs of the studies ``done`` that were received at or after ``since`` (epoch seconds)."""
        return [r[0] for r in self.database.rows(
            "SELECT study_uid FROM studies WHERE status='done' AND received_at>=? ORDER BY received_at",
            (since,))]

    def studies_before(self, statuses: Iterable[str], updated_before: float) -> list[str]:
        """UIDs of the studies in any of ``statuses`` last updated before ``updated_before``."""
        statuses = tuple(statuses)
        marks = ",".join("?" * len(statuses))
        return [r[0] for r in self.database.rows(
            f"SELECT study_uid FROM studies WHERE status IN ({marks}) AND updated_at < ?",
            (*statuses, updated_before))]

    def status_counts(self) -> dict[str, int]:
        """Studies per status."""
        return {r[0]: r[1] for r in self.database.rows("SELECT status, COUNT(*) FROM studies GROUP BY status")}

    def delete_study(self, study_uid: str, statuses: Iterable[str]) -> bool:
        """Delete the study's rows (its instances, routes, groups and the study) when it is still
        in one of ``statuses``; False when it moved on meanwhile.  Dispatch markers stay."""
        statuses = tuple(statuses)
        marks = ",".join("?" * len(statuses))
        with self.database.transaction() as db:
            if db.execute(f"SELECT 1 FROM studies WHERE study_uid=? AND status IN ({marks})",
                          (study_uid, *statuses)).fetchone() is None:
                return False
            db.execute("DELETE FROM instances WHERE study_uid=?", (study_uid,))
            db.execute("DELETE FROM dicom_instance_routes WHERE study_uid=?", (study_uid,))
            db.execute("DELETE FROM dicom_groups WHERE study_uid=?", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid=?", (study_uid,))
        return True

    def instances_of(self, study_uid: str) -> list[Instance]:
        return [Instance(*r) for r in self.database.rows(
            "SELECT * FROM instances WHERE study_uid=? ORDER BY received_at", (study_uid,))]

    def instance_paths(self) -> set[str]:
        """The spool files of every recorded instance."""
        return {r[0] for r in self.database.rows("SELECT path FROM instances")}

    def study_patient(self, study_uid: str) -> StudyPatient | None:
        """Patient ID (0010,0020) and Issuer of Patient ID (0010,0021) of the study's first stored
        instance, from its file's header; None when no instance of the study is stored (or its file
        is gone).  The patient a received study belongs to: nothing for another patient may be
        filed under it."""
        from pydicom import dcmread

        rows = self.database.rows("SELECT path FROM instances WHERE study_uid=? ORDER BY received_at LIMIT 1",
                                  (study_uid,))
        if not rows:
            return None
        path = rows[0][0]
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "IssuerOfPatientID"])
        except (OSError, ValueError) as exc:
            log.warning("study %s: the header of %s cannot be read: %s", study_uid, path, exc)
            return None
        return StudyPatient(str(ds.get("PatientID", "") or "").strip(),
                            str(ds.get("IssuerOfPatientID", "") or "").strip())

    # -- completion bookkeeping --------------------------------------------------------------------
    def record_arrivals(self, arrivals: list[Arrival], now: float) -> list[bool]:
        """The rows of ``arrivals`` (instance, study, routes, group counters) in one transaction
        committed without waiting for the disk (the spool files are the durable record); which
        instances were new."""
        with self.database.transaction(durable=False) as db:
            return [self._arrive(db, arrival, now) for arrival in arrivals]

    @staticmethod
    def _arrive(db, arrival: Arrival, now: float) -> bool:
        new = db.execute(
            "INSERT OR IGNORE INTO instances VALUES (?,?,?,?,?,?,?,?)",
            (arrival.sop_instance_uid, arrival.study_uid, arrival.series_uid, arrival.sop_class_uid,
             arrival.modality, arrival.path, arrival.calling_ae, now)).rowcount == 1
        db.execute("INSERT OR IGNORE INTO studies(study_uid, status, received_at, updated_at)"
                   " VALUES (?, 'receiving', ?, ?)", (arrival.study_uid, now, now))
        db.execute("UPDATE studies SET status='receiving', detail=NULL, updated_at=? WHERE study_uid=?"
                   " AND status='refused'", (now, arrival.study_uid))  # a refusal does not block its study
        if not new:
            return False
        db.execute("INSERT OR IGNORE INTO dicom_instance_routes VALUES (?,?,?,?)",
                   (arrival.sop_instance_uid, arrival.study_uid, arrival.group_uid,
                    json.dumps(list(arrival.models))))
        row = db.execute("SELECT models, expected_count, state FROM dicom_groups WHERE group_uid=?",
                         (arrival.group_uid,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO dicom_groups(group_uid, study_uid, models, expected_count, received_count,"
                " single_image, last_received_at) VALUES (?,?,?,?,1,?,?)",
                (arrival.group_uid, arrival.study_uid, json.dumps(list(arrival.models)),
                 arrival.expected_count, int(arrival.single_image), now))
            return True
        models = list(dict.fromkeys([*json.loads(row["models"]), *arrival.models]))
        expected = max(filter(None, (row["expected_count"], arrival.expected_count)), default=None)
        late = row["state"] != "receiving"
        db.execute(
            "UPDATE dicom_groups SET models=?, expected_count=?, received_count=received_count+1,"
            " single_image=single_image AND ?, last_received_at=?, released_at=NULL,"
            " reason=CASE WHEN ? THEN 'instance received after completion' ELSE reason END"
            " WHERE group_uid=?",
            (json.dumps(models), expected, int(arrival.single_image), now, int(late), arrival.group_uid))
        return True

    def record_refusal(self, refusal: Refusal, now: float) -> None:
        """A new study row ``refused`` with the refusal's detail, or the newest detail on a study
        that is ``refused`` already; any other study keeps its row."""
        with self.database.transaction() as db:
            db.execute("INSERT INTO studies(study_uid, status, detail, received_at, updated_at)"
                       " VALUES (?, 'refused', ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE"
                       " SET detail=excluded.detail, updated_at=excluded.updated_at WHERE status='refused'",
                       (refusal.study_uid, refusal.detail, now, now))

    def release_groups(self, group_uids: list[str], now: float) -> None:
        """Their senders finished: groups still receiving get ``released_at``."""
        with self.database.transaction() as db:
            db.executemany("UPDATE dicom_groups SET released_at=? WHERE group_uid=? AND state='receiving'",
                           [(now, g) for g in group_uids])

    def first_geometry(self, series_uid: str, geometry: SeriesGeometry) -> SeriesGeometry:
        """The geometry of the series' first slice: ``geometry``, when this is its first."""
        with self.database.transaction() as db:
            db.execute("INSERT OR IGNORE INTO dicom_series_geometry VALUES (?,?,?,?)",
                       (series_uid, *geometry))
            first = db.execute("SELECT rows, columns, orientation FROM dicom_series_geometry"
                               " WHERE series_uid=?", (series_uid,)).fetchone()
        return SeriesGeometry(*first)

    def receiving_groups(self) -> list[Group]:
        return [Group(*r) for r in self.database.rows("SELECT * FROM dicom_groups WHERE state='receiving'")]

    def all_groups(self) -> list[Group]:
        return [Group(*r) for r in self.database.rows("SELECT * FROM dicom_groups ORDER BY last_received_at")]

    def group_counts(self) -> dict[str, int]:
        """Completion groups per state."""
        return {r[0]: r[1] for r in self.database.rows("SELECT state, COUNT(*) FROM dicom_groups GROUP BY state")}

    def complete_group(self, group_uid: str, reason: str, now: float) -> tuple[str, list[str]] | None:
        """Mark the group complete and claim its dispatches in one transaction: ``(study_uid,
        models newly claimed)``, or None when it was complete already."""
        with self.database.transaction() as db:
            row = db.execute("SELECT study_uid, models FROM dicom_groups WHERE group_uid=? AND state='receiving'",
                             (group_uid,)).fetchone()
            if row is None:
                return None
            study_uid, models = row[0], json.loads(row[1])
            db.execute("UPDATE dicom_groups SET state='complete', completed_at=?, reason=? WHERE group_uid=?",
                       (now, reason, group_uid))
            claimed = [m for m in models if db.execute(
                "INSERT OR IGNORE INTO dicom_dispatches(group_uid, model, study_uid, dispatched_at)"
                " VALUES (?,?,?,?)", (group_uid, m, study_uid, now)).rowcount == 1]
            if models:
                db.execute("UPDATE studies SET status='complete', route=?, detail=?, updated_at=? WHERE study_uid=?",
                           (models[0], f"complete ({reason})", now, study_uid))
            else:
                db.execute("UPDATE studies SET status='unrouted', detail='no routing rule matched', updated_at=?"
                           " WHERE study_uid=? AND status='receiving'", (now, study_uid))
        return study_uid, claimed

    def instance_routes(self, study_uid: str) -> dict[str, tuple[str, ...]]:
        """SOP Instance UID -> the models it was routed to, for the study's recorded instances."""
        return {r[0]: tuple(json.loads(r[1])) for r in self.database.rows(
            "SELECT sop_instance_uid, models FROM dicom_instance_routes WHERE study_uid=?", (study_uid,))}

    def mark_processed(self, study_uid: str, model: str, now: float) -> None:
        with self.database.transaction() as db:
            db.execute("UPDATE dicom_dispatches SET processed_at=? WHERE study_uid=? AND model=?"
                       " AND processed_at IS NULL", (now, study_uid, model))

    def unprocessed_dispatches(self) -> list[tuple[str, str]]:
        """``(study_uid, model)`` of every claimed dispatch not yet processed, oldest first."""
        return [(r[0], r[1]) for r in self.database.rows(
            "SELECT study_uid, model FROM dicom_dispatches WHERE processed_at IS NULL"
            " ORDER BY dispatched_at, model")]

    def has_dispatches(self) -> bool:
        return bool(self.database.rows("SELECT 1 FROM dicom_dispatches LIMIT 1"))

    def dispatches(self, study_uid: str) -> list[Dispatch]:
        return [Dispatch(*r) for r in self.database.rows(
            "SELECT group_uid, model, study_uid, dispatched_at, processed_at FROM dicom_dispatches"
            " WHERE study_uid=? ORDER BY model", (study_uid,))]

    def latest_completion(self) -> float | None:
        """When the last group completed (epoch seconds), or None."""
        return self.database.rows("SELECT max(completed_at) FROM dicom_groups")[0][0]


def open_gateway_store(path: str | Path) -> GatewayStore:
    """A gateway store on its own connection to the database at ``path`` (a process of its own)."""
    return GatewayStore(Database(path))
