"""The vitals bridge's store: vitals messages, their patient index, the bed census, device
associations and dead letters.

Tables (in the shared database, :class:`kernel.database.Database`; the bridge creates them):

``vital_signs``
    One row per vitals message (:func:`iomt.vital_records.record`), keyed by measurement time.
``vital_identifier_systems``
    The patient identifier systems of ``vital_signs`` rows, by a small code.
``vital_subjects``, ``vital_unindexed``
    The patient index of ``vital_signs`` and the log of keys not in it yet (:mod:`iomt.vital_index`).
``bed_census``
    Who the latest vitals from each bed were for.
``device_associations``
    Which patient each device is attached to (:class:`iomt.identity.DeviceRegistry`).
``dead_letters``
    Messages that could not be used, and those parked until an ADT message names their device.
``news2_context``
    Per patient, what a node taking over a partition needs beside the vitals rows to go on scoring
    NEWS2 and de-duplicating alerts (:mod:`iomt.rebuild`): the latest oxygen and consciousness
    values, and the last alert.
``partition_fences``
    The lease epoch of the node whose bridge writes each partition's batches (:mod:`iomt.partitions`):
    a batch of a node that lost the lease while paused is refused (:class:`FencedOut`).
``hl7_messages``, ``hl7_encounters``, ``bed_devices``
    HL7 v2 messages acknowledged with AA (by MSH-10, so a resent one is not applied twice), the
    visits of ADT messages with their beds, and the monitors seen at each bed (:mod:`iomt.hl7`).

A batch of the bridge also writes FHIR resources and outbox items, which are not the bridge's
tables: the :class:`ResourceTables` it is given (the server's store) writes them inside the
batch's transaction, so a batch is stored whole or not at all.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Protocol, Sequence

from kernel.database import Database, Record, columns_of, open_database
from kernel.migrations import Migration, migrate
from iomt.vital_index import VitalIndex

log = logging.getLogger("medgate.store")

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS hl7_messages (  -- HL7 v2 messages acknowledged AA: iomt.hl7.intake
    sending_facility TEXT NOT NULL,  -- MSH-4 (HD.1)
    sending_application TEXT NOT NULL,  -- MSH-3 (HD.1)
    control_id TEXT NOT NULL,      -- MSH-10 Message Control ID
    message_type TEXT NOT NULL,    -- MSH-9, e.g. ADT^A01
    sha256 TEXT NOT NULL,          -- of the message as received (FIPS 180-4)
    received_at REAL NOT NULL,
    PRIMARY KEY (sending_facility, sending_application, control_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hl7_encounters (  -- ADT visits: iomt.hl7.adt
    sending_facility TEXT NOT NULL,
    visit_number TEXT NOT NULL,    -- PV1-19 (CX.1); without one, the patient's key
    patient_id TEXT NOT NULL,
    patient_system TEXT NOT NULL,
    status TEXT NOT NULL,          -- FHIR R4 Encounter.status
    patient_class TEXT,            -- PV1-2 (HL7 table 0004)
    site TEXT, ward TEXT, room TEXT, bed TEXT,  -- PV1-3 PL.4, PL.1, PL.2, PL.3
    since TEXT NOT NULL,           -- ISO 8601 time of the event that set them
    updated_at REAL NOT NULL,
    PRIMARY KEY (sending_facility, visit_number)
);
CREATE TABLE IF NOT EXISTS bed_devices (  -- monitors seen at a bed (HL7 PCD-01 PV1-3 + OBX-18)
    ward TEXT NOT NULL,
    bed TEXT NOT NULL,
    device TEXT NOT NULL,
    site TEXT,
    seen_at TEXT NOT NULL,         -- ISO 8601 time of the latest observation
    PRIMARY KEY (ward, bed, device)
);
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
#: Columns added after the first release: table -> (name, declaration).  ``vital_signs`` rows
#: stored before keep NULL (their Observations carry no patient identifier).
ADDED_COLUMNS = {
    "dead_letters": (("device", "TEXT"), ("replayed_at", "REAL"), ("payload_sha256", "TEXT"),
                     ("payload_bytes", "INTEGER")),  # of the whole payload (iomt.dead_letters)
    "vital_signs": (("identifier_system", "INTEGER"), ("identifier_value", "TEXT")),
}
#: The bridge's schema steps (:mod:`kernel.migrations`); 1: the schema when versions began (with
#: ``ADDED_COLUMNS``, which the indexes of 2 read).
MIGRATIONS = (
    Migration(1, "vitals, patient index, bed census, dead letters, HL7 receipts and visits", SCHEMA),
    Migration(2, "dead letter and HL7 indexes",
              "CREATE INDEX IF NOT EXISTS dead_letters_parked ON dead_letters(device, replayed_at);"
              "CREATE INDEX IF NOT EXISTS hl7_messages_received ON hl7_messages(received_at);"
              "CREATE INDEX IF NOT EXISTS hl7_encounters_bed ON hl7_encounters(ward, bed, status);"),
    Migration(3, "NEWS2 context of each patient, for the node that takes a partition over", """
