"""The server's store: imaging results, FHIR resources and the delivery outbox, beside the gateway's
and the vitals bridge's stores in the same database.

Tables (in the shared database, :class:`kernel.database.Database`; the server creates them):

``results``
    The files a study's processing produced (SR, SEG, SC, GSPS), with a summary.
``fhir_resources``
    FHIR resources upserted by type and id, so a resend updates instead of duplicating; each write
    of a resource is its next version (``version_id`` 1, 2, ...; FHIR R4 ``meta.versionId``), and
    ``updated_at`` its ``meta.lastUpdated``.  Both are set on every resource read (:func:`with_meta`),
    the vital-sign Observations built from a vitals message included (version: the message row's
    write time in microseconds, so a rewrite of the row is a new version).
``outbox``
    The delivery outbox (:mod:`serving.delivery.outbox`): one row per external side effect, idempotent
    by key.  :class:`SqliteOutbox` is its embedded backend; :class:`serving.delivery.outbox_db.PostgresOutboxDb`
    the multi-node one, with the same methods.

:class:`Store` opens (or is given) the one database and the three owner stores on it: its own
tables, :attr:`Store.gateway` (:class:`dicom_gateway.store.GatewayStore`) and :attr:`Store.vitals`
(:class:`iomt.store.VitalsStore`, which writes its batches' resources and outbox items here through
:class:`ServingTables`).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from dicom_gateway.store import GatewayStore, Instance, Study, StudyPatient
from iomt import vital_records
from iomt.observations import unix_us
from iomt.retention import ResourceAge
from iomt.store import VitalRow, VitalsStore
from iomt.vital_index import VitalIndex
from kernel.database import Database, Record, open_database
from kernel.migrations import Migration, migrate

try:  # orjson is several times faster on the vitals hot path; the output is the same JSON
    import orjson

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode("utf-8")
except ImportError:  # pragma: no cover - orjson is a declared dependency
    def _dumps(obj: Any) -> str:
        return json.dumps(obj)

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT,
    summary TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fhir_resources (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    subject TEXT,
    body TEXT NOT NULL,
    updated_at REAL NOT NULL,
    version_id INTEGER NOT NULL DEFAULT 1,  -- FHIR R4 meta.versionId: 1 on the first write, +1 on each rewrite
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX IF NOT EXISTS fhir_resources_subject ON fhir_resources(resource_type, subject, updated_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,      -- idempotency key: enqueueing the same key twice is a no-op
    kind TEXT NOT NULL,            -- dicom | mqtt | fhir
    destination TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,          -- pending | sent | dead | relayed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL,
    correlation_id TEXT            -- study UID or MQTT message id (kernel.correlation)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_attempt_at);
"""
#: Columns added after the first release: table -> (name, declaration).
ADDED_COLUMNS = {"outbox": (("correlation_id", "TEXT"),),
                 "fhir_resources": (("version_id", "INTEGER NOT NULL DEFAULT 1"),)}

#: The server's schema steps (:mod:`kernel.migrations`); 1: the schema when versions began.
MIGRATIONS = (Migration(1, "results, FHIR resources, outbox", SCHEMA),)
#: Reads into a resource's JSON body, per SQL dialect (SQLite JSON1; PostgreSQL 15 docs 9.16): the
#: ``reference`` of the References in a list element (a ``{element}`` in the SQL), and the first
#: category code of an Observation.
_REFERENCES_IN = {
    "sqlite": "SELECT 1 FROM json_each(body, '$.{element}') WHERE json_extract(value, '$.reference')",
    "postgresql": "SELECT 1 FROM jsonb_array_elements(COALESCE(body::jsonb -> '{element}', '[]'::jsonb)) AS e"
                  " WHERE e ->> 'reference'",
}
_CATEGORY_CODE = {"sqlite": "json_extract(body, '$.category[0].coding[0].code')",
                  "postgresql": "body::jsonb #>> '{{category,0,coding,0,code}}'"}
#: Outbox items claimed per pass (both backends).
CLAIM_BATCH = 100
#: Items per destination, kind and state; ``failed`` is pending after at least one failed attempt.
DEPTH_SQL = ("SELECT destination, kind, CASE WHEN status='pending' AND attempts>0 THEN 'failed' ELSE status END"
             " AS state, COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox GROUP BY destination, kind, 3"
             " ORDER BY destination, kind, 3")
#: Outbox columns in the order of :class:`OutboxItem`.
OUTBOX_COLUMNS = ("id, key, kind, destination, payload, status, attempts, next_attempt_at, last_error,"
                  " created_at, sent_at, correlation_id")
