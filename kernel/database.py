"""The shared SQLite database under ``state_dir``: one file, one connection, one writer lock.

Every owner store (:mod:`dicom_gateway.store`, :mod:`iomt.store`, :mod:`serving.store`) keeps its
tables in this file and reaches them through a :class:`Database`: it creates its own tables with
:meth:`Database.create`, reads with :meth:`Database.rows` and writes in :meth:`Database.transaction`.
Nothing outside the store modules writes SQL (``tests/test_stores.py``).

The database runs in WAL mode with ``synchronous=FULL``; the vitals bridge's batches commit without
the fsync (``durable=False``) and are made durable by :meth:`Database.sync_log`.  One connection is
shared by the process's threads behind a lock; SQLite serialises writers anyway.

Stdlib only: any layer may use it.
"""
from __future__ import annotations

import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from kernel.state_permissions import private_database

#: The database's file under ``state_dir`` (WAL beside it: ``-wal``, ``-shm``).
DATABASE_FILE = "medgate.sqlite3"
#: Page cache per connection: vitals write ~3 resources a message, and a 64 MiB cache instead of
#: SQLite's 2 MiB keeps the indexes' pages in memory as the tables grow.
CACHE_KIB = 64 * 1024
#: How long a statement waits for another connection's write lock (SQLite ``busy_timeout``).
BUSY_TIMEOUT_MS = 5000