CREATE TABLE IF NOT EXISTS news2_context (  -- per patient: iomt.rebuild
    subject TEXT PRIMARY KEY,      -- Patient reference
    on_oxygen INTEGER,             -- latest supplemental oxygen (1/0), NULL: never sent
    on_oxygen_us INTEGER,          -- its measurement time, Unix microseconds
    consciousness TEXT,            -- latest ACVPU level (iomt.news2.ACVPU), NULL: never sent
    consciousness_us INTEGER,
    alerted_us INTEGER,            -- the last NEWS2 alert's time (iomt.alerts), NULL: none
    alerted_band TEXT,             -- its band
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partition_fences (  -- who may write a partition's batches: iomt.partitions
    name TEXT PRIMARY KEY,         -- iomt.topics.Partition name, e.g. icu or h1/icu
    epoch INTEGER NOT NULL,        -- the kernel.cluster lease epoch of the node whose bridge writes
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""),
)
#: What a read of ``vital_signs`` gives: the columns of :func:`iomt.vital_records.record`'s row
#: (the identifier's system as its URI), then ``updated_at``.
VITAL_COLUMNS = ("effective_us, subject, codes, device, effective, vitals, (SELECT system FROM"
                 " vital_identifier_systems WHERE code=identifier_system) AS identifier_system,"
                 " identifier_value, updated_at")
_KEY = "effective_us, subject, codes"
_VITAL_SIGNS_INSERT = ("INSERT OR REPLACE INTO vital_signs(effective_us, subject, codes, device,"
                       " effective, vitals, identifier_system, identifier_value, updated_at)"
                       " VALUES (?,?,?,?,?,?,?,?,?)")
_IN_CHUNK = 500  # values of one ``IN (...)`` list (SQLite allows 32,766 parameters a statement)
#: The vitals tables and their keys, the patient index first (retention deletes in this order).
_VITAL_TABLES = (("vital_subjects", "subject, effective_us, codes"), ("vital_signs", _KEY))


class VitalRow(NamedTuple):
    """One stored vitals message: the row of :func:`iomt.vital_records.record` (the identifier's
    system as its URI), then ``updated_at``.  A tuple, so the readers' positional access stays
    as cheap as it is on the rows the bridge writes."""

    effective_us: int
    subject: str
    codes: str
    device: str | None
    effective: str | None
    vitals: str
    identifier_system: str | None
    identifier_value: str | None
    updated_at: float


@dataclass(frozen=True)
class StoredDeadLetter(Record):
    """One row of ``dead_letters`` (:class:`iomt.dead_letters.DeadLetter` as stored)."""

    id: int
    source: str
    reason: str
    payload: bytes | None
    created_at: float
    device: str | None
    replayed_at: float | None
    payload_sha256: str | None
    payload_bytes: int | None


class FencedOut(RuntimeError):
    """A batch of a partition whose lease another node has taken since (a higher epoch)."""


