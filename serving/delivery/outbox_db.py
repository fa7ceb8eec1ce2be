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

**One clock.** In PostgreSQL every time of an item (when it is due, the claim's end, when it was
sent) is the database's clock (:attr:`kernel.database_pg.PostgresDatabase.now_sql`), never a node's:
a node whose clock runs ahead would otherwise claim items another node is attempting (its claim
ending by the other's clock) and send them twice, and one whose clock runs behind would leave the
items it enqueued or claimed waiting for the others after it died.  A retry's backoff is measured
on the node and added to the database's clock.
"""
from __future__ import annotations

import time
from typing import Sequence

from kernel.database_pg import PostgresDatabase
from serving.config import OutboxConfig
from serving.store import CLAIM_BATCH, DEPTH_SQL, OutboxDepth, OutboxItem, SqliteOutbox, Store

#: URL schemes of PostgreSQL accepted by libpq (PostgreSQL 15 docs, 34.1.1 Connection Strings).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: An item claimed for an attempt is not claimed again for this long (a crashed node's lease ends):
#: ``outbox.claim_lease_s``.
CLAIM_LEASE_S = OutboxConfig().claim_lease_s
#: Local items relayed into PostgreSQL per pass.
RELAY_BATCH = 1000
_NOW = PostgresDatabase.now_sql  # every item time, on the database's clock (module docstring)

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

    def __init__(self, url: str, local: SqliteOutbox | None = None, *, connect_timeout_s: int = 10,
                 claim_lease_s: float = CLAIM_LEASE_S) -> None:
        if not isinstance(url, str) or not url.startswith(POSTGRES_SCHEMES):
            raise ValueError(f"url must start with postgresql:// or postgres://, {url!r} is given.")
        if not claim_lease_s > 0:
            raise ValueError(f"claim_lease_s must be positive, {claim_lease_s!r} is given.")
        self.url, self.local, self.claim_lease_s = url, local, claim_lease_s
        self._connect_timeout_s = connect_timeout_s
        self._closed = False
        self._conn = self._connect()
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(7262001)")  # one schema creator at a time
            self._conn.execute(PG_SCHEMA)

    def _connect(self):
        import psycopg
        from psycopg.rows import dict_row

        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=self._connect_timeout_s)

    def _cursor(self, sql: str, params: tuple = ()):
        """Runs ``sql``; a connection the server closed (it restarted, the network dropped) failed
        one call and is opened again for the next, as :mod:`kernel.database_pg` does."""
        if self._conn.closed and not self._closed:
            self._conn = self._connect()
        return self._conn.execute(sql, params)

    def _execute(self, sql: str, params: tuple = ()) -> list[dict]:
        cur = self._cursor(sql, params)
        return cur.fetchall() if cur.description else []

    def insert(self, key: str, kind: str, destination: str, payload_json: str,
               correlation_id: str | None = None) -> bool:
        rows = self._execute(
            "INSERT INTO outbox(key, kind, destination, payload, correlation_id, status, next_attempt_at,"
            f" created_at) VALUES (%s,%s,%s,%s,%s,'pending',{_NOW},{_NOW}) ON CONFLICT (key) DO NOTHING"
            " RETURNING id", (key, kind, destination, payload_json, correlation_id))
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

    def claim_due(self, now: float, kinds: Sequence[str] | None = None) -> list[OutboxItem]:
        """The items due by the database's clock (``now``, the node's, is not used), claimed for
        :attr:`claim_lease_s`; with ``kinds``, only items of those kinds (what this node can send:
        a bridge node has no result files for a ``dicom`` item, a gateway node no MQTT session for
        an alert)."""
        self.relay()
        only = " AND kind = ANY(%s)" if kinds is not None else ""
        params = (self.claim_lease_s, *(() if kinds is None else (list(kinds),)), CLAIM_BATCH)
        return [OutboxItem.of(r) for r in self._execute(
            f"UPDATE outbox SET next_attempt_at={_NOW} + %s WHERE id IN (SELECT id FROM outbox"
            f" WHERE status='pending' AND next_attempt_at<={_NOW}{only} ORDER BY id LIMIT %s"
            " FOR UPDATE SKIP LOCKED) RETURNING *", params)]

    def mark_sent(self, item_id: int) -> None:
        self._execute(f"UPDATE outbox SET status='sent', attempts=attempts+1, sent_at={_NOW},"
                      " last_error=NULL WHERE id=%s", (item_id,))

    def mark_failed(self, item_id: int, status: str, attempts: int, next_at: float, reason: str) -> None:
        """``next_at`` (the node's clock) becomes the same delay from now on the database's clock."""
        self._execute(f"UPDATE outbox SET status=%s, attempts=%s, next_attempt_at={_NOW} + %s, last_error=%s"
                      " WHERE id=%s", (status, attempts, max(0.0, next_at - time.time()), reason, item_id))

    def items(self, status: str | None = None) -> list[OutboxItem]:
        if status:
            return [OutboxItem.of(r) for r in self._execute("SELECT * FROM outbox WHERE status=%s ORDER BY id",
                                                            (status,))]
        return [OutboxItem.of(r) for r in self._execute("SELECT * FROM outbox ORDER BY id")]

    def item(self, key: str) -> OutboxItem | None:
        rows = self._execute("SELECT * FROM outbox WHERE key=%s", (key,))
        return OutboxItem.of(rows[0]) if rows else None

    def retry(self, keys: list[str] | None = None) -> int:
        sql = f"UPDATE outbox SET status='pending', attempts=0, next_attempt_at={_NOW} WHERE status='dead'"
        params: tuple = ()
        if keys:
            sql += " AND key = ANY(%s)"
            params += (list(keys),)
        return self._cursor(sql, params).rowcount

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self._execute("SELECT kind, status, COUNT(*) AS n FROM outbox GROUP BY kind, status")
        return {(r["kind"], r["status"]): r["n"] for r in rows}

    def status_counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self._execute("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")}

    def depth(self) -> list[OutboxDepth]:
        return [OutboxDepth(**r) for r in self._execute(DEPTH_SQL)]

    def close(self) -> None:
        self._closed = True
        self._conn.close()


def open_outbox_db(url: str | None, store: Store,
                   claim_lease_s: float = CLAIM_LEASE_S) -> SqliteOutbox | PostgresOutboxDb:
    """The outbox backend for ``url`` (see the module docstring); ``store`` is the local store;
    ``claim_lease_s``: ``outbox.claim_lease_s`` (PostgreSQL)."""
    if url is None or url.startswith("sqlite:"):
        return store.outbox
    if url.startswith(POSTGRES_SCHEMES):
        return PostgresOutboxDb(url, local=store.outbox, claim_lease_s=claim_lease_s)
    raise ValueError(f"store.url must be null, sqlite: or postgresql://..., {url!r} is given.")
