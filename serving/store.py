"""The local store: one SQLite database under ``state_dir`` (WAL, synchronous=FULL; the vitals
bridge's batches commit without the fsync and are made durable by :meth:`Store.sync_log`).

It records received instances and study state, produced results, FHIR resources (upserted by
type and id, so a resend updates instead of duplicating), dead letters, and the delivery outbox.
One connection is shared by the server's threads behind a lock; SQLite serialises writers anyway.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from iomt import vital_records
from iomt.vital_index import VitalIndex
from serving.state_permissions import private_database

try:  # orjson is several times faster on the vitals hot path; the output is the same JSON
    import orjson

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode("utf-8")
except ImportError:  # pragma: no cover - orjson is a declared dependency
    def _dumps(obj: Any) -> str:
        return json.dumps(obj)

log = logging.getLogger("medgate.store")


class StudyPatient(NamedTuple):
    """Whose study it is: Patient ID (0010,0020) and Issuer of Patient ID (0010,0021), '' when absent."""

    patient_id: str
    issuer: str


#: The database's file under ``state_dir`` (WAL beside it: ``-wal``, ``-shm``).
DATABASE_FILE = "medgate.sqlite3"


def database_path(state_dir: str | os.PathLike) -> Path:
    """The store's database file under ``state_dir``."""
    return Path(state_dir) / DATABASE_FILE

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
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX IF NOT EXISTS fhir_resources_subject ON fhir_resources(resource_type, subject, updated_at);
CREATE TABLE IF NOT EXISTS vital_signs (   -- one row per vitals message: iomt.vital_records
    effective_us INTEGER NOT NULL,  -- measurement time, Unix microseconds
    subject TEXT NOT NULL,          -- Patient reference
    codes TEXT NOT NULL,            -- LOINC codes of the message, comma-separated
    device TEXT,
    effective TEXT,                 -- ISO 8601 as sent; NULL: UTC, effective_us
    vitals TEXT NOT NULL,           -- JSON [[loinc, value, out_of_range], ...]
    updated_at REAL NOT NULL,
    identifier_system INTEGER,      -- the patient identifier's system: vital_identifier_systems.code
    identifier_value TEXT,          -- its value; NULL: the id of subject (both NULL: none kept)
    PRIMARY KEY (effective_us, subject, codes)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vital_identifier_systems (  -- identifier systems of vital_signs rows
    code INTEGER PRIMARY KEY,
    system TEXT NOT NULL UNIQUE    -- URI, e.g. iomt.identifiers.citizen_id
);
CREATE TABLE IF NOT EXISTS vital_subjects (  -- vital_signs by patient: iomt.vital_index
    subject TEXT NOT NULL,
    effective_us INTEGER NOT NULL,
    codes TEXT NOT NULL,
    PRIMARY KEY (subject, effective_us, codes)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vital_unindexed (  -- keys of vital_signs written lately, in order
    subject TEXT NOT NULL,
    effective_us INTEGER NOT NULL,
    codes TEXT NOT NULL,
    at REAL NOT NULL               -- epoch seconds written
);
CREATE TABLE IF NOT EXISTS bed_census (
    ward TEXT NOT NULL,
    bed TEXT NOT NULL,
    site TEXT,
    patient_ref TEXT NOT NULL,     -- who the latest vitals from this bed were for
    device TEXT,
    seen_at TEXT NOT NULL,         -- ISO 8601 time of a message from it (30 s at most before the latest)
    updated_at REAL NOT NULL,
    PRIMARY KEY (ward, bed)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,      -- idempotency key: enqueueing the same key twice is a no-op
    kind TEXT NOT NULL,            -- dicom | mqtt | fhir
    destination TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,          -- pending | sent | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL,
    correlation_id TEXT            -- study UID or MQTT message id (kernel.correlation)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_attempt_at);
CREATE TABLE IF NOT EXISTS device_associations (
    device TEXT PRIMARY KEY,       -- device identifier as sent in payloads and topics
    patient_id TEXT NOT NULL,
    patient_system TEXT,
    spo2_scale INTEGER NOT NULL DEFAULT 1,
    site TEXT, ward TEXT, bed TEXT,
    since TEXT NOT NULL,           -- ISO 8601 time of the admission/transfer message
    updated_at REAL NOT NULL
);
"""

CACHE_KIB = 64 * 1024  # page cache per connection

#: Columns added to dead_letters after the first release: (name, declaration).
DEAD_LETTER_COLUMNS = (("device", "TEXT"), ("replayed_at", "REAL"), ("payload_sha256", "TEXT"),
                       ("payload_bytes", "INTEGER"))  # of the whole payload (iomt.dead_letters)
#: Columns added to outbox after the first release.
OUTBOX_COLUMNS = (("correlation_id", "TEXT"),)
#: Columns added to vital_signs after the first release: rows stored before keep NULL (their
#: Observations carry no patient identifier, :mod:`iomt.vital_records`).
VITAL_SIGNS_COLUMNS = (("identifier_system", "INTEGER"), ("identifier_value", "TEXT"))
#: vital_signs columns in the order of a row of iomt.vital_records.record, then updated_at.
_VITAL_SIGNS_INSERT = ("INSERT OR REPLACE INTO vital_signs(effective_us, subject, codes, device,"
                       " effective, vitals, identifier_system, identifier_value, updated_at)"
                       " VALUES (?,?,?,?,?,?,?,?,?)")


class Store:
    """Thread-safe access to the medgate SQLite database at ``path``; ``vital_index`` writes
    the patient index of its vitals messages (:mod:`iomt.vital_index`)."""

    def __init__(self, path: str | Path, vital_index: VitalIndex | None = None) -> None:
        self.path = private_database(path)  # 0600 (its -wal and -shm too), folder 0700 if new
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # Vitals write ~3 resources a message: a 64 MiB page cache instead of 2 MiB keeps the
        # indexes' pages in memory as the table grows.
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.executescript(SCHEMA)
        for table, columns in (("dead_letters", DEAD_LETTER_COLUMNS), ("outbox", OUTBOX_COLUMNS),
                               ("vital_signs", VITAL_SIGNS_COLUMNS)):
            present = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS dead_letters_parked"
                         " ON dead_letters(device, replayed_at)")
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type='index'"
                            " AND name='vital_signs_subject'").fetchone():
            with self.transaction() as db:  # a store of 2026-12-01: its index becomes the table
                db.execute("INSERT OR IGNORE INTO vital_subjects"
                           " SELECT subject, effective_us, codes FROM vital_signs")
                db.execute("DROP INDEX IF EXISTS vital_signs_subject")
        self._vital_index = vital_index or VitalIndex()  # the patient index of vital_signs
        self._system_codes: dict[str | None, int | None] = {None: None}  # committed codes only

    def close(self) -> None:
        with self._lock:
            if self._vital_index.waiting:
                try:
                    with self.transaction() as db:
                        self._vital_index.flush(db)
                except sqlite3.Error:  # the log keeps them: read there, indexed by a writer
                    log.exception("indexing the last vitals messages by patient failed")
            self._db.close()

    @property
    def writer_lock(self) -> threading.RLock:
        """Held by every transaction of this connection (a checkpointer may hold the writers)."""
        return self._lock

    def defer_checkpoints(self) -> None:
        """Commits on this connection no longer run WAL checkpoints; a
        :class:`kernel.wal_checkpoint.WalCheckpointer` must run them instead."""
        with self._lock:
            self._db.execute("PRAGMA wal_autocheckpoint=0")

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction.  ``durable=False`` commits without waiting for the disk
        (``synchronous=NORMAL``): the commit survives a crash of the process, not of the machine,
        until the next durable commit flushes it; only for records that can be rebuilt from a file
        that is itself durable (the gateway's spool)."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def sync_log(self) -> None:
        """Wait until every transaction committed so far, by any connection, is on the disk.

        A commit in WAL mode appends its pages to the write-ahead log; ``synchronous=FULL``
        flushes the log (``fdatasync``) inside the commit, while the writer still holds the
        database's write lock. A writer that commits with ``durable=False`` and then calls this
        gets the same guarantee, flushing the log after the lock is released: other writers
        commit meanwhile, and one flush covers every commit appended before it. The log is only
        ever started again from its beginning after a checkpoint has copied it into the database
        file and fsynced that, so a commit is either in the log this flushes or already in the
        database."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:  # no log: nothing committed since the last connection closed
            return
        try:
            os.fdatasync(fd)  # as SQLite's own commit: the data and the size, not the times
        finally:
            os.close(fd)

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- imaging -------------------------------------------------------------------------------
    def add_instance(self, row: dict[str, Any]) -> bool:
        """Record a received instance; returns False when it was already known (a duplicate)."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO instances VALUES (:sop_instance_uid, :study_uid, :series_uid,"
                " :sop_class_uid, :modality, :path, :calling_ae, :received_at)",
                {**row, "received_at": now},
            )
            db.execute(
                "INSERT OR IGNORE INTO studies(study_uid, status, received_at, updated_at)"
                " VALUES (?, 'receiving', ?, ?)",
                (row["study_uid"], now, now),
            )
            return cur.rowcount == 1

    def set_study_status(self, study_uid: str, status: str, route: str | None = None,
                         detail: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE studies SET status=?, route=COALESCE(?, route), detail=?, updated_at=?"
                " WHERE study_uid=?",
                (status, route, detail, time.time(), study_uid),
            )

    def study(self, study_uid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        return rows[0] if rows else None

    def studies_with_status(self, *statuses: str) -> list[str]:
        marks = ",".join("?" * len(statuses))
        rows = self.query(
            f"SELECT study_uid FROM studies WHERE status IN ({marks}) ORDER BY received_at", statuses
        )
        return [r["study_uid"] for r in rows]

    def instances_of(self, study_uid: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM instances WHERE study_uid=? ORDER BY received_at", (study_uid,))

    def study_patient(self, study_uid: str) -> StudyPatient | None:
        """Patient ID (0010,0020) and Issuer of Patient ID (0010,0021) of the study's first stored
        instance, from its file's header; None when no instance of the study is stored (or its file
        is gone).  The patient a received study belongs to: nothing for another patient may be
        filed under it."""
        from pydicom import dcmread

        rows = self.query("SELECT path FROM instances WHERE study_uid=? ORDER BY received_at LIMIT 1",
                          (study_uid,))
        if not rows:
            return None
        try:
            ds = dcmread(rows[0]["path"], stop_before_pixels=True, specific_tags=["PatientID", "IssuerOfPatientID"])
        except (OSError, ValueError) as exc:
            log.warning("study %s: the header of %s cannot be read: %s", study_uid, rows[0]["path"], exc)
            return None
        return StudyPatient(str(ds.get("PatientID", "") or "").strip(),
                            str(ds.get("IssuerOfPatientID", "") or "").strip())

    def add_result(self, study_uid: str, kind: str, path: str | None, summary: dict) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO results(study_uid, kind, path, summary, created_at) VALUES (?,?,?,?,?)",
                (study_uid, kind, path, json.dumps(summary), time.time()),
            )

    def results_of(self, study_uid: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM results WHERE study_uid=? ORDER BY id", (study_uid,))
        return [{**dict(r), "summary": json.loads(r["summary"] or "{}")} for r in rows]

    def result_path(self, study_uid: str, name: str) -> Path | None:
        """The file of a result recorded for ``study_uid`` whose file name is ``name`` (newest
        first), or None: only recorded results are ever served."""
        rows = self.query("SELECT path FROM results WHERE study_uid=? AND path IS NOT NULL ORDER BY id DESC",
                          (study_uid,))
        return next((Path(r["path"]) for r in rows if Path(r["path"]).name == name), None)

    # -- FHIR and dead letters -----------------------------------------------------------------
    def put_resources(self, resources: list[dict[str, Any]]) -> None:
        """Insert or replace FHIR resources by (resourceType, id), all in one transaction."""
        now = time.time()
        rows = [(r["resourceType"], r["id"], (r.get("subject") or {}).get("reference"),
                 _dumps(r), now) for r in resources]
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO fhir_resources VALUES (?,?,?,?,?)", rows)

    def resources(self, resource_type: str, subject: str | None = None) -> list[dict[str, Any]]:
        """Stored resources of a type (of ``subject`` when given), oldest written first; for
        Observation also those of the stored vitals messages (:mod:`iomt.vital_records`)."""
        sql = "SELECT body FROM fhir_resources WHERE resource_type=?"
        params: tuple = (resource_type,)
        if subject is not None:
            sql += " AND subject=?"
            params += (subject,)
        found = [json.loads(r["body"]) for r in self.query(sql + " ORDER BY updated_at", params)]
        if resource_type == "Observation":
            found += vital_records.observations(reversed(vital_records.select(self, subject)))
        return found

    def add_dead_letter(self, source: str, reason: str, payload: bytes | None,
                        device: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO dead_letters(source, reason, payload, created_at, device)"
                " VALUES (?,?,?,?,?)",
                (source, reason, payload, time.time(), device),
            )

    def commit_batch(self, resources: list[dict[str, Any]],
                     dead_letters: list[tuple[str, str, bytes | None, str | None]],
                     outbox_rows: list[tuple] = (), beds: list[tuple] = (),
                     vitals: list[tuple] = (), durable: bool = True) -> None:
        """Resources, dead letters (:class:`iomt.dead_letters.DeadLetter`), outbox items
        ``(key, kind, destination, payload_json[, correlation_id])``, bed census rows
        (:meth:`record_beds`) and vitals messages (:func:`iomt.vital_records.record`) of one
        batch, in one transaction; ``durable=False``: see :meth:`sync_log`."""
        now = time.time()
        rows = [(r["resourceType"], r["id"], (r.get("subject") or {}).get("reference"),
                 _dumps(r), now) for r in resources]
        try:
            with self.transaction(durable) as db:
                codes = self._write_batch(db, now, rows, dead_letters, outbox_rows, beds, vitals)
            self._system_codes = codes  # committed: a rolled-back code may name another system
        except BaseException:
            with self._lock:
                if self._db.in_transaction:  # COMMIT failed (the body's errors roll back)
                    self._db.execute("ROLLBACK")
                self._vital_index.discard()
            raise

    def _write_batch(self, db, now: float, rows: list[tuple], dead_letters, outbox_rows, beds,
                     vitals) -> dict[str | None, int | None]:
        """Writes the batch; returns the identifier system codes, with those it assigned."""
        codes = self._system_codes
        if rows:
            db.executemany("INSERT OR REPLACE INTO fhir_resources VALUES (?,?,?,?,?)", rows)
        if vitals:
            try:
                params = [(*v[:6], codes[v[6]], v[7], now) for v in vitals]
            except KeyError:  # a system first seen by this connection
                codes = self._identifier_system_codes(db, {v[6] for v in vitals})
                params = [(*v[:6], codes[v[6]], v[7], now) for v in vitals]
            db.executemany(_VITAL_SIGNS_INSERT, params)
        self._vital_index.write(db, vitals)
        if dead_letters:
            db.executemany(
                "INSERT INTO dead_letters(source, reason, payload, device, payload_sha256,"
                " payload_bytes, created_at) VALUES (?,?,?,?,?,?,?)",
                [(*d, *(None,) * (6 - len(d)), now) for d in dead_letters])
        if outbox_rows:
            db.executemany(
                "INSERT OR IGNORE INTO outbox(key, kind, destination, payload, correlation_id, status,"
                " next_attempt_at, created_at) VALUES (?,?,?,?,?, 'pending', ?, ?)",
                [(*o[:4], o[4] if len(o) > 4 else None, now, now) for o in outbox_rows])
        if beds:
            db.executemany("INSERT OR REPLACE INTO bed_census VALUES (?,?,?,?,?,?,?)",
                           [(*b, now) for b in beds])
        return codes

    def _identifier_system_codes(self, db, systems: set[str | None]) -> dict[str | None, int | None]:
        """The codes of ``systems`` in ``vital_identifier_systems`` (assigned in ``db``'s
        transaction to those it lacks) with those known before: codes are never reassigned, so
        each connection keeps the ones it has seen committed."""
        db.executemany("INSERT OR IGNORE INTO vital_identifier_systems(system) VALUES (?)",
                       [(s,) for s in systems if s is not None and s not in self._system_codes])
        found = dict(db.execute("SELECT system, code FROM vital_identifier_systems").fetchall())
        return {None: None, **found}

    def record_beds(self, beds: list[tuple[str, str, str | None, str, str | None, str]]) -> None:
        """Upsert the bed census: ``(ward, bed, site, patient_ref, device, seen_at_iso)`` rows."""
        if not beds:
            return
        now = time.time()
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO bed_census VALUES (?,?,?,?,?,?,?)",
                           [(*b, now) for b in beds])

    def parked(self, device: str) -> list[dict[str, Any]]:
        """Dead letters parked for ``device`` (reason "unknown device") not yet replayed."""
        return [dict(r) for r in self.query(
            "SELECT * FROM dead_letters WHERE device=? AND replayed_at IS NULL ORDER BY id",
            (device,))]

    def mark_replayed(self, ids: list[int]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE dead_letters SET replayed_at=? WHERE id=?",
                           [(time.time(), i) for i in ids])

    def dead_letters(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM dead_letters ORDER BY id")]