@dataclass(frozen=True)
class News2Context(Record):
    """One row of ``news2_context``: what the vitals rows do not keep of a patient's NEWS2 state."""

    subject: str
    on_oxygen: int | None
    on_oxygen_us: int | None
    consciousness: str | None
    consciousness_us: int | None
    alerted_us: int | None
    alerted_band: str | None
    updated_at: float = 0.0


@dataclass(frozen=True)
class BedRow(Record):
    """One row of ``bed_census``: who the latest vitals from a bed were for."""

    ward: str
    bed: str
    site: str | None
    patient_ref: str
    device: str | None
    seen_at: str
    updated_at: float


@dataclass(frozen=True)
class StoredAssociation(Record):
    """One row of ``device_associations`` (``patient_id`` is ``DISCHARGED`` after a discharge)."""

    device: str
    patient_id: str
    patient_system: str | None
    spo2_scale: int
    site: str | None
    ward: str | None
    bed: str | None
    since: str
    updated_at: float


@dataclass(frozen=True)
class Hl7Receipt(Record):
    """One row of ``hl7_messages``: an HL7 v2 message applied and acknowledged with AA."""

    sending_facility: str
    sending_application: str
    control_id: str
    message_type: str
    sha256: str
    received_at: float


@dataclass(frozen=True)
class Hl7Encounter(Record):
    """One row of ``hl7_encounters``: a visit of an ADT feed and the bed it is in."""

    sending_facility: str
    visit_number: str
    patient_id: str
    patient_system: str
    status: str
    patient_class: str | None
    site: str | None
    ward: str | None
    room: str | None
    bed: str | None
    since: str
    updated_at: float = 0.0


@dataclass(frozen=True)
class BedDevice(Record):
    """One row of ``bed_devices``: a monitor seen at a bed."""

    ward: str
    bed: str
    device: str
    site: str | None
    seen_at: str


@dataclass(frozen=True)
class Hl7Rows(Record):
    """The HL7 rows of one message, committed in the transaction of what it produced."""

    receipts: tuple[Hl7Receipt, ...] = ()
    encounters: tuple[Hl7Encounter, ...] = ()
    bed_devices: tuple[BedDevice, ...] = ()


@dataclass(frozen=True)
class DeadLetterCounts(Record):
    """Dead letters in all, and those parked for an unknown device not yet replayed."""

    total: int
    parked: int


class ResourceTables(Protocol):
    """Writes a batch's FHIR resources and outbox items inside the batch's transaction (``db``);
    the server's store provides it.  Stateless, so a worker process builds its own by the class."""

    def write_resources(self, db: sqlite3.Connection, resources: Sequence[dict[str, Any]], now: float) -> None:
        """Insert or replace FHIR resources by (resourceType, id)."""

    def write_outbox(self, db: sqlite3.Connection, rows: Sequence[tuple], now: float) -> None:
        """Outbox items ``(key, kind, destination, payload_json[, correlation_id])``, idempotent by key."""


_ENCOUNTER = columns_of(Hl7Encounter)


