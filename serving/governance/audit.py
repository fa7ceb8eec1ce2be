"""The audit log: who read or exported which patient data, when, from where, with what outcome.

Rows live in the ``audit_log`` table of the medgate SQLite database, or of the PostgreSQL database of
``store.url`` (:data:`PG_TRIGGERS`).  The table is append-only: triggers abort any UPDATE or DELETE
(and, in PostgreSQL, TRUNCATE).  Each row also carries a hash chain, so an edit made around
the triggers (by anyone with write access to the file) is still detected: ``hash`` is the SHA-256
of the previous row's hash followed by this row's canonical JSON (every column but ``hash``,
``seq`` and ``prev_hash`` included, keys sorted).  :func:`verify` walks the chain and names the
first row that does not fit: edited content, a deleted row (a gap in ``seq`` or a ``prev_hash``
that is not the previous hash) or reordered rows.  Removing the newest rows leaves a valid, shorter
chain: compare the head (``medgate audit verify`` prints it) with one recorded elsewhere
(``--head SEQ:HASH``).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kernel.database import open_database, private_connection
from kernel.database_pg import POSTGRES_SCHEMES
from kernel.migrations import Migration, migrate

GENESIS = "0" * 64
FIELDS = ("recorded", "who", "role", "action", "resource_type", "resource_id", "study_uid", "query",
          "client", "outcome", "detail")
ACTIONS = ("read", "search", "stream", "export", "execute")  # execute: a model run on an upload
OUTCOMES = ("success", "denied", "not-found", "error")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded TEXT NOT NULL,        -- ISO 8601 UTC
    who TEXT NOT NULL,             -- token name, or "anonymous"
    role TEXT,
    action TEXT NOT NULL,          -- read | search | stream | export | execute
    resource_type TEXT,
    resource_id TEXT,
    study_uid TEXT,
    query TEXT,                    -- search parameters or the exported range
    client TEXT,                   -- network address, or "local" for the command line
    outcome TEXT NOT NULL,         -- success | denied | not-found | error
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"""

