"""Versioned schema migrations of the owner stores, on SQLite and on PostgreSQL alike.

Each owner (``gateway``, ``vitals``, ``serving``, ``feedback``) lists its schema as numbered steps,
:class:`Migration` ``(version, name, sql)``, version 1 being the schema as it stood when versions
began.  :func:`migrate` applies, at start and in one transaction, the steps newer than the version
recorded for the owner in ``schema_versions(owner, version, applied_at)``, and records the last.

- A database without a row for the owner (new, or written before versions began: tables present,
  no ``schema_versions``) gets step 1 (``CREATE ... IF NOT EXISTS``: existing tables are kept) and
  the columns added before versions began (``legacy_columns``, what
  :meth:`kernel.database.Database.create` added), and is then at version 1: it is *adopted*.
- A database whose version for the owner is newer than the code's last step was written by a newer
  medgate: :class:`NewerSchemaError`, naming the owner, the version found and the versions known; the
  process refuses to start rather than write rows an older schema does not describe.

On PostgreSQL the nodes starting together take a transaction-scoped advisory lock first
(PostgreSQL 15 docs 9.27.10), so one applies each step and the others find it recorded.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Sequence

from kernel.database import Database

#: The table of versions, one row per owner.
VERSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_versions (
    owner TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL
) WITHOUT ROWID;
"""
#: The advisory lock key held while migrating on PostgreSQL (any constant shared by the nodes).
MIGRATION_LOCK_KEY = 7262002
_OWNER = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class NewerSchemaError(RuntimeError):
    """The database was migrated by a newer medgate than this one."""


@dataclass(frozen=True)
class Migration:
    """One step of an owner's schema: after it, the schema is at ``version``."""

    version: int
    name: str
    sql: str

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"version must be a positive integer, {self.version!r} is given.")
        if not self.sql.strip():
            raise ValueError(f"migration {self.version} ({self.name}) has no SQL.")


def _check(owner: str, steps: Sequence[Migration]) -> None:
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise ValueError(f"owner must match {_OWNER.pattern}, {owner!r} is given.")
    versions = [s.version for s in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise ValueError(f"{owner}'s migrations must be numbered 1, 2, ... in order, {versions} are given.")


def version(database: Database, owner: str) -> int | None:
    """The schema version recorded for ``owner``, or None (none recorded)."""
    if not database.has_table("schema_versions"):
        return None
    rows = database.rows("SELECT version FROM schema_versions WHERE owner=?", (owner,))
    return int(rows[0][0]) if rows else None


def migrate(database: Database, owner: str, steps: Sequence[Migration],
            legacy_columns: dict[str, Sequence[tuple[str, str]]] | None = None) -> int:
    """Bring ``owner``'s tables in ``database`` to the last of ``steps`` (see the module docstring);
    returns the version.  Read-only databases are only checked.

    Raises
    ------
    ValueError
        ``owner`` is not a plain lower-case name, or ``steps`` are not numbered 1, 2, ...
    NewerSchemaError
        the database's version for ``owner`` is newer than the last of ``steps``.
    """
    _check(owner, steps)
    known = steps[-1].version
    if database.read_only:
        found = version(database, owner)
        _refuse_newer(owner, found, known)
        return found or 0
    with database.transaction() as db:
        if database.dialect == "postgresql":
            db.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        database.create_in(db, VERSIONS_SCHEMA)
        row = db.execute("SELECT version FROM schema_versions WHERE owner=?", (owner,)).fetchone()
        found = int(row[0]) if row else None
        _refuse_newer(owner, found, known)
        if found is None:  # new, or written before versions began: adopted as version 1
            database.create_in(db, steps[0].sql, legacy_columns)
            found = 1
        for step in steps[found:]:
            database.create_in(db, step.sql)
        db.execute("INSERT OR REPLACE INTO schema_versions(owner, version, applied_at) VALUES (?,?,?)",
                   (owner, known, time.time()))
    return known


def _refuse_newer(owner: str, found: int | None, known: int) -> None:
    if found is not None and found > known:
        raise NewerSchemaError(
            f"the database's schema of {owner!r} is at version {found}, newer than this medgate knows"
            f" (versions 1 to {known}): it was migrated by a newer release; run that release, or point"
            " store.url at another database")