class _IndexLog:
    """The patient index's tables inside one transaction (:class:`iomt.vital_index.VitalIndex`)."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def log(self, entries: list[tuple[str, int, str, float]]) -> None:
        self.db.executemany("INSERT INTO vital_unindexed VALUES (?,?,?,?)", entries)

    def index(self, entries: list[tuple[str, int, str]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO vital_subjects VALUES (?,?,?)", entries)

    def settle(self, limit: int, before: float) -> int:
        """Index and delete up to ``limit`` of the oldest log entries logged before ``before``."""
        last = self.db.execute("SELECT max(rowid) FROM (SELECT rowid, at FROM vital_unindexed"
                               " ORDER BY rowid LIMIT ?) AS oldest WHERE at<?", (limit, before)).fetchone()[0]
        if last is None:
            return 0
        self.db.execute("INSERT OR IGNORE INTO vital_subjects SELECT subject, effective_us, codes"
                        " FROM vital_unindexed WHERE rowid<=?", (last,))
        return self.db.execute("DELETE FROM vital_unindexed WHERE rowid<=?", (last,)).rowcount


def _keys(table: str, since: bool, limit: bool) -> str:
    sql = f"SELECT effective_us, subject, codes FROM {table} WHERE subject=:subject"
    if since:
        sql += " AND effective_us>:since"
    if limit:
        sql += " ORDER BY effective_us DESC LIMIT :limit"
    return f"SELECT * FROM ({sql}) AS keys"


class VitalsStore:
    """The bridge's tables in ``database`` (created when missing); ``tables`` writes a batch's
    resources and outbox items; ``vital_index`` is this connection's side of the patient index."""

    def __init__(self, database: Database, tables: ResourceTables,
                 vital_index: VitalIndex | None = None) -> None:
        if not isinstance(database, Database):
            raise TypeError(f"database must be a kernel.database.Database, {type(database).__name__} is given.")
        self.database, self.tables = database, tables
        migrate(database, "vitals", MIGRATIONS, legacy_columns=ADDED_COLUMNS)
        if not database.read_only and database.has_index("vital_signs_subject"):
            with database.transaction() as db:  # a store of 2026-12-01: its index becomes the table
                db.execute("INSERT OR IGNORE INTO vital_subjects SELECT subject, effective_us, codes FROM vital_signs")
                db.execute("DROP INDEX IF EXISTS vital_signs_subject")
        self._vital_index = vital_index or VitalIndex()
        self._system_codes: dict[str | None, int | None] = {None: None}  # committed codes only
        database.on_close(self._flush_index)

    @classmethod
    def open(cls, path: str | Path, tables: ResourceTables) -> VitalsStore:
        """A vitals store on a connection of its own to the database at ``path`` (a worker process)."""
        return cls(open_database(path), tables)

    # -- the database it lives in ------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.database.path

    @property
    def writer_lock(self) -> threading.RLock:
        return self.database.writer_lock

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """The errors the database raises (:attr:`kernel.database.Database.errors`)."""
        return self.database.errors

    def defer_checkpoints(self) -> None:
        self.database.defer_checkpoints()

    def sync_log(self) -> None:
        self.database.sync_log()

    def close(self) -> None:
        self.database.close()

    def _flush_index(self) -> None:
        if self._vital_index.waiting:
            try:
                with self.database.transaction() as db:
                    self._vital_index.flush(_IndexLog(db))
            except self.database.errors:  # the log keeps them: read there, indexed by a writer
                log.exception("indexing the last vitals messages by patient failed")

    # -- a batch -----------------------------------------------------------------------------------
    def commit_batch(self, resources: list[dict[str, Any]],
                     dead_letters: list[tuple[str, str, bytes | None, str | None]],
                     outbox_rows: Sequence[tuple] = (), beds: Sequence[tuple] = (),
                     vitals: Sequence[tuple] = (), durable: bool = True, hl7: Hl7Rows | None = None,
                     contexts: Sequence[tuple] = (), replayed: Sequence[int] = (),
                     fence: tuple[str, int] | None = None) -> None:
        """Resources, dead letters (:class:`iomt.dead_letters.DeadLetter`), outbox items
        ``(key, kind, destination, payload_json[, correlation_id])``, bed census rows
        (:meth:`record_beds`), vitals messages (:func:`iomt.vital_records.record`), the HL7
        rows, the patients' NEWS2 context (:class:`News2Context` without ``updated_at``) and the
        ids of the dead letters replayed by one batch, in one transaction; ``durable=False``: see
        :meth:`kernel.database.Database.sync_log`.

        ``fence``: ``(partition, epoch)`` of a partition's bridge (:mod:`iomt.partitions`); the
        batch is refused with :class:`FencedOut` unless that epoch is still the partition's
        (:meth:`fence_partition`). Its row is updated first: on PostgreSQL the row lock orders
        the batch before or after the next holder's fence, never across it."""
        now = time.time()
        try:
            with self.database.transaction(durable) as db:
                if fence is not None and db.execute(
                        "UPDATE partition_fences SET updated_at=? WHERE name=? AND epoch=?",
                        (now, *fence)).rowcount != 1:
                    raise FencedOut(f"partition {fence[0]!r} is no longer held at epoch {fence[1]}: "
                                    f"another node took it over")
                codes = self._write_batch(db, now, resources, dead_letters, outbox_rows, beds, vitals)
                if contexts:
                    db.executemany("INSERT OR REPLACE INTO news2_context VALUES (?,?,?,?,?,?,?,?)",
                                   [(*c, now) for c in contexts])
                if replayed:
                    db.executemany("UPDATE dead_letters SET replayed_at=? WHERE id=?", [(now, i) for i in replayed])
                if hl7 is not None:
                    self._write_hl7(db, hl7, now)
            self._system_codes = codes  # committed: a rolled-back code may name another system
        except BaseException:
            with self.database.writer_lock:  # another thread's batch may be writing it
                self._vital_index.discard()
            raise

    def _write_batch(self, db: sqlite3.Connection, now: float, resources, dead_letters, outbox_rows,
                     beds, vitals) -> dict[str | None, int | None]:
        """Writes the batch; returns the identifier system codes, with those it assigned."""
        codes = self._system_codes
        if resources:
            self.tables.write_resources(db, resources, now)
        if vitals:
            try:
                params = [(*v[:6], codes[v[6]], v[7], now) for v in vitals]
            except KeyError:  # a system first seen by this connection
                codes = self._identifier_system_codes(db, {v[6] for v in vitals})
                params = [(*v[:6], codes[v[6]], v[7], now) for v in vitals]
            db.executemany(_VITAL_SIGNS_INSERT, params)
        self._vital_index.write(_IndexLog(db), vitals)
        if dead_letters:
            db.executemany(
                "INSERT INTO dead_letters(source, reason, payload, device, payload_sha256,"
                " payload_bytes, created_at) VALUES (?,?,?,?,?,?,?)",
                [(*d, *(None,) * (6 - len(d)), now) for d in dead_letters])
        if outbox_rows:
            self.tables.write_outbox(db, outbox_rows, now)
        if beds:
            db.executemany("INSERT OR REPLACE INTO bed_census VALUES (?,?,?,?,?,?,?)", [(*b, now) for b in beds])
        return codes

    @staticmethod
    def _write_hl7(db: sqlite3.Connection, rows: Hl7Rows, now: float) -> None:
        db.executemany("INSERT OR REPLACE INTO hl7_messages VALUES (?,?,?,?,?,?)",
                       [(r.sending_facility, r.sending_application, r.control_id, r.message_type,
                         r.sha256, r.received_at) for r in rows.receipts])
        db.executemany("INSERT OR REPLACE INTO hl7_encounters VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       [(e.sending_facility, e.visit_number, e.patient_id, e.patient_system, e.status,
                         e.patient_class, e.site, e.ward, e.room, e.bed, e.since, now) for e in rows.encounters])
        db.executemany("INSERT OR REPLACE INTO bed_devices VALUES (?,?,?,?,?)",
                       [(b.ward, b.bed, b.device, b.site, b.seen_at) for b in rows.bed_devices])

    def _identifier_system_codes(self, db, systems: set[str | None]) -> dict[str | None, int | None]:
        """The codes of ``systems`` in ``vital_identifier_systems`` (assigned in ``db``'s
        transaction to those it lacks) with those known before: codes are never reassigned, so
        each connection keeps the ones it has seen committed."""
        db.executemany("INSERT OR IGNORE INTO vital_identifier_systems(system) VALUES (?)",
                       [(s,) for s in systems if s is not None and s not in self._system_codes])
        found = dict(db.execute("SELECT system, code FROM vital_identifier_systems").fetchall())
        return {None: None, **found}

    # -- beds ----------------------------------------------------------------------------------------
    def record_beds(self, beds: Sequence[tuple[str, str, str | None, str, str | None, str]]) -> None:
        """Upsert the bed census: ``(ward, bed, site, patient_ref, device, seen_at_iso)`` rows."""
        if not beds:
            return
        now = time.time()
        with self.database.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO bed_census VALUES (?,?,?,?,?,?,?)", [(*b, now) for b in beds])

    def beds(self, updated_after: float, ward: str | None = None) -> list[BedRow]:
        """Bed census rows written after ``updated_after`` (epoch seconds), of ``ward`` when given,
        by ward and bed."""
        sql, params = f"SELECT {columns_of(BedRow)} FROM bed_census WHERE updated_at>?", [updated_after]
        if ward is not None:
            sql += " AND ward=?"
            params.append(ward)
        return [BedRow(*r) for r in self.database.rows(sql + " ORDER BY ward, bed", params)]

    def beds_of_ward(self, ward: str, site: str | None = None) -> list[BedRow]:
        """The bed census rows of ``ward`` (of ``site`` alone when given), by bed."""
        return [row for row in self.beds(0.0, ward) if site is None or row.site == site]

    # -- partitions ------------------------------------------------------------------------------------
    def fence_partition(self, partition: str, epoch: int) -> bool:
        """Make ``epoch`` the partition's (when no higher one is); from then on the batches of
        an older epoch are refused (:meth:`commit_batch`). False: a higher epoch holds it."""
        with self.database.transaction() as db:
            now = time.time()
            db.execute("INSERT OR IGNORE INTO partition_fences VALUES (?,?,?)", (partition, epoch, now))
            db.execute("UPDATE partition_fences SET epoch=?, updated_at=? WHERE name=? AND epoch<?",
                       (epoch, now, partition, epoch))
            held = db.execute("SELECT epoch FROM partition_fences WHERE name=?", (partition,)).fetchone()
        return held[0] == epoch

    # -- NEWS2 context ---------------------------------------------------------------------------------
    def news2_contexts(self, subjects: Sequence[str]) -> list[News2Context]:
        """The ``news2_context`` rows of ``subjects`` (those that have one)."""
        found: list[News2Context] = []
        subjects = list(dict.fromkeys(subjects))
        for start in range(0, len(subjects), _IN_CHUNK):
            chunk = subjects[start:start + _IN_CHUNK]
            found += [News2Context(*r) for r in self.database.rows(
                f"SELECT {columns_of(News2Context)} FROM news2_context WHERE subject IN"
                f" ({','.join('?' * len(chunk))})", chunk)]
        return found

    # -- dead letters --------------------------------------------------------------------------------
    def add_dead_letter(self, source: str, reason: str, payload: bytes | None,
                        device: str | None = None) -> None:
        with self.database.transaction() as db:
            db.execute("INSERT INTO dead_letters(source, reason, payload, created_at, device) VALUES (?,?,?,?,?)",
                       (source, reason, payload, time.time(), device))

    _DEAD_LETTER_COLUMNS = ("id, source, reason, payload, created_at, device, replayed_at, payload_sha256,"
                            " payload_bytes")

    def parked(self, device: str) -> list[StoredDeadLetter]:
        """Dead letters parked for ``device`` (reason "unknown device") not yet replayed."""
        return [StoredDeadLetter(*r) for r in self.database.rows(
            f"SELECT {self._DEAD_LETTER_COLUMNS} FROM dead_letters WHERE device=? AND replayed_at IS NULL"
            " ORDER BY id", (device,))]

    def mark_replayed(self, ids: Iterable[int]) -> None:
        with self.database.transaction() as db:
            db.executemany("UPDATE dead_letters SET replayed_at=? WHERE id=?", [(time.time(), i) for i in ids])

    def dead_letters(self) -> list[StoredDeadLetter]:
        return [StoredDeadLetter(*r) for r in self.database.rows(
            f"SELECT {self._DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id")]

    def dead_letter_counts(self) -> DeadLetterCounts:
        row = self.database.rows("SELECT COUNT(*), SUM(CASE WHEN replayed_at IS NULL AND device IS NOT NULL THEN 1 ELSE 0 END)"
                                 " FROM dead_letters")[0]
        return DeadLetterCounts(row[0], row[1] or 0)

    def parked_sources(self) -> list[tuple[str, str]]:
        """``(device, source)`` of the dead letters parked for a device not yet replayed."""
        return [(r[0], r[1]) for r in self.database.rows(
            "SELECT DISTINCT device, source FROM dead_letters WHERE device IS NOT NULL AND replayed_at IS NULL")]

    # -- HL7 v2 --------------------------------------------------------------------------------------
    def hl7_receipt(self, sending_facility: str, sending_application: str,
                    control_id: str) -> Hl7Receipt | None:
        """The message acknowledged with AA under this MSH-4, MSH-3 and MSH-10, if any."""
        rows = self.database.rows(f"SELECT {columns_of(Hl7Receipt)} FROM hl7_messages WHERE sending_facility=? AND"
                                  " sending_application=? AND control_id=?",
                                  (sending_facility, sending_application, control_id))
        return Hl7Receipt(*rows[0]) if rows else None

    def delete_hl7_receipts_before(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` of the ``hl7_messages`` rows received before ``cutoff`` (epoch
        seconds), oldest first; how many."""
        with self.database.transaction(durable=False) as db:
            return db.execute("DELETE FROM hl7_messages WHERE (sending_facility, sending_application, control_id)"
                              " IN (SELECT sending_facility, sending_application, control_id FROM hl7_messages"
                              " WHERE received_at<? ORDER BY received_at LIMIT ?)", (cutoff, limit)).rowcount

    def hl7_encounter(self, sending_facility: str, visit_number: str) -> Hl7Encounter | None:
        rows = self.database.rows(f"SELECT {_ENCOUNTER} FROM hl7_encounters WHERE sending_facility=? AND"
                                  " visit_number=?",
                                  (sending_facility, visit_number))
        return Hl7Encounter(*rows[0]) if rows else None

    def hl7_encounters_of(self, patient_id: str, patient_system: str) -> list[Hl7Encounter]:
        """The visits of one patient, oldest first."""
        return [Hl7Encounter(*r) for r in self.database.rows(
            f"SELECT {_ENCOUNTER} FROM hl7_encounters WHERE patient_id=? AND patient_system=? ORDER BY since",
            (patient_id, patient_system))]

    def hl7_encounter_at_bed(self, ward: str, bed: str) -> Hl7Encounter | None:
        """The in-progress visit at a bed (the latest, should a discharge have been missed)."""
        rows = self.database.rows(f"SELECT {_ENCOUNTER} FROM hl7_encounters WHERE ward=? AND bed=? AND"
                                  " status='in-progress'"
                                  " ORDER BY since DESC LIMIT 1", (ward, bed))
        return Hl7Encounter(*rows[0]) if rows else None

    def devices_at_bed(self, ward: str, bed: str) -> list[str]:
        """The monitors known at a bed: seen there in HL7 PCD-01 messages, in the bed census
        (MQTT) or in a device association, sorted."""
        return [r[0] for r in self.database.rows(
            "SELECT device FROM bed_devices WHERE ward=:w AND bed=:b UNION"
            " SELECT device FROM bed_census WHERE ward=:w AND bed=:b AND device IS NOT NULL UNION"
            " SELECT device FROM device_associations WHERE ward=:w AND bed=:b ORDER BY 1",
            {"w": ward, "b": bed})]

    # -- device associations ---------------------------------------------------------------------------
    def associations(self) -> list[StoredAssociation]:
        return [StoredAssociation(*r) for r in self.database.rows(
            "SELECT device, patient_id, patient_system, spo2_scale, site, ward, bed, since, updated_at"
            " FROM device_associations")]

    def put_association(self, row: StoredAssociation) -> None:
        with self.database.transaction() as db:
            db.execute("INSERT OR REPLACE INTO device_associations VALUES (?,?,?,?,?,?,?,?,?)",
                       (row.device, row.patient_id, row.patient_system, row.spo2_scale, row.site,
                        row.ward, row.bed, row.since, row.updated_at))

    # -- vitals messages -----------------------------------------------------------------------------
    def vital_rows(self, subject: str | None = None, since_us: int | None = None, limit: int | None = None,
                   indexed_only: bool = False) -> list[VitalRow]:
        """Rows of ``subject`` (all when None) measured after ``since_us``, newest first; a
        patient's through the patient index and the log of keys not in it yet (the index alone
        when ``indexed_only``)."""
        params = {"subject": subject, "since": since_us, "limit": limit}
        since, limited = since_us is not None, limit is not None
        if subject is None:
            sql = f"SELECT {VITAL_COLUMNS} FROM vital_signs"
            if since:
                sql += " WHERE effective_us>:since"
        elif indexed_only:
            sql = (f"SELECT {VITAL_COLUMNS} FROM ({_keys('vital_subjects', since, limited)}) AS k"
                   f" JOIN vital_signs USING ({_KEY})")
        else:
            sql = (f"SELECT {VITAL_COLUMNS} FROM ({_keys('vital_subjects', since, limited)} UNION"
                   f" {_keys('vital_unindexed', since, limited)}) AS k JOIN vital_signs USING ({_KEY})")
        sql += " ORDER BY effective_us DESC"
        if limited:
            sql += " LIMIT :limit"
        return self.database.tuples(sql, params, VitalRow._make)

    def unindexed_rows(self, since_us: int | None = None, subjects: list[str] | None = None) -> list[VitalRow]:
        """The rows measured after ``since_us`` whose keys are in the log, not the patient index (of
        ``subjects`` alone when given)."""
        sql, params = f"SELECT DISTINCT {VITAL_COLUMNS} FROM vital_unindexed JOIN vital_signs USING ({_KEY})", []
        where = []
        if since_us is not None:
            where.append("effective_us>?")
            params.append(since_us)
        if subjects is not None:
            where.append(f"vital_unindexed.subject IN ({','.join('?' * len(subjects))})")
            params += subjects
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.database.tuples(sql, params, VitalRow._make)

    def rows_measured_between(self, first_us: int, last_us: int) -> list[VitalRow]:
        return self.database.tuples(f"SELECT {VITAL_COLUMNS} FROM vital_signs WHERE effective_us BETWEEN ? AND ?",
                                    (first_us, last_us), VitalRow._make)

    def subjects_since(self, since_us: int) -> set[str]:
        """Patients with vitals measured after ``since_us``: two look-ups a patient in the patient
        index (its next patient, then its newest key) and the log, not a scan of every message
        since then (36 million rows for an hour at 10,000 messages a second)."""
        return {row[0] for row in self.database.rows(
            "WITH RECURSIVE patient(subject) AS (SELECT min(subject) FROM vital_subjects UNION ALL"
            " SELECT (SELECT min(subject) FROM vital_subjects WHERE subject>patient.subject)"
            " FROM patient WHERE patient.subject IS NOT NULL)"
            " SELECT subject FROM patient WHERE subject IS NOT NULL AND (SELECT max(effective_us)"
            " FROM vital_subjects WHERE subject=patient.subject)>:since"
            " UNION SELECT subject FROM vital_unindexed WHERE effective_us>:since", {"since": since_us})}

    def has_subject(self, subject: str) -> bool:
        return bool(self.database.rows("SELECT 1 FROM vital_subjects WHERE subject=:s UNION ALL"
                                       " SELECT 1 FROM vital_unindexed WHERE subject=:s LIMIT 1", {"s": subject}))

    def count(self, loinc: str) -> int:
        """Stored vitals messages with a reading of ``loinc``."""
        return self.database.rows("SELECT count(*) FROM vital_signs WHERE instr(',' || codes || ',', ?) > 0",
                                  (f",{loinc},",))[0][0]

    def delete_vitals_before(self, cutoff_us: int, limit: int) -> int:
        """Delete up to ``limit`` of the vitals messages measured before ``cutoff_us`` (and their
        patient index entries), in one transaction that does not wait for the disk; how many."""
        with self.database.transaction(durable=False) as db:
            for table, key in _VITAL_TABLES:  # the patient index, then the rows
                count = db.execute(
                    f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM vital_signs"
                    " WHERE effective_us<? ORDER BY effective_us LIMIT ?)", (cutoff_us, limit)).rowcount
        return count
