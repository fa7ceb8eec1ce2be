"""Where the outbox keeps its items: the local SQLite store, or PostgreSQL for several nodes.

Both backends offer the same small interface (:class:`SqliteOutboxDb`, :class:`PostgresOutboxDb`):
``insert`` (idempotent by key), ``claim_due`` (items due now, leased so that another node does not
attempt them at the same time), ``mark_sent``, ``mark_failed``, ``items``, ``retry`` and
``counts``.  :func:`open_outbox_db` picks one from a URL: ``None`` or ``sqlite:`` for the store,
``postgresql://user@host:port/db`` (libpq URI, RFC 3986) for PostgreSQL through psycopg 3.
Each item keeps the correlation id it was enqueued under (:mod:`kernel.correlation`), and
``depth`` summarises the items per destination for ``medgate status``.

With PostgreSQL, components that write outbox rows into the SQLite store in the same transaction
as their data (the IoMT bridge does) still do so: the SQLite ``outbox`` table then acts as a local
transactional outbox that :meth:`PostgresOutboxDb.claim_due` relays into PostgreSQL first
(status ``relayed`` locally), so nothing is lost and each key is delivered once.
"""
from __future__ import annotations

import time
from typing import Any

#: Statuses of an outbox item.
PENDING, SENT, DEAD, RELAYED = "pending", "sent", "dead", "relayed"
#: URL schemes of PostgreSQL accepted by libpq (PostgreSQL 15 docs, 34.1.1 Connection Strings).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: An item claimed for an attempt is not claimed again for this long (a crashed node's lease ends).
CLAIM_LEASE_S = 120.0
#: Items claimed per pass.
CLAIM_BATCH = 100

PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    destination TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    sent_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_attempt_at);
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS correlation_id TEXT;
"""
#: Items per destination, kind and state; ``failed`` is pending after at least one failed attempt.
DEPTH_SQL = ("SELECT destination, kind, CASE WHEN status='pending' AND attempts>0 THEN 'failed' ELSE status END"
             " AS state, COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox GROUP BY destination, kind, 3"
             " ORDER BY destination, kind, 3")


class SqliteOutboxDb:
    """The ``outbox`` table of a :class:`serving.store.Store`."""

    def __init__(self, store) -> None:
        self.store = store

    def insert(self, key: str, kind: str, destination: str, payload_json: str,
               correlation_id: str | None = None) -> bool:
        now = time.time()
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO outbox(key, kind, destination, payload, correlation_id, status,"
                " next_attempt_at, created_at) VALUES (?,?,?,?,?, 'pending', ?, ?)",
                (key, kind, destination, payload_json, correlation_id, now, now))
        return cur.rowcount == 1

    def claim_due(self, now: float) -> list[dict[str, Any]]:
        # One process owns a SQLite store, and one worker thread attempts: no lease needed.
        return [dict(r) for r in self.store.query(
            "SELECT * FROM outbox WHERE status='pending' AND next_attempt_at<=? ORDER BY id LIMIT ?",
            (now, CLAIM_BATCH))]

    def mark_sent(self, item_id: int) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE outbox SET status='sent', attempts=attempts+1, sent_at=?,"
                       " last_error=NULL WHERE id=?", (time.time(), item_id))

    def mark_failed(self, item_id: int, status: str, attempts: int, next_at: float, reason: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE outbox SET status=?, attempts=?, next_attempt_at=?, last_error=?"
                       " WHERE id=?", (status, attempts, next_at, reason, item_id))

    def items(self, status: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM outbox", ()
        if status:
            sql, params = sql + " WHERE status=?", (status,)
        return [dict(r) for r in self.store.query(sql + " ORDER BY id", params)]

    def retry(self, keys: list[str] | None = None) -> int:
        """Dead items (all, or those with ``keys``) back to pending with a fresh attempt count."""
        sql = "UPDATE outbox SET status='pending', attempts=0, next_attempt_at=? WHERE status='dead'"
        params: tuple = (time.time(),)
        if keys:
            sql += f" AND key IN ({','.join('?' * len(keys))})"
            params += tuple(keys)
        with self.store.transaction() as db:
            return db.execute(sql, params).rowcount

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self.store.query("SELECT kind, status, COUNT(*) AS n FROM outbox GROUP BY kind, status")
        return {(r["kind"], r["status"]): r["n"] for r in rows}

    def depth(self) -> list[dict[str, Any]]:
        """``{destination, kind, state, n, oldest}`` rows (see :data:`DEPTH_SQL`)."""
        return [dict(r) for r in self.store.query(DEPTH_SQL)]

    def close(self) -> None:
        """The store is closed by its owner."""


class PostgresOutboxDb:
    """The ``outbox`` table in PostgreSQL at ``url``; ``local`` (a Store) is relayed from."""

    def __init__(self, url: str, local=None, *, connect_timeout_s: int = 10) -> None:
        if not isinstance(url, str) or not url.startswith(POSTGRES_SCHEMES):
            raise ValueError(f"url must start with postgresql:// or postgres://, {url!r} is given.")
        import psycopg
        from psycopg.rows import dict_row

        self.url, self.local = url, local
        self._conn = psycopg.connect(url, autocommit=True, row_factory=dict_row,
                                     connect_timeout=connect_timeout_s)
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(7262001)")  # one schema creator at a time
            self._conn.execute(PG_SCHEMA)

    def _execute(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        cur = self._conn.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def insert(self, key: str, kind: str, destination: str, payload_json: str,
               correlation_id: str | None = None) -> bool:
        now = time.time()
        rows = self._execute(
            "INSERT INTO outbox(key, kind, destination, payload, correlation_id, status, next_attempt_at,"
            " created_at) VALUES (%s,%s,%s,%s,%s,'pending',%s,%s) ON CONFLICT (key) DO NOTHING RETURNING id",
            (key, kind, destination, payload_json, correlation_id, now, now))
        return bool(rows)

    def relay(self) -> int:
        """Copy pending rows of the local SQLite outbox here; returns how many were new."""
        if self.local is None:
            return 0
        rows = self.local.query("SELECT * FROM outbox WHERE status='pending' ORDER BY id LIMIT 1000")
        copied = sum(self.insert(r["key"], r["kind"], r["destination"], r["payload"], r["correlation_id"])
                     for r in rows)
        if rows:
            with self.local.transaction() as db:
                db.executemany("UPDATE outbox SET status='relayed' WHERE id=?", [(r["id"],) for r in rows])
        return copied

    def claim_due(self, now: float) -> list[dict[str, Any]]:
        if self.relay():
            now = max(now, time.time())  # relayed rows are due from the moment they were copied
        return self._execute(
            "UPDATE outbox SET next_attempt_at=%s WHERE id IN (SELECT id FROM outbox"
            " WHERE status='pending' AND next_attempt_at<=%s ORDER BY id LIMIT %s"
            " FOR UPDATE SKIP LOCKED) RETURNING *",
            (now + CLAIM_LEASE_S, now, CLAIM_BATCH))

    def mark_sent(self, item_id: int) -> None:
        self._execute("UPDATE outbox SET status='sent', attempts=attempts+1, sent_at=%s,"
                      " last_error=NULL WHERE id=%s", (time.time(), item_id))

    def mark_failed(self, item_id: int, status: str, attempts: int, next_at: float, reason: str) -> None:
        self._execute("UPDATE outbox SET status=%s, attempts=%s, next_attempt_at=%s, last_error=%s"
                      " WHERE id=%s", (status, attempts, next_at, reason, item_id))

    def items(self, status: str | None = None) -> list[dict[str, Any]]:
        if status:
            return self._execute("SELECT * FROM outbox WHERE status=%s ORDER BY id", (status,))
        return self._execute("SELECT * FROM outbox ORDER BY id")

    def retry(self, keys: list[str] | None = None) -> int:
        sql = "UPDATE outbox SET status='pending', attempts=0, next_attempt_at=%s WHERE status='dead'"
        params: tuple = (time.time(),)
        if keys:
            sql += " AND key = ANY(%s)"
            params += (list(keys),)
        return self._conn.execute(sql, params).rowcount

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self._execute("SELECT kind, status, COUNT(*) AS n FROM outbox GROUP BY kind, status")
        return {(r["kind"], r["status"]): r["n"] for r in rows}

    def depth(self) -> list[dict[str, Any]]:
        return self._execute(DEPTH_SQL)

    def close(self) -> None:
        self._conn.close()


def open_outbox_db(url: str | None, store) -> SqliteOutboxDb | PostgresOutboxDb:
    """The outbox backend for ``url`` (see the module docstring); ``store`` is the local Store."""
    if url is None or url.startswith("sqlite:"):
        return SqliteOutboxDb(store)
    if url.startswith(POSTGRES_SCHEMES):
        return PostgresOutboxDb(url, local=store)
    raise ValueError(f"store.url must be null, sqlite: or postgresql://..., {url!r} is given.")
