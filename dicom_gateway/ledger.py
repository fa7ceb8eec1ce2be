"""The gateway's durable bookkeeping, in the medgate SQLite store (same file, same connection).

Tables (created on first use, next to the store's ``instances`` and ``studies``):

``dicom_groups``
    One row per completion group (a study, or a series with ``dicom.completion.group_by: series``):
    instances received, the expected count when the data announces one, the time of the last
    instance, whether the last sender finished (association released, STOW-RS request answered),
    the models the group routes to, and ``state`` (``receiving`` -> ``complete``).
``dicom_instance_routes``
    The models each instance was routed to when it arrived (so the pipeline uses the same decision).
``dicom_series_geometry``
    Rows, Columns and Image Orientation (Patient) of the first slice of each volume series.
``studies`` (the store's)
    Besides the rows of received instances' studies, a row ``refused`` for a study whose instance the
    intake refused while nothing of it was stored (:func:`record_refusal`): the worklist shows the
    reason and the sender, and a later instance of the study that is stored moves it on as usual.
``dicom_dispatches``
    The *dispatched* marker: one row per (group, model), inserted in the same transaction that
    marks the group complete.  A group is handed to a model only when that insert created the row,
    so a study is dispatched exactly once, across restarts and across processes (SCP and STOW-RS).

Every function takes the :class:`serving.store.Store` and commits its own transaction; an
instance row and its group update are one transaction.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from dicom_gateway.status import StoreStatus

SCHEMA = """
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


def ensure_schema(store) -> None:
    with store.transaction() as db:
        for statement in filter(str.strip, SCHEMA.split(";")):
            db.execute(statement)
        columns = {r["name"] for r in db.execute("PRAGMA table_info(dicom_dispatches)")}
        if "processed_at" not in columns:  # stores created before the column existed
            db.execute("ALTER TABLE dicom_dispatches ADD COLUMN processed_at REAL")
            db.execute("UPDATE dicom_dispatches SET processed_at=dispatched_at WHERE study_uid NOT IN"
                       " (SELECT study_uid FROM studies WHERE status='complete')")


@dataclass(frozen=True)
class Arrival:
    """What the gateway knows about one received instance (see :func:`record_instance`)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    path: str
    calling_ae: str
    group_uid: str
    models: tuple[str, ...]
    expected_count: int | None
    single_image: bool


def record_instance(store, arrival: Arrival) -> bool:
    """Record an instance whose file is already durable; False when it was a duplicate.

    One transaction: the store's ``instances`` and ``studies`` rows, the instance's routes, and the
    group's counters.  An instance arriving after its group completed is stored and counted, but
    the group is not dispatched again (the ``reason`` column says so).  The commit does not wait
    for the disk: the spool file is the durable record, and :func:`unrecorded_files` finds any file
    whose row a power loss took, so the gateway records it again at start.
    """
    return record_instances(store, [arrival])[0]


def record_instances(store, arrivals: list[Arrival]) -> list[bool]:
    """:func:`record_instance` for several instances in one transaction; which were new."""
    now = time.time()
    with store.transaction(durable=False) as db:
        return [_record(db, arrival, now) for arrival in arrivals]


def _record(db: sqlite3.Connection, arrival: Arrival, now: float) -> bool:
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


#: Longest refusal text a ``refused`` study row keeps (the log line has the reason whole).
MAX_REFUSAL_CHARS = 256
#: C0 and C1 controls, DEL, and the Unicode line and paragraph separators: removed from stored text.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Refusal:
    """An instance the intake refused (see :func:`record_refusal`): its study, the sender, the status
    it was answered and why."""

    study_uid: str
    sop_instance_uid: str
    calling_ae: str
    status: StoreStatus
    reason: str

    def __post_init__(self) -> None:
        if self.status == StoreStatus.SUCCESS:
            raise ValueError(f"a refusal needs a non-success status, {self.status!r} is given")

    @property
    def detail(self) -> str:
        """The study row's text: status, sender and reason, control characters removed, at most
        :data:`MAX_REFUSAL_CHARS` characters."""
        status = StoreStatus(self.status)
        text = _CONTROLS.sub(" ", f"0x{status:04X} {status.name} from {self.calling_ae or '?'}: {self.reason}")
        return text if len(text) <= MAX_REFUSAL_CHARS else text[:MAX_REFUSAL_CHARS - 1] + "…"


def record_refusal(store, refusal: Refusal) -> None:
    """Show a refused instance's study on the worklist: a new study row ``refused`` with
    :attr:`Refusal.detail`, or the newest refusal on a study that is ``refused`` already.  A study with
    stored instances keeps its status (its instances are processed; the log names the refusal), and a
    later stored instance moves a ``refused`` study on to ``receiving`` (:func:`record_instances`)."""
    now = time.time()
    with store.transaction() as db:
        db.execute("INSERT INTO studies(study_uid, status, detail, received_at, updated_at)"
                   " VALUES (?, 'refused', ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE"
                   " SET detail=excluded.detail, updated_at=excluded.updated_at WHERE status='refused'",
                   (refusal.study_uid, refusal.detail, now, now))


def unrecorded_files(store, spool: Path) -> list[Path]:
    """Spool files with no ``instances`` row (their non-durable commit was lost), oldest first."""
    known = {row["path"] for row in store.query("SELECT path FROM instances")}
    files = [path for path in Path(spool).glob("*/*.dcm") if str(path) not in known]
    return sorted(files, key=lambda path: path.stat().st_mtime)


def mark_released(store, group_uids: Iterable[str]) -> None:
    """A sender finished (association released or aborted, STOW-RS request answered)."""
    groups = list(group_uids)
    if not groups:
        return
    with store.transaction() as db:
        db.executemany("UPDATE dicom_groups SET released_at=? WHERE group_uid=? AND state='receiving'",
                       [(time.time(), g) for g in groups])


def orientation_text(orientation: Iterable[float]) -> str:
    """Image Orientation (Patient) as the geometry table keeps it (4 decimals)."""
    return "\\".join(f"{float(v):.4f}" for v in orientation)


def first_geometry(store, series_uid: str, rows: int, columns: int, orientation: str) -> tuple[int, int, str]:
    """Rows, Columns and orientation of the series' first slice; these, when this is its first."""
    with store.transaction() as db:
        db.execute("INSERT OR IGNORE INTO dicom_series_geometry VALUES (?,?,?,?)",
                   (series_uid, rows, columns, orientation))
        first = db.execute("SELECT * FROM dicom_series_geometry WHERE series_uid=?", (series_uid,)).fetchone()
    return first["rows"], first["columns"], first["orientation"]


