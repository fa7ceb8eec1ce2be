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
    so a study is dispatched exactly once, across restarts, processes and nodes.  Each unprocessed
    row is *leased* (version 2): ``owner`` is the node whose pipeline holds it and
    ``lease_expires_at`` when that hold ends unless renewed, on the database's clock
    (:attr:`kernel.database.Database.now_sql`, never a node's own).  An expired lease is taken over by
    another node (:meth:`GatewayStore.claim_dispatches`); ``processed_at`` ends it.

``dicom_object_index``
    The DICOM objects a DICOMweb client may search and retrieve (PS3.18 QIDO-RS and WADO-RS): every
    received instance and every result object medgate wrote, with the header attributes QIDO-RS
    matches on as columns and the header as DICOM JSON, so a query reads no file.  Rows are added
    by the reader of the headers (:mod:`serving.http.dicomweb_index`) for the instances that have
    none yet, so a database of before the table is indexed on its first query.
``dicom_index_results``
    Per study, its ``updated_at`` when its result objects were last indexed: a study whose row
    moved on since is looked at again.

What the rows mean for the gateway's work is :mod:`dicom_gateway.ledger`'s; the SQL is here alone.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

from kernel.database import Database, Record, columns_of
from kernel.migrations import Migration, migrate

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
CREATE TABLE IF NOT EXISTS dicom_object_index (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    modality TEXT,
    source TEXT NOT NULL,          -- received | result
    path TEXT NOT NULL,
    transfer_syntax_uid TEXT,
    patient_id TEXT,
    patient_name TEXT,
    patient_birth_date TEXT,
    patient_sex TEXT,
    study_date TEXT,
    study_time TEXT,
    accession_number TEXT,
    study_id TEXT,
    study_description TEXT,
    referring_physician_name TEXT,
    series_number INTEGER,
    series_description TEXT,
    pps_start_date TEXT,
    pps_start_time TEXT,
    instance_number INTEGER,
    header TEXT,                   -- DICOM JSON of the header (PS3.18 F.2); NULL: the file was unreadable
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dicom_object_index_study ON dicom_object_index(study_uid);
CREATE INDEX IF NOT EXISTS dicom_object_index_series ON dicom_object_index(series_uid);
CREATE INDEX IF NOT EXISTS dicom_object_index_study_series ON dicom_object_index(study_uid, series_uid);
CREATE INDEX IF NOT EXISTS dicom_object_index_patient ON dicom_object_index(patient_id);
CREATE INDEX IF NOT EXISTS dicom_object_index_accession ON dicom_object_index(accession_number);
CREATE INDEX IF NOT EXISTS dicom_object_index_date ON dicom_object_index(study_date);
CREATE TABLE IF NOT EXISTS dicom_index_results (
    study_uid TEXT PRIMARY KEY,
    study_updated_at REAL NOT NULL  -- the study's updated_at when its result objects were last indexed
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
    """One group handed to one model (a row of ``dicom_dispatches``): ``owner`` the node holding (or
    that last held) its lease, ``lease_expires_at`` the end of that lease on the database's clock
    (None once processed, or for a dispatch of before leases)."""

    group_uid: str
    model: str
    study_uid: str
    dispatched_at: float
    processed_at: float | None
    owner: str | None
    lease_expires_at: float | None


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


@dataclass(frozen=True)
class IndexedObject(Record):
    """One searchable and retrievable DICOM object (a row of ``dicom_object_index``): ``source`` is
    ``received`` or ``result``; ``header`` its DICOM JSON (PS3.18 F.2), None when unreadable."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str | None
    source: str
    path: str
    transfer_syntax_uid: str | None
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    series_number: int | None
    series_description: str | None
    pps_start_date: str | None
    pps_start_time: str | None
    instance_number: int | None
    header: str | None
    indexed_at: float


#: ``dicom_object_index.source``: an instance the gateway received, or a result object medgate wrote.
OBJECT_SOURCES = ("received", "result")
#: Columns of ``dicom_object_index`` a :class:`Match` may name (the QIDO-RS matching keys).
MATCH_COLUMNS = frozenset(IndexedObject.__dataclass_fields__) - {"source", "path", "header", "indexed_at"}
#: How a :class:`Match` compares (PS3.4 C.2.2.2): single value, wildcard (``*`` ``?``), list of
#: UIDs, range (either end may be None), and ``in_study``: any object of the study matches a list
#: (Modalities in Study).
MATCH_KINDS = ("single", "wildcard", "list", "range", "in_study")


class Match(NamedTuple):
    """One matching key of a query on ``dicom_object_index`` (PS3.4 C.2.2.2 attribute matching).

    ``column`` is one of :data:`MATCH_COLUMNS`; ``values`` one value (single, wildcard: the pattern
    with ``*`` and ``?``), the values (list, in_study) or ``(low, high)`` (range);
    ``ignore_case`` for Person Names (PS3.4 C.2.2.2.1)."""

    column: str
    kind: str
    values: tuple
    ignore_case: bool = False


class StudyMatch(NamedTuple):
    """One study a query found: its series and objects, the modalities of its series, and the
    header of one of its objects (a received one first)."""

    study_uid: str
    series_count: int
    instance_count: int
    modalities: tuple[str, ...]
    header: str


class SeriesMatch(NamedTuple):
    """One series a query found: its object count and the header of its first object."""

    study_uid: str
    series_uid: str
    instance_count: int
    header: str


def _wildcard(pattern: str, ignore_case: bool) -> tuple[str, str]:
    """The SQL condition and parameter of a PS3.4 C.2.2.2.4 wildcard: ``GLOB`` (case-sensitive;
    ``[`` escaped) or, ignoring case, ``LIKE`` with ``%`` ``_`` ``\\`` escaped."""
    if ignore_case:
        escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "LIKE ? ESCAPE '\\'", escaped.replace("*", "%").replace("?", "_")
    return "GLOB ?", pattern.replace("[", "[[]")


def _conditions(matches: Iterable[Match]) -> tuple[str, list[Any]]:
    """The WHERE clause (after ``header IS NOT NULL``) and parameters of ``matches``."""
    sql, params = "header IS NOT NULL", []
    for m in matches:
        if m.column not in MATCH_COLUMNS:
            raise ValueError(f"column must be one of {sorted(MATCH_COLUMNS)}, {m.column!r} is given.")
        if m.kind == "single":
            sql += f" AND {m.column} = ?" + (" COLLATE NOCASE" if m.ignore_case else "")
            params.append(m.values[0])
        elif m.kind == "wildcard":
            condition, pattern = _wildcard(m.values[0], m.ignore_case)
            sql += f" AND {m.column} {condition}"
            params.append(pattern)
        elif m.kind == "list":
            sql += f" AND {m.column} IN ({','.join('?' * len(m.values))})"
            params.extend(m.values)
        elif m.kind == "range":
            low, high = m.values
            sql += f" AND {m.column} <> ''"
            if low:
                sql, params = sql + f" AND {m.column} >= ?", params + [low]
            if high:
                sql, params = sql + f" AND {m.column} <= ?", params + [high]
        elif m.kind == "in_study":
            sql += (f" AND study_uid IN (SELECT study_uid FROM dicom_object_index WHERE"
                    f" {m.column} IN ({','.join('?' * len(m.values))}))")
            params.extend(m.values)
        else:
            raise ValueError(f"kind must be one of {MATCH_KINDS}, {m.kind!r} is given.")
    return sql, params


#: Version 2: a dispatch's lease (the node holding it and when the hold ends, database clock), and
#: the index the takeover sweep reads (the unprocessed dispatches by lease end).
LEASES = """
ALTER TABLE dicom_dispatches ADD COLUMN owner TEXT;
ALTER TABLE dicom_dispatches ADD COLUMN lease_expires_at REAL;
CREATE INDEX IF NOT EXISTS dicom_dispatches_open ON dicom_dispatches(lease_expires_at) WHERE processed_at IS NULL;
"""
#: The gateway's schema steps (:mod:`kernel.migrations`); 1: the schema when versions began.
MIGRATIONS = (Migration(1, "instances, studies, groups, dispatches, object index", SCHEMA),
              Migration(2, "dispatch leases: owner node and lease end", LEASES))
#: Columns added before versions began (a database of then gets them when it is adopted).
LEGACY_COLUMNS = {"dicom_dispatches": (("processed_at", "REAL"),)}
_INSTANCE, _STUDY, _GROUP = columns_of(Instance), columns_of(Study), columns_of(Group)
_DISPATCH = columns_of(Dispatch)


def _record(cls, row) -> Any:
    return cls(*row) if row is not None else None


class GatewayStore:
    """The gateway's tables in ``database`` (created when missing)."""

    def __init__(self, database: Database) -> None:
        if not isinstance(database, Database):
            raise TypeError(f"database must be a kernel.database.Database, {type(database).__name__} is given.")
        self.database = database
        #: ``FOR UPDATE``: a row read to be changed stays locked to this transaction (PostgreSQL; on
        #: SQLite every write transaction holds the whole database, ``BEGIN IMMEDIATE``).
        self._for_update = " FOR UPDATE" if database.dialect == "postgresql" else ""
        legacy = self._lacks_processed_at()
        migrate(database, "gateway", MIGRATIONS, legacy_columns=LEGACY_COLUMNS)
        if legacy:
            self._adopt_processed_at()

    def close(self) -> None:
        """Close the database (a gateway store that opened its own: :func:`open_gateway_store`)."""
        self.database.close()

    def _lacks_processed_at(self) -> bool:
        """A database of before ``dicom_dispatches.processed_at`` (before versions began)."""
        return (not self.database.read_only and self.database.has_table("dicom_dispatches")
                and "processed_at" not in self.database.columns("dicom_dispatches"))

    def _adopt_processed_at(self) -> None:
        """The column just added to a database of before it: set for the dispatches of studies no
        longer complete."""
        with self.database.transaction() as db:
            db.execute("UPDATE dicom_dispatches SET processed_at=dispatched_at WHERE study_uid NOT IN"
                       " (SELECT study_uid FROM studies WHERE status='complete')")

    def unreachable(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the database cannot be reached now (an operational error of its
        backend: connection lost or refused, server shutting down, SQLite busy), as opposed to a
        statement that is wrong whenever it runs."""
        return isinstance(exc, self.database.errors) and any(
            cls.__name__ == "OperationalError" for cls in type(exc).__mro__)

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
        rows = self.database.rows(f"SELECT {_STUDY} FROM studies WHERE study_uid=?", (study_uid,))
        return Study(*rows[0]) if rows else None

    def studies_with_status(self, *statuses: str) -> list[str]:
        """UIDs of the studies in any of ``statuses``, oldest received first."""
        marks = ",".join("?" * len(statuses))
        return [r[0] for r in self.database.rows(
            f"SELECT study_uid FROM studies WHERE status IN ({marks}) ORDER BY received_at", statuses)]

    def recent_studies(self, limit: int) -> list[Study]:
        """The ``limit`` studies received last, newest first (the worklist)."""
        return [Study(*r) for r in self.database.rows(
            f"SELECT {_STUDY} FROM studies ORDER BY received_at DESC LIMIT ?", (limit,))]

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
            db.execute("DELETE FROM dicom_object_index WHERE study_uid=?", (study_uid,))
            db.execute("DELETE FROM dicom_index_results WHERE study_uid=?", (study_uid,))
        return True

    def instances_of(self, study_uid: str) -> list[Instance]:
        return [Instance(*r) for r in self.database.rows(
            f"SELECT {_INSTANCE} FROM instances WHERE study_uid=? ORDER BY received_at", (study_uid,))]

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

    # -- the DICOMweb object index ------------------------------------------------------------------
    def unindexed_instances(self, limit: int) -> list[Instance]:
        """Up to ``limit`` received instances without a row in the object index, oldest first."""
        return [Instance(*r) for r in self.database.rows(
            "SELECT i.sop_instance_uid, i.study_uid, i.series_uid, i.sop_class_uid, i.modality, i.path,"
            " i.calling_ae, i.received_at FROM instances i WHERE NOT EXISTS (SELECT 1 FROM dicom_object_index q"
            " WHERE q.sop_instance_uid=i.sop_instance_uid) ORDER BY i.received_at LIMIT ?", (limit,))]

    def studies_with_unindexed_results(self) -> list[tuple[str, float]]:
        """``(study_uid, updated_at)`` of the studies that changed since their result objects were
        last indexed (or never were)."""
        return [(r[0], r[1]) for r in self.database.rows(
            "SELECT s.study_uid, s.updated_at FROM studies s LEFT JOIN dicom_index_results r"
            " ON r.study_uid=s.study_uid WHERE r.study_updated_at IS NULL OR r.study_updated_at <> s.updated_at"
            " ORDER BY s.updated_at")]

    def index_objects(self, objects: Iterable[IndexedObject],
                      results_indexed: Iterable[tuple[str, float]] = ()) -> None:
        """Add (or replace, by SOP Instance UID) rows of the object index, and record the studies of
        ``results_indexed`` (``(study_uid, updated_at)``) as having their result objects indexed."""
        rows = [tuple(getattr(o, name) for name in IndexedObject.__dataclass_fields__) for o in objects]
        for row in rows:
            if row[5] not in OBJECT_SOURCES:
                raise ValueError(f"source must be one of {OBJECT_SOURCES}, {row[5]!r} is given for {row[0]}.")
        marks = ",".join("?" * len(IndexedObject.__dataclass_fields__))
        with self.database.transaction() as db:
            db.executemany(f"INSERT OR REPLACE INTO dicom_object_index VALUES ({marks})", rows)
            db.executemany("INSERT OR REPLACE INTO dicom_index_results VALUES (?,?)", list(results_indexed))

    def query_studies(self, matches: Iterable[Match], limit: int, offset: int = 0) -> list[StudyMatch]:
        """The studies with an object matching every one of ``matches`` (study-level keys), in
        Study Instance UID order (stable, so pages do not overlap); ``limit`` from ``offset``."""
        where, params = _conditions(matches)
        return [StudyMatch(r[0], r[1], r[2], tuple(sorted(filter(None, (r[3] or "").split(",")))), r[4])
                for r in self.database.rows(
                    "WITH page AS (SELECT study_uid FROM dicom_object_index"
                    f" WHERE {where} GROUP BY study_uid ORDER BY study_uid LIMIT ? OFFSET ?)"
                    " SELECT p.study_uid, COUNT(DISTINCT i.series_uid), COUNT(*), GROUP_CONCAT(DISTINCT i.modality),"
                    " (SELECT h.header FROM dicom_object_index h WHERE h.study_uid=p.study_uid AND h.header IS NOT"
                    " NULL ORDER BY h.source <> 'received', h.rowid LIMIT 1) FROM page p JOIN dicom_object_index i"
                    " ON i.study_uid=p.study_uid AND i.header IS NOT NULL GROUP BY p.study_uid ORDER BY p.study_uid",
                    (*params, limit, offset))]

    def query_series(self, matches: Iterable[Match], limit: int, offset: int = 0) -> list[SeriesMatch]:
        """The series with an object matching every one of ``matches`` (study- and series-level
        keys), in Study and Series Instance UID order; ``limit`` from ``offset``."""
        where, params = _conditions(matches)
        return [SeriesMatch(*r) for r in self.database.rows(
            "WITH page AS (SELECT study_uid, series_uid FROM dicom_object_index"
            f" WHERE {where} GROUP BY study_uid, series_uid ORDER BY study_uid, series_uid LIMIT ? OFFSET ?)"
            " SELECT p.study_uid, p.series_uid, COUNT(*), (SELECT h.header FROM dicom_object_index h WHERE"
            " h.series_uid=p.series_uid AND h.header IS NOT NULL ORDER BY h.rowid LIMIT 1)"
            " FROM page p JOIN dicom_object_index i ON i.series_uid=p.series_uid AND i.study_uid=p.study_uid"
            " AND i.header IS NOT NULL GROUP BY p.study_uid, p.series_uid ORDER BY p.study_uid, p.series_uid",
            (*params, limit, offset))]

    def query_objects(self, matches: Iterable[Match], limit: int | None = None,
                      offset: int = 0) -> list[IndexedObject]:
        """The objects matching every one of ``matches``, in the order they were indexed; all of
        them, or ``limit`` from ``offset``."""
        where, params = _conditions(matches)
        columns = ", ".join(IndexedObject.__dataclass_fields__)
        return [IndexedObject(*r) for r in self.database.rows(
            f"SELECT {columns} FROM dicom_object_index WHERE {where} ORDER BY rowid LIMIT ? OFFSET ?",
            (*params, -1 if limit is None else limit, offset))]

    # -- completion bookkeeping --------------------------------------------------------------------
    def record_arrivals(self, arrivals: list[Arrival], now: float) -> list[bool]:
        """The rows of ``arrivals`` (instance, study, routes, group counters) in one transaction
        committed without waiting for the disk (the spool files are the durable record); which
        instances were new.

        Each group's row is locked while its counters change, so nodes recording instances of one
        group at once add up (PostgreSQL); the arrivals are written in group order, so two nodes'
        transactions take those locks in the same order."""
        order = sorted(range(len(arrivals)), key=lambda i: (arrivals[i].group_uid, arrivals[i].sop_instance_uid))
        new = [False] * len(arrivals)
        with self.database.transaction(durable=False) as db:
            for i in order:
                new[i] = self._arrive(db, arrivals[i], now)
        return new

    def _arrive(self, db, arrival: Arrival, now: float) -> bool:
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
        # the group's row, new and empty when this is its first instance (another node's
        # transaction may insert it at the same moment: one insert wins, the other finds its row)
        db.execute("INSERT OR IGNORE INTO dicom_groups(group_uid, study_uid, models, received_count,"
                   " single_image, last_received_at) VALUES (?,?,'[]',0,1,?)",
                   (arrival.group_uid, arrival.study_uid, now))
        row = db.execute("SELECT models, expected_count, state FROM dicom_groups WHERE group_uid=?"
                         + self._for_update, (arrival.group_uid,)).fetchone()
        models = list(dict.fromkeys([*json.loads(row["models"]), *arrival.models]))
        expected = max(filter(None, (row["expected_count"], arrival.expected_count)), default=None)
        late = row["state"] != "receiving"
        db.execute(
            "UPDATE dicom_groups SET models=?, expected_count=?, received_count=received_count+1,"
            " single_image=single_image * ?, last_received_at=?, released_at=NULL,"  # 0/1: AND
            " reason=CASE WHEN ?=1 THEN 'instance received after completion' ELSE reason END"
            " WHERE group_uid=?",
            (json.dumps(models), expected, int(arrival.single_image), now, int(late), arrival.group_uid))
        return True

    def record_refusal(self, refusal: Refusal, now: float) -> None:
        """A new study row ``refused`` with the refusal's detail, or the newest detail on a study
        that is ``refused`` already; any other study keeps its row."""
        with self.database.transaction() as db:
            db.execute("INSERT INTO studies(study_uid, status, detail, received_at, updated_at)"
                       " VALUES (?, 'refused', ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE"
                       " SET detail=excluded.detail, updated_at=excluded.updated_at WHERE studies.status='refused'",
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
        return [Group(*r) for r in self.database.rows(f"SELECT {_GROUP} FROM dicom_groups WHERE state='receiving'")]

    def all_groups(self) -> list[Group]:
        return [Group(*r) for r in self.database.rows(f"SELECT {_GROUP} FROM dicom_groups ORDER BY last_received_at")]

    def group_counts(self) -> dict[str, int]:
        """Completion groups per state."""
        return {r[0]: r[1] for r in self.database.rows("SELECT state, COUNT(*) FROM dicom_groups GROUP BY state")}

    def complete_group(self, group_uid: str, reason: str, now: float, *, owner: str,
                       lease_s: float) -> tuple[str, list[str]] | None:
        """Mark the group complete and claim its dispatches in one transaction, each leased to
        ``owner`` for ``lease_s`` (database clock): ``(study_uid, models newly claimed)``, or None
        when it was complete already (by this node or another: the state changes once)."""
        with self.database.transaction() as db:
            if db.execute("UPDATE dicom_groups SET state='complete', completed_at=?, reason=? WHERE group_uid=?"
                          " AND state='receiving'", (now, reason, group_uid)).rowcount != 1:
                return None
            row = db.execute("SELECT study_uid, models FROM dicom_groups WHERE group_uid=?", (group_uid,)).fetchone()
            study_uid, models = row[0], json.loads(row[1])
            claimed = [m for m in models if db.execute(
                "INSERT OR IGNORE INTO dicom_dispatches(group_uid, model, study_uid, dispatched_at, owner,"
                f" lease_expires_at) VALUES (?,?,?,?,?,{self.database.now_sql} + ?)",
                (group_uid, m, study_uid, now, owner, lease_s)).rowcount == 1]
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
        """The study's dispatches to ``model`` are processed: their leases end (the owner stays, as
        the node that held it last)."""
        with self.database.transaction() as db:
            db.execute("UPDATE dicom_dispatches SET processed_at=?, lease_expires_at=NULL WHERE study_uid=?"
                       " AND model=? AND processed_at IS NULL", (now, study_uid, model))

    def claim_dispatches(self, owner: str, lease_s: float, *, own: bool = False,
                         limit: int | None = None) -> list[tuple[str, str]]:
        """Lease to ``owner`` for ``lease_s`` the unprocessed dispatches whose lease has expired on
        the database's clock (or that never had one), and with ``own`` those ``owner`` holds already
        (a node starting again); ``(study_uid, model)`` of those claimed, oldest first, at most
        ``limit`` rows.

        One claimer wins each row: on PostgreSQL the candidates are locked with ``FOR UPDATE SKIP
        LOCKED`` (rows another node is claiming are passed over), on SQLite the transaction holds the
        database (``BEGIN IMMEDIATE``), and each row is leased by an ``UPDATE`` that checks the
        lease again and counts as claimed only when it changed the row."""
        now = self.database.now_sql
        claimable = f"(owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {now}" + \
            (" OR owner=?)" if own else ")")
        mine = (owner,) if own else ()
        bounded = (" LIMIT ?", (limit,)) if limit is not None else ("", ())
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.database.dialect == "postgresql" else ""
        with self.database.transaction() as db:
            rows = db.execute(
                f"SELECT group_uid, model, study_uid FROM dicom_dispatches WHERE processed_at IS NULL AND {claimable}"
                f" ORDER BY dispatched_at, model{bounded[0]}{skip_locked}", (*mine, *bounded[1])).fetchall()
            claimed = [(r[2], r[1]) for r in rows if db.execute(
                f"UPDATE dicom_dispatches SET owner=?, lease_expires_at={now} + ? WHERE group_uid=? AND model=?"
                f" AND processed_at IS NULL AND {claimable}", (owner, lease_s, r[0], r[1], *mine)).rowcount == 1]
        return list(dict.fromkeys(claimed))

    def renew_leases(self, owner: str, keys: Iterable[tuple[str, str]],
                     lease_s: float) -> dict[tuple[str, str], bool | None]:
        """Extend to ``lease_s`` from now (database clock) ``owner``'s leases on the unprocessed
        dispatches of each ``(study_uid, model)`` in ``keys``, in one transaction.  Per key: True,
        renewed (still ``owner``'s: no other node took it over, even if it had expired); False, not
        ``owner``'s any more (another node took it over, or it was processed); None, the gateway
        has no dispatch of that study to that model (work that did not come through it)."""
        found: dict[tuple[str, str], bool | None] = {}
        with self.database.transaction() as db:
            for study_uid, model in dict.fromkeys(keys):
                if db.execute(f"UPDATE dicom_dispatches SET lease_expires_at={self.database.now_sql} + ?"
                              " WHERE study_uid=? AND model=? AND owner=? AND processed_at IS NULL",
                              (lease_s, study_uid, model, owner)).rowcount:
                    found[study_uid, model] = True
                    continue
                any_row = db.execute("SELECT 1 FROM dicom_dispatches WHERE study_uid=? AND model=? LIMIT 1",
                                     (study_uid, model)).fetchone()
                found[study_uid, model] = False if any_row is not None else None
        return found

    def unprocessed_dispatches(self) -> list[tuple[str, str]]:
        """``(study_uid, model)`` of every claimed dispatch not yet processed, oldest first."""
        return [(r[0], r[1]) for r in self.database.rows(
            "SELECT study_uid, model FROM dicom_dispatches WHERE processed_at IS NULL"
            " ORDER BY dispatched_at, model")]

    def has_dispatches(self) -> bool:
        return bool(self.database.rows("SELECT 1 FROM dicom_dispatches LIMIT 1"))

    def dispatches(self, study_uid: str) -> list[Dispatch]:
        return [Dispatch(*r) for r in self.database.rows(
            f"SELECT {_DISPATCH} FROM dicom_dispatches WHERE study_uid=? ORDER BY model, group_uid", (study_uid,))]

    def latest_completion(self) -> float | None:
        """When the last group completed (epoch seconds), or None."""
        return self.database.rows("SELECT max(completed_at) FROM dicom_groups")[0][0]


def open_gateway_store(path: str | Path) -> GatewayStore:
    """A gateway store on its own connection to the database at ``path`` (a process of its own)."""
    return GatewayStore(Database(path))
