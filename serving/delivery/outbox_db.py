"""Where the outbox keeps its items: the local SQLite database, or PostgreSQL for several nodes.

Both backends offer the same small interface (:class:`serving.store.SqliteOutbox`,
:class:`PostgresOutboxDb`): ``insert`` (idempotent by key), ``claim_due`` (items due now, leased so
that another node does not attempt them at the same time), ``mark_sent``, ``mark_failed``, ``items``,
``item``, ``retry``, ``counts``, ``status_counts`` and ``depth`` (items per destination for
``medgate status``), all with typed records (:class:`serving.store.OutboxItem`,
:class:`serving.store.OutboxDepth`).  :func:`open_outbox_db` picks one from a URL: ``None`` or
``sqlite:`` for the local database, ``postgresql://user@host:port/db`` (libpq URI, RFC 3986) for
PostgreSQL through psycopg 3.  Each item keeps the correlation id it was enqueued under
(:mod:`kernel.correlation`).

With PostgreSQL, components that write outbox rows into the SQLite database in the same transaction
as their data (the IoMT bridge does) still do so: the SQLite ``outbox`` table then acts as a local
transactional outbox that :meth:`PostgresOutboxDb.claim_due` relays into PostgreSQL first
(status ``relayed`` locally), so nothing is lost and each key is delivered once.
"""
from __future__ import annotations

import time

from serving.store import CLAIM_BATCH, DEPTH_SQL, OutboxDepth, OutboxItem, SqliteOutbox, Store

#: URL schemes of PostgreSQL accepted by libpq (PostgreSQL 15 docs, 34.1.1 Connection Strings).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: An item claimed for an attempt is not claimed again for this long (a crashed node's lease ends).
CLAIM_LEASE_S = 120.0
#: Local items relayed into PostgreSQL per pass.
RELAY_BATCH = 1000

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


class PostgresOutboxDb:
    """The ``outbox`` table in PostgreSQL at ``url``; ``local`` (the SQLite outbox) is relayed from."""

    def __init__(self, url: str, local: SqliteOutbox | None = None, *, connect_timeout_s: int = 10) -> None:
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

    def _execute(self, sql: str, params: tuple = ()) -> list[dict]:
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
        items = self.local.pending(RELAY_BATCH)
        copied = sum(self.insert(i.key, i.kind, i.destination, i.payload, i.correlation_id) for i in items)
        if items:
            self.local.mark_relayed(i.id for i in items)
        return copied

    def claim_due(self, now: float) -> list[OutboxItem]:
        if self.relay():
            now = max(now, time.time())  # relayed rows are due from the moment they were copied
        return [OutboxItem.of(r) for r in self._execute(
            "UPDATE outbox SET next_attempt_at=%s WHERE id IN (SELECT id FROM outbox"
            " WHERE status='pending' AND next_attempt_at<=%s ORDER BY id LIMIT %s"
            " FOR UPDATE SKIP LOCKED) RETURNING *",
            (now + CLAIM_LEASE_S, now, CLAIM_BATCH))]

    def mark_sent(self, item_id: int) -> None:
        self._execute("UPDATE outbox SET status='sent', attempts=attempts+1, sent_at=%s,"
                      " last_error=NULL WHERE id=%s", (time.time(), item_id))

    def mark_failed(self, item_id: int, status: str, attempts: int, next_at: float, reason: str) -> None:
        self._execute("UPDATE outbox SET status=%s, attempts=%s, next_attempt_at=%s, last_error=%s"
                      " WHERE id=%s", (status, attempts, next_at, reason, item_id))

    def items(self, status: str | None = None) -> list[OutboxItem]:
        if status:
            return [OutboxItem.of(r) for r in self._execute("SELECT * FROM outbox WHERE status=%s ORDER BY id",
                                                            (status,))]
        return [OutboxItem.of(r) for r in self._execute("SELECT * FROM outbox ORDER BY id")]

    def item(self, key: str) -> OutboxItem | None:
        rows = self._execute("SELECT * FROM outbox WHERE key=%s", (key,))
        return OutboxItem.of(rows[0]) if rows else None

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

    def status_counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self._execute("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")}

    def depth(self) -> list[OutboxDepth]:
        return [OutboxDepth(**r) for r in self._execute(DEPTH_SQL)]

    def close(self) -> None:
        self._conn.close()


def open_outbox_db(url: str | None, store: Store) -> SqliteOutbox | PostgresOutboxDb:
    """The outbox backend for ``url`` (see the module docstring); ``store`` is the local store."""
    if url is None or url.startswith("sqlite:"):
        return store.outbox
    if url.startswith(POSTGRES_SCHEMES):
        return PostgresOutboxDb(url, local=store.outbox)
    raise ValueError(f"store.url must be null, sqlite: or postgresql://..., {url!r} is given.")