#: The table in PostgreSQL (``seq`` an identity column: :mod:`kernel.database_pg`), appended to by
#: one node at a time (:data:`APPEND_LOCK_KEY`; the chain has one head).
PG_TABLE = SCHEMA[:SCHEMA.index("CREATE TRIGGER")]
#: The audit table's schema steps in PostgreSQL (:mod:`kernel.migrations`).
PG_MIGRATIONS = (Migration(1, "audit log", PG_TABLE),)
#: PostgreSQL's append-only rule: a statement trigger raising on UPDATE, DELETE and TRUNCATE
#: (PostgreSQL 15 docs 43.10, "Trigger Functions").
PG_TRIGGERS = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
"""
#: The transaction-scoped advisory lock held while appending in PostgreSQL (PostgreSQL 15 docs 9.27.10).
APPEND_LOCK_KEY = 7262003
_COLUMNS = ", ".join(("seq", *FIELDS, "prev_hash", "hash"))
_INSERT = (f"INSERT INTO audit_log({','.join(('seq', *FIELDS, 'prev_hash', 'hash'))}) VALUES"
           f" ({','.join('?' * (len(FIELDS) + 3))})")


def canonical(row: dict[str, Any]) -> str:
    """The hashed content of a row: its fields plus ``seq`` and ``prev_hash``, keys sorted."""
    content = {k: row.get(k) for k in (*FIELDS, "seq", "prev_hash")}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256((row["prev_hash"] + canonical(row)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verification:
    """Outcome of :func:`verify`: rows checked, the first bad ``seq`` (None = intact), why, head."""

    rows: int
    bad_seq: int | None
    reason: str | None
    head_seq: int | None
    head_hash: str

    @property
    def ok(self) -> bool:
        return self.bad_seq is None


class AuditLog:
    """Append and read audit rows in the SQLite database at ``db_path`` (own connection), or in the
    PostgreSQL database when ``db_path`` is a ``postgresql://`` URL (``store.url``)."""

    def __init__(self, db_path: str | Path) -> None:
        self._lock = threading.Lock()
        self._pg = None
        if isinstance(db_path, str) and db_path.startswith(POSTGRES_SCHEMES):
            self.db_path = None
            self._pg = open_database(db_path)
            migrate(self._pg, "audit", PG_MIGRATIONS)
            self._pg.execute_script(PG_TRIGGERS)
            return
        self.db_path = Path(db_path)
        self._db = private_connection(self.db_path, SCHEMA)  # 0600 in a 0700 folder, even when first
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            (self._pg or self._db).close()

    def record(self, *, who: str, role: str | None, action: str, outcome: str = "success",
               resource_type: str | None = None, resource_id: str | None = None,
               study_uid: str | None = None, query: str | None = None, client: str | None = None,
               detail: str | None = None) -> int:
        """Append one row; returns its ``seq``."""
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, {action!r} is given")
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, {outcome!r} is given")
        row = {"recorded": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "who": who,
               "role": role, "action": action, "resource_type": resource_type,
               "resource_id": resource_id, "study_uid": study_uid, "query": query, "client": client,
               "outcome": outcome, "detail": detail}
        if self._pg is not None:
            with self._lock, self._pg.transaction() as db:
                db.execute("SELECT pg_advisory_xact_lock(?)", (APPEND_LOCK_KEY,))
                last = db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
                db.execute(_INSERT, _chained(row, last, last["seq"] if last else 0))
            return row["seq"]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
                                        ).fetchone()
                seq_row = self._db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name='audit_log'").fetchone()
                used = max(last["seq"] if last else 0, seq_row[0] if seq_row else 0)
                self._db.execute(_INSERT, _chained(row, last, used))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return row["seq"]

    def rows(self, *, since_seq: int = 0, limit: int | None = None, offset: int = 0,
             newest_first: bool = False, where: dict[str, str] | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM audit_log WHERE seq > ?", [since_seq]
        for column, value in (where or {}).items():
            if column not in FIELDS:
                raise ValueError(f"where must name columns of {FIELDS}, {column!r} is given")
            sql += f" AND {column} = ?"
            params.append(value)
        sql += " ORDER BY seq" + (" DESC" if newest_first else "")
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        with self._lock:
            if self._pg is not None:
                return [dict(r) for r in self._pg.rows(sql.replace("SELECT *", f"SELECT {_COLUMNS}"), params)]
            return [dict(r) for r in self._db.execute(sql, params).fetchall()]

    def count(self, where: dict[str, str] | None = None) -> int:
        sql, params = "SELECT COUNT(*) FROM audit_log WHERE 1=1", []
        for column, value in (where or {}).items():
            if column not in FIELDS:
                raise ValueError(f"where must name columns of {FIELDS}, {column!r} is given")
            sql += f" AND {column} = ?"
            params.append(value)
        with self._lock:
            if self._pg is not None:
                return int(self._pg.rows(sql, params)[0][0])
            return int(self._db.execute(sql, params).fetchone()[0])

    def verify(self) -> Verification:
        return verify_rows(self.rows())


def _chained(row: dict[str, Any], last, used_seq: int) -> list[Any]:
    """``row`` linked after ``last`` (the head, or None) with the next ``seq`` after ``used_seq``;
    its values in :data:`_INSERT`'s order."""
    row["seq"] = used_seq + 1
    row["prev_hash"] = last["hash"] if last else GENESIS
    row["hash"] = row_hash(row)
    return [row[c] for c in ("seq", *FIELDS, "prev_hash", "hash")]


def verify_rows(rows: list[dict[str, Any]]) -> Verification:
    """Check the hash chain of ``rows`` as stored (in ``seq`` order, as read)."""
    prev_hash, prev_seq = GENESIS, 0
    for row in rows:
        if row["seq"] != prev_seq + 1:
            return Verification(len(rows), row["seq"], f"seq {row['seq']} follows {prev_seq}: a row is"
                                " missing or rows were reordered", prev_seq or None, prev_hash)
        if row["prev_hash"] != prev_hash:
            return Verification(len(rows), row["seq"], "prev_hash is not the previous row's hash"
                                " (a row was deleted, inserted or reordered)", prev_seq or None, prev_hash)
        if row_hash(row) != row["hash"]:
            return Verification(len(rows), row["seq"], "content does not match its hash (edited)",
                                prev_seq or None, prev_hash)
        prev_hash, prev_seq = row["hash"], row["seq"]
    return Verification(len(rows), None, None, prev_seq or None, prev_hash)