def geometry_mismatch(first: tuple[int, int, str], rows: int, columns: int, orientation: str) -> str | None:
    """None when a slice fits its series' first slice ``first`` (see :func:`first_geometry`), else why."""
    if first[:2] != (rows, columns):
        return (f"slice size {rows}x{columns} differs from the series' {first[0]}x{first[1]}"
                " (slices of one series must agree in size)")
    if first[2] != orientation:
        return (f"Image Orientation (Patient) {orientation} differs from the series' {first[2]}"
                " (slices of one series must be parallel)")
    return None


def receiving_groups(store) -> list[dict[str, Any]]:
    return [dict(r) for r in store.query("SELECT * FROM dicom_groups WHERE state='receiving'")]


def complete_group(store, group_uid: str, reason: str) -> tuple[str, list[str]] | None:
    """Mark the group complete and claim its dispatches, atomically.

    Returns ``(study_uid, models newly claimed)``, or None when another thread or process completed
    it first.  The caller hands the study to each returned model; the claim is durable, so no model
    ever gets the group twice.
    """
    now = time.time()
    with store.transaction() as db:
        row = db.execute("SELECT * FROM dicom_groups WHERE group_uid=? AND state='receiving'",
                         (group_uid,)).fetchone()
        if row is None:
            return None
        db.execute("UPDATE dicom_groups SET state='complete', completed_at=?, reason=? WHERE group_uid=?",
                   (now, reason, group_uid))
        models = json.loads(row["models"])
        claimed = [m for m in models if db.execute(
            "INSERT OR IGNORE INTO dicom_dispatches(group_uid, model, study_uid, dispatched_at)"
            " VALUES (?,?,?,?)",
            (group_uid, m, row["study_uid"], now)).rowcount == 1]
        if models:
            db.execute("UPDATE studies SET status='complete', route=?, detail=?, updated_at=? WHERE study_uid=?",
                       (models[0], f"complete ({reason})", now, row["study_uid"]))
        else:
            db.execute("UPDATE studies SET status='unrouted', detail='no routing rule matched', updated_at=?"
                       " WHERE study_uid=? AND status='receiving'", (now, row["study_uid"]))
    return row["study_uid"], claimed


def routed_instances(store, study_uid: str, model: str) -> set[str] | None:
    """SOP Instance UIDs of the study routed to ``model``; None when the gateway recorded none."""
    try:
        rows = store.query("SELECT sop_instance_uid, models FROM dicom_instance_routes WHERE study_uid=?",
                           (study_uid,))
    except sqlite3.OperationalError:  # no gateway tables in this store (instances added otherwise)
        return None
    if not rows:
        return None
    return {r["sop_instance_uid"] for r in rows if model in json.loads(r["models"])}


def mark_processed(store, study_uid: str, model: str) -> None:
    """``model`` has produced (or failed) its results for the study: not resubmitted at restart."""
    try:
        with store.transaction() as db:
            db.execute("UPDATE dicom_dispatches SET processed_at=? WHERE study_uid=? AND model=?"
                       " AND processed_at IS NULL", (time.time(), study_uid, model))
    except sqlite3.OperationalError:  # no gateway tables in this store
        pass


def unprocessed_dispatches(store) -> list[tuple[str, str]] | None:
    """``(study_uid, model)`` of every claimed dispatch not yet processed, oldest first; None when
    the store has no gateway tables."""
    try:
        rows = store.query("SELECT study_uid, model FROM dicom_dispatches WHERE processed_at IS NULL"
                           " ORDER BY dispatched_at, model")
    except sqlite3.OperationalError:
        return None
    return [(r["study_uid"], r["model"]) for r in rows]


def dispatches(store, study_uid: str) -> list[dict[str, Any]]:
    return [dict(r) for r in store.query("SELECT * FROM dicom_dispatches WHERE study_uid=? ORDER BY model",
                                         (study_uid,))]