#: Insert or replace a resource (a replace keeps rowid order = write order, :mod:`iomt.retention`) as
#: the version after the stored one.
_RESOURCE_UPSERT = ("INSERT OR REPLACE INTO fhir_resources(resource_type, id, subject, body, updated_at, version_id)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, COALESCE((SELECT version_id FROM fhir_resources"
                    " WHERE resource_type=?1 AND id=?2), 0) + 1)")
#: Elements whose references ``Store.referencing`` follows back (FHIR R4 search parameters
#: DiagnosticReport ``result`` and Observation ``derived-from``).
REFERENCE_ELEMENTS = frozenset({"result", "derivedFrom"})
_OUTBOX_INSERT = ("INSERT OR IGNORE INTO outbox(key, kind, destination, payload, correlation_id, status,"
                  " next_attempt_at, created_at) VALUES (?,?,?,?,?, 'pending', ?, ?)")
#: The same on PostgreSQL, shared by several nodes: due and created by the database's clock, as every
#: outbox time there (serving.delivery.outbox_db, "One clock").
_OUTBOX_INSERT_DB_CLOCK = ("INSERT OR IGNORE INTO outbox(key, kind, destination, payload, correlation_id, status,"
                           " next_attempt_at, created_at) VALUES (?,?,?,?,?, 'pending', {now}, {now})")


@dataclass(frozen=True)
class Result(Record):
    """One produced result of a study (a row of ``results``; ``summary`` decoded)."""

    id: int
    study_uid: str
    kind: str
    path: str | None
    summary: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class OutboxItem(Record):
    """One delivery of the outbox (a row of ``outbox``, in SQLite or PostgreSQL)."""

    id: int
    key: str
    kind: str
    destination: str
    payload: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    sent_at: float | None
    correlation_id: str | None

    @classmethod
    def of(cls, row) -> OutboxItem:
        """From a row with the outbox's columns (a ``sqlite3.Row`` or a dict)."""
        return cls(*(row[name] for name in cls.__dataclass_fields__))


@dataclass(frozen=True)
class OutboxDepth(Record):
    """Items of one destination, kind and state (``failed``: pending after a failed attempt)."""

    destination: str
    kind: str
    state: str
    n: int
    oldest: float


class ServingTables:
    """Writes a vitals batch's FHIR resources and outbox items in its transaction
    (:class:`iomt.store.ResourceTables`).  Stateless: a bridge worker process builds its own."""

    def write_resources(self, db: sqlite3.Connection, resources: Sequence[dict[str, Any]], now: float) -> None:
        db.executemany(_RESOURCE_UPSERT, _resource_rows(resources, now))

    def write_outbox(self, db: sqlite3.Connection, rows: Sequence[tuple], now: float) -> None:
        """``now`` dates the items on SQLite; on PostgreSQL (a connection offering ``now_sql``) the
        database's clock does."""
        now_sql = getattr(db, "now_sql", None)
        if now_sql is not None:
            db.executemany(_OUTBOX_INSERT_DB_CLOCK.format(now=now_sql), [(*o[:4], o[4] if len(o) > 4 else None)
                                                                         for o in rows])
            return
        db.executemany(_OUTBOX_INSERT, [(*o[:4], o[4] if len(o) > 4 else None, now, now) for o in rows])


def _resource_rows(resources: Iterable[dict[str, Any]], now: float) -> list[tuple]:
    return [(r["resourceType"], r["id"], (r.get("subject") or {}).get("reference"), _dumps(r), now)
            for r in resources]


