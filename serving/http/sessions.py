"""Dashboard sessions, kept server-side: the cookie holds a random id, never a token.

``POST /v1/session`` (with a valid bearer token) opens a session: a 256-bit random id
(:func:`secrets.token_urlsafe`) goes to the browser as the HttpOnly cookie; the ``web_sessions``
table of the medgate database keeps only its SHA-256 digest with the principal, when it was
created, when it expires (``auth.cookie_max_age_s`` later) and when it was revoked.  Signing out
(``DELETE /v1/session``) revokes it, so a copied cookie stops working at once; an expired or
revoked id authenticates nobody.  The table lives in the database every ingress replica opens, so
a session opened on one replica is known (and revoked) on all of them.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from pathlib import Path
from typing import Callable

from serving.http.auth import ROLES, Principal
from kernel.database import open_database, private_connection
from kernel.database_pg import POSTGRES_SCHEMES
from kernel.migrations import Migration, migrate

#: Bytes of randomness in a session id (256 bits, OWASP Session Management: at least 64).
SESSION_ID_BYTES = 32
#: Expired and revoked rows are deleted this long after they stopped being valid.
KEEP_ENDED_S = 24 * 3600

SCHEMA = """
CREATE TABLE IF NOT EXISTS web_sessions (
    id_digest TEXT PRIMARY KEY,    -- SHA-256 hex of the session id; the id itself is not stored
    name TEXT NOT NULL,            -- principal: token name
    role TEXT NOT NULL,            -- principal: clinician | engineer | admin
    created_at REAL NOT NULL,      -- epoch seconds
    expires_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS web_sessions_expiry ON web_sessions(expires_at);
"""

#: The sessions table's schema steps in PostgreSQL (:mod:`kernel.migrations`).
PG_MIGRATIONS = (Migration(1, "web sessions", SCHEMA),)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class SessionStore:
    """Open, check and revoke sessions in the SQLite database at ``db_path`` (own connection), or in
    the PostgreSQL database when ``db_path`` is a ``postgresql://`` URL (``store.url``)."""

    def __init__(self, db_path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._pg = None
        if isinstance(db_path, str) and db_path.startswith(POSTGRES_SCHEMES):
            self._pg = open_database(db_path)
            migrate(self._pg, "sessions", PG_MIGRATIONS)
        else:
            self._db = private_connection(db_path, SCHEMA)

    def close(self) -> None:
        with self._lock:
            (self._pg or self._db).close()

    def _execute(self, sql: str, params: tuple):
        """One statement, committed at once; its cursor."""
        if self._pg is None:
            return self._db.execute(sql, params)
        with self._pg.transaction() as db:
            return db.execute(sql, params)

    def open(self, principal: Principal, max_age_s: float) -> str:
        """A new session of ``principal`` valid for ``max_age_s``; returns its id (the cookie value)."""
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, {max_age_s} is given")
        if principal.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, {principal.role!r} is given")
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = self.clock()
        with self._lock:
            self._execute("DELETE FROM web_sessions WHERE expires_at < ? OR revoked_at < ?",
                          (now - KEEP_ENDED_S, now - KEEP_ENDED_S))
            self._execute("INSERT INTO web_sessions(id_digest, name, role, created_at, expires_at)"
                          " VALUES (?, ?, ?, ?, ?)",
                          (_digest(session_id), principal.name, principal.role, now, now + max_age_s))
        return session_id

    def principal(self, session_id: str) -> Principal | None:
        """Who the session belongs to; None when it is unknown, expired or revoked."""
        if not session_id:
            return None
        with self._lock:
            row = self._execute("SELECT name, role FROM web_sessions WHERE id_digest = ?"
                                " AND revoked_at IS NULL AND expires_at > ?",
                                (_digest(session_id), self.clock())).fetchone()
        return Principal(row[0], row[1]) if row else None

    def revoke(self, session_id: str) -> bool:
        """End the session now; True when a valid session was revoked."""
        if not session_id:
            return False
        with self._lock:
            cursor = self._execute("UPDATE web_sessions SET revoked_at = ? WHERE id_digest = ?"
                                   " AND revoked_at IS NULL", (self.clock(), _digest(session_id)))
        return cursor.rowcount > 0