def private_connection(path: str | Path, schema: str) -> sqlite3.Connection:
    """A connection of its own to the owner-only database at ``path`` (:func:`kernel.state_permissions.private_database`):
    WAL, autocommit, usable from any thread (callers serialise), a 10 s busy timeout, and
    ``schema`` applied.  The audit log and the web sessions each keep one beside the stores'."""
    db = sqlite3.connect(private_database(path), check_same_thread=False, isolation_level=None, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.executescript(schema)
    return db


def split_statements(script: str) -> list[str]:
    """The statements of an SQL ``script``, ``--`` comments removed (a ``;`` ends a statement)."""
    lines = [re.sub(r"--.*$", "", line) for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def open_database(location: str | os.PathLike, *, read_only: bool = False) -> Database:
    """The owner stores' database at ``location``: a ``postgresql://`` URL (``store.url``,
    :class:`kernel.database_pg.PostgresDatabase`) or the SQLite file's path."""
    if isinstance(location, str) and location.startswith(("postgresql://", "postgres://")):
        from kernel.database_pg import PostgresDatabase  # psycopg only for PostgreSQL users

        return PostgresDatabase(location, read_only=read_only)
    return Database(location, read_only=read_only)


def store_location(url: str | None, state_dir: str | os.PathLike) -> str | Path:
    """Where the owner stores live for ``store.url`` = ``url``: that ``postgresql://`` URL, or (None,
    ``sqlite:``) the SQLite file under ``state_dir``; :func:`open_database` opens either."""
    if url is not None and url.startswith(("postgresql://", "postgres://")):
        return url
    return database_path(state_dir)


def database_path(state_dir: str | os.PathLike) -> Path:
    """The database file under ``state_dir``."""
    return Path(state_dir) / DATABASE_FILE


class Database:
    """Thread-safe access to the SQLite database at ``path`` (created owner-only, 0600, with its
    folder 0700 when new: :func:`kernel.state_permissions.private_database`).

    ``read_only``: a connection that never writes to, nor creates, the database (``medgate
    status``); :meth:`create` then creates nothing, and a read of a table that was never created
    raises :class:`sqlite3.OperationalError`.

    :class:`kernel.database_pg.PostgresDatabase` is the same interface on PostgreSQL
    (``store.url``); :func:`open_database` picks one.
    """

    #: The SQL dialect of the connection (``sqlite`` or ``postgresql``).
    dialect = "sqlite"
    #: The errors a statement of this backend raises (``except database.errors``).
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    #: The database's clock as an SQL expression (Unix seconds, a float).  Leases held by several
    #: nodes are dated by this one clock, never by a node's own, so a node whose clock is skewed
    #: neither steals a lease early nor keeps one late (:mod:`kernel.cluster`).  SQLite's is the
    #: process's clock (one machine); PostgreSQL's is the server's.
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False) -> None:
        self.read_only = read_only
        self._lock = threading.RLock()
        self._closing: list[Callable[[], None]] = []
        if read_only:
            self.path = Path(path)
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                       isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.row_factory = sqlite3.Row
            return
        self.path = private_database(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

    # -- for owner stores ----------------------------------------------------------------------
    def create(self, schema: str, added_columns: dict[str, Sequence[tuple[str, str]]] | None = None) -> None:
        """Create an owner's tables: run ``schema`` (``CREATE ... IF NOT EXISTS`` statements), then
        add the columns of ``added_columns`` (table -> ``(name, declaration)`` pairs, columns added
        after a table's first release) that an existing table lacks.  Nothing when read-only."""
        if self.read_only:
            return
        with self.transaction() as db:
            self.create_in(db, schema, added_columns)

    def create_in(self, db: Any, schema: str,
                  added_columns: dict[str, Sequence[tuple[str, str]]] | None = None) -> None:
        """:meth:`create` inside the transaction ``db`` (:mod:`kernel.migrations`)."""
        for statement in split_statements(schema):
            db.execute(statement)
        for table, columns in (added_columns or {}).items():
            present = set(self.columns(table))
            for name, declaration in columns:
                if name not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    def columns(self, table: str) -> list[str]:
        """The column names of ``table`` (none when it does not exist)."""
        with self._lock:
            return [r[1] for r in self._db.execute(f"PRAGMA table_info({table})")]

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))

    def has_index(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type='index' AND name=?", (name,)))

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """The rows of one read; for the owner stores alone."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def tuples(self, sql: str, params: Sequence[Any] | dict[str, Any], make: Callable[[tuple], Any]) -> list[Any]:
        """The rows of one read as plain tuples, each made into a record by ``make`` (e.g. a
        NamedTuple's ``_make``): the cheap path for reads of many rows; for the owner stores alone."""
        with self._lock:
            cursor = self._db.cursor()
            cursor.row_factory = None
            return list(map(make, cursor.execute(sql, params).fetchall()))

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction.  ``durable=False`` commits without waiting for the disk
        (``synchronous=NORMAL``): the commit survives a crash of the process, not of the machine,
        until the next durable commit or :meth:`sync_log` flushes it; only for records that can be
        rebuilt from a durable file (the gateway's spool) or that are flushed before they are
        acknowledged (the vitals bridge)."""
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
                try:
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # COMMIT failed (e.g. disk full): nothing is kept
                        self._db.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def now(self) -> float:
        """The database's clock (:attr:`now_sql`), Unix seconds."""
        return float(self.rows(f"SELECT {self.now_sql}")[0][0])

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (holding the writer lock) when the database is closed, before the
        connection is; an owner store writes what it keeps in memory there."""
        self._closing.append(callback)

    @property
    def location(self) -> str | Path:
        """What :func:`open_database` opens this database from again (another process's connection)."""
        return self.path

    # -- for whoever wires the process ---------------------------------------------------------
    @property
    def writer_lock(self) -> threading.RLock:
        """Held by every transaction of this connection (a checkpointer may hold the writers)."""
        return self._lock

    def defer_checkpoints(self) -> None:
        """Commits on this connection no longer run WAL checkpoints; a
        :class:`kernel.wal_checkpoint.WalCheckpointer` must run them instead."""
        with self._lock:
            self._db.execute("PRAGMA wal_autocheckpoint=0")

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

    def close(self) -> None:
        with self._lock:
            for callback in self._closing:
                callback()
            self._closing.clear()
            self._db.close()


def columns_of(record: type) -> str:
    """The column list of a record type whose fields are its table's columns (a dataclass or a
    NamedTuple): what a store selects instead of ``*``, so that a backend's own columns (PostgreSQL's
    ``rowid``, :mod:`kernel.database_pg`) stay out of its records."""
    names = getattr(record, "_fields", None) or list(getattr(record, "__dataclass_fields__", ()))
    if not names:
        raise TypeError(f"record must be a dataclass or a NamedTuple, {record!r} is given.")
    return ", ".join(names)


class Record:
    """Base of the owner stores' records (frozen dataclasses): fields by name, and also as
    ``record["field"]``, as the rows read before the stores had typed records were."""

    __slots__ = ()

    def __getitem__(self, name: str) -> Any:
        if name not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(f"{type(self).__name__} has no field {name!r}")
        return getattr(self, name)

    def keys(self) -> list[str]:
        """The field names (``dict(record)`` gives the fields)."""
        return list(self.__dataclass_fields__)  # type: ignore[attr-defined]