def last_updated(updated_at: float) -> str:
    """An epoch time as an R4 ``instant`` in UTC with milliseconds (``meta.lastUpdated``)."""
    return datetime.fromtimestamp(updated_at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def with_meta(resource: dict[str, Any], version_id: str, updated_at: float) -> dict[str, Any]:
    """``resource`` with R4 ``meta.versionId`` and ``meta.lastUpdated`` set (its other meta kept)."""
    resource["meta"] = {**(resource.get("meta") or {}), "versionId": version_id,
                        "lastUpdated": last_updated(updated_at)}
    return resource


def _stored(row: Sequence) -> dict[str, Any]:
    """A resource from a ``(body, updated_at, version_id)`` row of ``fhir_resources``."""
    return with_meta(json.loads(row[0]), str(row[2]), row[1])


def _vital_observations(rows: Iterable[VitalRow]) -> list[dict[str, Any]]:
    """The vital-sign Observations of ``rows`` (:func:`iomt.vital_records.observations`), each with
    the meta of the row it is built from: of two with one id, the later-written row's."""
    built: dict[str, tuple[float, dict[str, Any]]] = {}
    for row in rows:
        for resource in vital_records.observations([row]):
            kept = built.get(resource["id"])
            if kept is None or row.updated_at >= kept[0]:
                built[resource["id"]] = (row.updated_at, resource)
    return [with_meta(r, str(round(updated_at * 1e6)), updated_at) for updated_at, r in built.values()]


class SqliteOutbox:
    """The ``outbox`` table in the shared SQLite database: the embedded outbox backend."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def insert(self, key: str, kind: str, destination: str, payload_json: str,
               correlation_id: str | None = None) -> bool:
        """Enqueue one item; False when ``key`` is enqueued already (idempotent)."""
        now = time.time()
        with self.database.transaction() as db:
            cur = db.execute(_OUTBOX_INSERT, (key, kind, destination, payload_json, correlation_id, now, now))
        return cur.rowcount == 1

    def claim_due(self, now: float, kinds: Sequence[str] | None = None) -> list[OutboxItem]:
        """Pending items due by ``now``, of ``kinds`` when given.  One process owns a SQLite database,
        and one worker thread attempts: no lease needed."""
        only = f" AND kind IN ({','.join('?' * len(kinds))})" if kinds is not None else ""
        return [OutboxItem(*r) for r in self.database.rows(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE status='pending' AND next_attempt_at<=?{only}"
            " ORDER BY id LIMIT ?", (now, *(kinds or ()), CLAIM_BATCH))]

    def mark_sent(self, item_id: int) -> None:
        with self.database.transaction() as db:
            db.execute("UPDATE outbox SET status='sent', attempts=attempts+1, sent_at=?, last_error=NULL"
                       " WHERE id=?", (time.time(), item_id))

    def mark_failed(self, item_id: int, status: str, attempts: int, next_at: float, reason: str) -> None:
        with self.database.transaction() as db:
            db.execute("UPDATE outbox SET status=?, attempts=?, next_attempt_at=?, last_error=? WHERE id=?",
                       (status, attempts, next_at, reason, item_id))

    def items(self, status: str | None = None) -> list[OutboxItem]:
        """Every item (or those with ``status``), oldest first."""
        sql, params = f"SELECT {OUTBOX_COLUMNS} FROM outbox", ()
        if status:
            sql, params = sql + " WHERE status=?", (status,)
        return [OutboxItem(*r) for r in self.database.rows(sql + " ORDER BY id", params)]

    def item(self, key: str) -> OutboxItem | None:
        """The item enqueued under ``key``, or None."""
        rows = self.database.rows(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE key=?", (key,))
        return OutboxItem(*rows[0]) if rows else None

    def retry(self, keys: list[str] | None = None) -> int:
        """Dead items (all, or those with ``keys``) back to pending with a fresh attempt count."""
        sql = "UPDATE outbox SET status='pending', attempts=0, next_attempt_at=? WHERE status='dead'"
        params: tuple = (time.time(),)
        if keys:
            sql += f" AND key IN ({','.join('?' * len(keys))})"
            params += tuple(keys)
        with self.database.transaction() as db:
            return db.execute(sql, params).rowcount

    def counts(self) -> dict[tuple[str, str], int]:
        """Items per ``(kind, status)``."""
        return {(r[0], r[1]): r[2] for r in self.database.rows(
            "SELECT kind, status, COUNT(*) FROM outbox GROUP BY kind, status")}

    def status_counts(self) -> dict[str, int]:
        """Items per status."""
        return {r[0]: r[1] for r in self.database.rows("SELECT status, COUNT(*) FROM outbox GROUP BY status")}

    def depth(self) -> list[OutboxDepth]:
        """Items per destination, kind and state (see :data:`DEPTH_SQL`)."""
        return [OutboxDepth(*r) for r in self.database.rows(DEPTH_SQL)]

    def pending(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` pending items, oldest first (relayed into PostgreSQL).  None when this
        store is in PostgreSQL itself: its ``outbox`` table is then the shared one, nothing to relay."""
        if self.database.dialect == "postgresql":
            return []
        return [OutboxItem(*r) for r in self.database.rows(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE status='pending' ORDER BY id LIMIT ?", (limit,))]

    def mark_relayed(self, item_ids: Iterable[int]) -> None:
        with self.database.transaction() as db:
            db.executemany("UPDATE outbox SET status='relayed' WHERE id=?", [(i,) for i in item_ids])

    def close(self) -> None:
        """The database is closed by its owner."""


class Store:
    """The server's tables, and the gateway's and the bridge's stores, on one database: ``database``,
    or one opened at that path; ``vital_index``: the bridge's side of the patient index
    (:mod:`iomt.vital_index`)."""

    def __init__(self, database: Database | str | os.PathLike, vital_index: VitalIndex | None = None) -> None:
        self.database = database if isinstance(database, Database) else open_database(database)
        migrate(self.database, "serving", MIGRATIONS, legacy_columns=ADDED_COLUMNS)
        self.gateway = GatewayStore(self.database)
        self.vitals = VitalsStore(self.database, ServingTables(), vital_index)
        self.outbox = SqliteOutbox(self.database)

    @property
    def path(self) -> Path:
        return self.database.path

    def close(self) -> None:
        self.database.close()

    # -- results ----------------------------------------------------------------------------------
    def add_result(self, study_uid: str, kind: str, path: str | None, summary: dict) -> None:
        """Record a result object; one written again at the same path (a study processed again after
        a crash, or by the node that took over its dispatch) replaces its row instead of adding one."""
        with self.database.transaction() as db:
            if path is not None:
                db.execute("DELETE FROM results WHERE study_uid=? AND kind=? AND path=?", (study_uid, kind, path))
            db.execute("INSERT INTO results(study_uid, kind, path, summary, created_at) VALUES (?,?,?,?,?)",
                       (study_uid, kind, path, json.dumps(summary), time.time()))

    def results_of(self, study_uid: str) -> list[Result]:
        return [Result(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), r[5]) for r in self.database.rows(
            "SELECT id, study_uid, kind, path, summary, created_at FROM results WHERE study_uid=? ORDER BY id",
            (study_uid,))]

    def results_since(self, kind: str, since: float, limit: int) -> list[tuple[Result, str | None]]:
        """The newest ``limit`` results of ``kind`` written after ``since`` (epoch seconds), oldest
        first, each with the calling AE title of its study's first received instance (None for a
        study that no instance came in for, e.g. an upload): what live monitoring reads."""
        rows = self.database.rows(
            "SELECT r.id, r.study_uid, r.kind, r.path, r.summary, r.created_at, (SELECT i.calling_ae FROM instances i"
            " WHERE i.study_uid = r.study_uid LIMIT 1) FROM results r WHERE r.kind = ? AND r.created_at > ?"
            " ORDER BY r.id DESC LIMIT ?", (kind, float(since), int(limit)))
        return [(Result(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), r[5]), r[6]) for r in reversed(rows)]

    def result_path(self, study_uid: str, name: str) -> Path | None:
        """The file of a result recorded for ``study_uid`` whose file name is ``name`` (newest
        first), or None: only recorded results are ever served."""
        rows = self.database.rows("SELECT path FROM results WHERE study_uid=? AND path IS NOT NULL ORDER BY id DESC",
                                  (study_uid,))
        return next((Path(r[0]) for r in rows if Path(r[0]).name == name), None)

    # -- FHIR resources ---------------------------------------------------------------------------
    def put_resources(self, resources: list[dict[str, Any]]) -> None:
        """Insert or replace FHIR resources by (resourceType, id), all in one transaction."""
        rows = _resource_rows(resources, time.time())
        with self.database.transaction() as db:
            db.executemany(_RESOURCE_UPSERT, rows)

    def resources(self, resource_type: str, subject: str | None = None) -> list[dict[str, Any]]:
        """Stored resources of a type (of ``subject`` when given), oldest written first, with their
        meta; for Observation also those of the stored vitals messages (:mod:`iomt.vital_records`)."""
        sql = "SELECT body, updated_at, version_id FROM fhir_resources WHERE resource_type=?"
        params: tuple = (resource_type,)
        if subject is not None:
            sql, params = sql + " AND subject=?", params + (subject,)
        found = [_stored(r) for r in self.database.rows(sql + " ORDER BY updated_at", params)]
        if resource_type == "Observation":
            found += _vital_observations(reversed(vital_records.select(self.vitals, subject)))
        return found

    def resource(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The stored resource of that type and id (a vital-sign Observation built from its
        vitals message) with its meta, or None."""
        rows = self.database.rows("SELECT body, updated_at, version_id FROM fhir_resources"
                                  " WHERE resource_type=? AND id=?", (resource_type, resource_id))
        if rows:
            return _stored(rows[0])
        found = vital_records.find(self.vitals, resource_id) if resource_type == "Observation" else None
        if found is None:
            return None
        millis = unix_us(datetime.fromisoformat(found["effectiveDateTime"])) // 1000  # the id's millisecond
        rows = self.vitals.rows_measured_between(millis * 1000, millis * 1000 + 999)
        return next((r for r in _vital_observations(rows) if r["id"] == resource_id), None)

    def referencing(self, resource_type: str, element: str, references: Iterable[str]) -> list[dict[str, Any]]:
        """Stored resources of ``resource_type`` whose ``element`` (one of :data:`REFERENCE_ELEMENTS`,
        a list of References) holds one of ``references`` (``Type/id``), with their meta."""
        if element not in REFERENCE_ELEMENTS:
            raise ValueError(f"element must be one of {sorted(REFERENCE_ELEMENTS)}, {element!r} is given.")
        wanted = sorted(set(references))
        if not wanted:
            return []
        return [_stored(r) for r in self.database.rows(
            "SELECT body, updated_at, version_id FROM fhir_resources WHERE resource_type=? AND EXISTS"
            f" ({_REFERENCES_IN[self.database.dialect].format(element=element)}"
            f" IN ({','.join('?' * len(wanted))})) ORDER BY updated_at", (resource_type, *wanted))]

    def subject_written(self, reference: str) -> float | None:
        """When something about ``reference`` (``Patient/x``) was written: the earliest write of a
        stored resource about it, else that of its newest vitals message; None when nothing is."""
        rows = self.database.rows("SELECT MIN(updated_at) FROM fhir_resources WHERE subject=?", (reference,))
        if rows and rows[0][0] is not None:
            return rows[0][0]
        newest = vital_records.select(self.vitals, reference, limit=1)
        return newest[0].updated_at if newest else None

    def latest_resources(self, resource_type: str, subject: str, limit: int,
                         updated_after: float | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` resources of ``subject`` last written (after ``updated_after``), newest first."""
        sql, params = "SELECT body FROM fhir_resources WHERE resource_type=? AND subject=?", [resource_type, subject]
        if updated_after is not None:
            sql += " AND updated_at>?"
            params.append(updated_after)
        return [json.loads(r[0]) for r in self.database.rows(sql + " ORDER BY updated_at DESC LIMIT ?",
                                                             (*params, limit))]

    def resource_subjects(self, resource_type: str, updated_after: float) -> set[str]:
        """Subjects of the resources of that type written after ``updated_after``."""
        return {r[0] for r in self.database.rows(
            "SELECT DISTINCT subject FROM fhir_resources WHERE resource_type=? AND updated_at>?"
            " AND subject IS NOT NULL", (resource_type, updated_after))}

    def has_subject(self, reference: str) -> bool:
        """Whether any resource or vitals message is about ``reference`` (e.g. ``Patient/x``)."""
        return bool(self.database.rows("SELECT 1 FROM fhir_resources WHERE subject=? LIMIT 1", (reference,))) \
            or self.vitals.has_subject(reference)

    def resource_ages(self, after_rowid: int, cutoff: float, limit: int) -> list[ResourceAge]:
        """:class:`iomt.retention.AgingResources`: resources after ``after_rowid`` in insertion order,
        an Observation written before ``cutoff`` with its first category code."""
        return [ResourceAge(*r) for r in self.database.rows(
            "SELECT rowid, updated_at, resource_type,"
            " CASE WHEN resource_type='Observation' AND updated_at < ?"
            f" THEN {_CATEGORY_CODE[self.database.dialect].format()} END"
            " FROM fhir_resources WHERE rowid > ? ORDER BY rowid LIMIT ?", (cutoff, after_rowid, limit))]

    def delete_resources(self, rowids: list[int], cutoff: float) -> None:
        """Delete the resources of ``rowids`` still last written before ``cutoff``."""
        with self.database.transaction(durable=False) as db:
            db.executemany("DELETE FROM fhir_resources WHERE rowid=? AND updated_at<?",
                           [(rowid, cutoff) for rowid in rowids])

    # -- the gateway's, for the imaging pipeline and the HTTP ingress that hold this store -----------
    def add_instance(self, row: dict[str, Any]) -> bool:
        return self.gateway.add_instance(row)

    def set_study_status(self, study_uid: str, status: str, route: str | None = None,
                         detail: str | None = None) -> None:
        self.gateway.set_study_status(study_uid, status, route, detail)

    def study(self, study_uid: str) -> Study | None:
        return self.gateway.study(study_uid)

    def studies_with_status(self, *statuses: str) -> list[str]:
        return self.gateway.studies_with_status(*statuses)

    def instances_of(self, study_uid: str) -> list[Instance]:
        return self.gateway.instances_of(study_uid)

    def study_patient(self, study_uid: str) -> StudyPatient | None:
        return self.gateway.study_patient(study_uid)
