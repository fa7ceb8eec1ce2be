"""The nodes sharing one database, and the named leases they hold: the owner store ``cluster``.

Several medgate nodes may share one PostgreSQL database (``store.url``); the work that must run on
exactly one of them at a time (the vitals bridge of a ward, a periodic job) is handed out by named
leases, e.g. ``bridge/ward-ICU``.  This module keeps two tables (schema version 1, :mod:`kernel.migrations`):

``cluster_nodes``
    One row per node id: its host and pid, roles, when it joined and its last heartbeat.  A node
    whose id is still heartbeated by another process (another host or pid, within ``ttl_s``) is
    refused (:class:`NodeIdConflict`): two processes started with the same id would otherwise each
    believe they hold that node's leases.
``cluster_leases``
    One row per lease name: its holder, when it expires, and its *epoch*.

**One clock, the database's.**  Every time written or compared here is the database's clock
(:attr:`kernel.database.Database.now_sql`, evaluated inside the statement; PostgreSQL's
``clock_timestamp()``), never a node's ``time.time()``: a node whose clock runs ahead would
otherwise take a lease before it expires, and one whose clock runs behind would keep renewing a
lease it has already lost.  Only the *durations* (``ttl_s``) come from the caller.

**Atomic hand-over.**  :meth:`ClusterStore.acquire` is one conditional UPSERT (``INSERT ... ON
CONFLICT DO UPDATE ... WHERE expired OR ours ... RETURNING``) and :meth:`ClusterStore.renew` one
``UPDATE ... WHERE holder = me RETURNING``: on PostgreSQL the conflicting row is locked and its
latest version tested, on SQLite the statement runs inside ``BEGIN IMMEDIATE``; either way, of the
nodes racing for a free lease exactly one gets a row back, and the others ``None``.

**Fencing epoch.**  A lease's ``epoch`` grows by one each time its holder changes (a release clears
the holder, so the next acquire is a change too) and never otherwise; rows are never deleted.  A
holder that writes somewhere else on the lease's behalf can pass the epoch along (a fencing token,
Kleppmann, "How to do distributed locking", 2016): a write carrying an epoch lower than one already
seen comes from a node that lost the lease while paused, and is refused there.

The threads that keep a node's membership and leases alive are :mod:`kernel.leases`.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
from dataclasses import dataclass
from typing import Sequence

from kernel.database import Database
from kernel.migrations import Migration, migrate

#: The grammar of a node id: a letter or digit, then up to 63 letters, digits, ``.``, ``_``, ``-``
#: (a host name's label, with ``_`` and ``.`` allowed).
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The longest lease name (``bridge/<ward>``, ``job/<name>``).
MAX_LEASE_NAME = 200

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS cluster_nodes (  -- the nodes sharing this database: kernel.cluster
    node_id TEXT PRIMARY KEY,      -- kernel.cluster.NODE_ID
    host TEXT NOT NULL,            -- the process holding the id: host name and pid
    pid INTEGER NOT NULL,
    roles TEXT NOT NULL,           -- JSON list of role names
    started_at REAL NOT NULL,      -- database clock (Unix seconds) at join
    heartbeat_at REAL NOT NULL     -- database clock at the last heartbeat
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cluster_leases (  -- named leases, one holder each: kernel.cluster
    name TEXT PRIMARY KEY,         -- e.g. bridge/ward-ICU
    holder TEXT,                   -- NULL: released
    expires_at REAL NOT NULL,      -- database clock (Unix seconds)
    epoch INTEGER NOT NULL         -- +1 each time the holder changes (fencing token)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cluster_leases_holder ON cluster_leases(holder);
"""
MIGRATIONS = [Migration(1, "nodes_and_leases", SCHEMA_V1)]

_NODE_COLUMNS = "node_id, host, pid, roles, started_at, heartbeat_at"
_LEASE_COLUMNS = "name, holder, expires_at, epoch"


class NodeIdConflict(RuntimeError):
    """Another live process holds this node id (the message names it, its host, pid and heartbeat age)."""


@dataclass(frozen=True)
class Node:
    """A member of the cluster as last recorded; times are the database's clock, Unix seconds."""

    node_id: str
    host: str
    pid: int
    roles: tuple[str, ...]
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class Lease:
    """A named lease held by ``holder`` until ``expires_at`` (database clock); ``epoch`` is its
    fencing token, one more each time the holder changed."""

    name: str
    holder: str
    expires_at: float
    epoch: int


def check_node_id(node_id: str) -> str:
    """``node_id`` when it matches :data:`NODE_ID`, else ValueError naming it."""
    if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
        raise ValueError(f"node id must match {NODE_ID.pattern} (letters, digits, '.', '_', '-';"
                         f" at most 64), {node_id!r} is given.")
    return node_id


def check_ttl(ttl_s: float, name: str = "ttl_s") -> float:
    """``ttl_s`` as a float when it is a positive finite number of seconds, else ValueError."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, {ttl_s!r} is given.")
    return float(ttl_s)


def _check_lease(name: str, holder: str) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_LEASE_NAME:
        raise ValueError(f"lease name must be a non-empty string of at most {MAX_LEASE_NAME} characters,"
                         f" {name!r} is given.")
    if not isinstance(holder, str) or not holder:
        raise ValueError(f"holder must be a non-empty string, {holder!r} is given.")


def _node(row) -> Node:
    return Node(row[0], row[1], int(row[2]), tuple(json.loads(row[3])), float(row[4]), float(row[5]))


def _lease(row) -> Lease:
    return Lease(row[0], row[1], float(row[2]), int(row[3]))


class ClusterStore:
    """The ``cluster`` owner store on ``database`` (SQLite or PostgreSQL); creates its tables.

    Give it a connection of its own where the process has long transactions elsewhere: a
    renewal waits for the connection's writer lock, and a lease late to renew is lost."""

    def __init__(self, database: Database) -> None:
        self.database = database
        migrate(database, "cluster", MIGRATIONS)
        now = database.now_sql
        self._join_sql = (
            # one reading of the clock (SQLite needs the WHERE before an UPSERT's ON CONFLICT)
            f"INSERT INTO cluster_nodes({_NODE_COLUMNS}) SELECT ?, ?, ?, ?, clock.t, clock.t"
            f" FROM (SELECT {now} AS t) AS clock WHERE true"
            " ON CONFLICT(node_id) DO UPDATE SET host=excluded.host, pid=excluded.pid, roles=excluded.roles,"
            " started_at=excluded.started_at, heartbeat_at=excluded.heartbeat_at"
            " WHERE cluster_nodes.heartbeat_at < excluded.heartbeat_at - ?"
            " OR (cluster_nodes.host = excluded.host AND cluster_nodes.pid = excluded.pid)"
            f" RETURNING {_NODE_COLUMNS}")
        self._holder_age_sql = f"SELECT host, pid, {now} - heartbeat_at FROM cluster_nodes WHERE node_id=?"
        self._heartbeat_sql = (f"UPDATE cluster_nodes SET heartbeat_at = {now}"
                               " WHERE node_id=? AND host=? AND pid=? RETURNING node_id")
        self._acquire_sql = (
            f"INSERT INTO cluster_leases({_LEASE_COLUMNS}) VALUES (?, ?, {now} + ?, 1)"
            " ON CONFLICT(name) DO UPDATE SET holder=excluded.holder, expires_at=excluded.expires_at,"
            " epoch = CASE WHEN cluster_leases.holder = excluded.holder THEN cluster_leases.epoch"
            " ELSE cluster_leases.epoch + 1 END"
            f" WHERE cluster_leases.holder IS NULL OR cluster_leases.expires_at <= {now}"
            " OR cluster_leases.holder = excluded.holder"
            f" RETURNING {_LEASE_COLUMNS}")
        self._renew_sql = (f"UPDATE cluster_leases SET expires_at = {now} + ? WHERE name=? AND holder=?"
                           f" RETURNING {_LEASE_COLUMNS}")
        self._release_sql = f"UPDATE cluster_leases SET holder=NULL, expires_at={now} WHERE name=? AND holder=?"
        self._release_all_sql = f"UPDATE cluster_leases SET holder=NULL, expires_at={now} WHERE holder=?"
        self._holder_sql = f"SELECT holder FROM cluster_leases WHERE name=? AND expires_at > {now}"
        self._live_leases_sql = (f"SELECT {_LEASE_COLUMNS} FROM cluster_leases WHERE holder IS NOT NULL"
                                 f" AND expires_at > {now} AND substr(name, 1, ?) = ? ORDER BY name")
        self._all_leases_sql = (f"SELECT {_LEASE_COLUMNS} FROM cluster_leases WHERE holder IS NOT NULL"
                                " AND substr(name, 1, ?) = ? ORDER BY name")
        self._nodes_sql = f"SELECT {_NODE_COLUMNS} FROM cluster_nodes ORDER BY node_id"
        self._live_nodes_sql = (f"SELECT {_NODE_COLUMNS} FROM cluster_nodes WHERE heartbeat_at >= {now} - ?"
                                " ORDER BY node_id")

    # -- membership ----------------------------------------------------------------------------
    def join(self, node_id: str, roles: Sequence[str], ttl_s: float, *, host: str | None = None,
             pid: int | None = None) -> Node:
        """Register this process (``host``, ``pid``: this machine's name and this process's, by
        default) as ``node_id`` with ``roles``, its heartbeat now.

        Raises
        ------
        ValueError
            ``node_id`` does not match :data:`NODE_ID`, or ``ttl_s`` is not a positive number.
        NodeIdConflict
            another process (another host or pid) heartbeated as ``node_id`` within ``ttl_s``.
        """
        check_node_id(node_id)
        ttl_s = check_ttl(ttl_s)
        host, pid = _process(host, pid)
        if isinstance(roles, str) or not all(isinstance(r, str) and r for r in roles):
            raise ValueError(f"roles must be a sequence of non-empty strings, {roles!r} is given.")
        with self.database.transaction() as db:
            rows = db.execute(self._join_sql, (node_id, host, pid, json.dumps(list(roles)), ttl_s)).fetchall()
            if rows:
                return _node(rows[0])
            other = db.execute(self._holder_age_sql, (node_id,)).fetchall()
        other_host, other_pid, age = other[0] if other else ("?", "?", float("nan"))
        raise NodeIdConflict(
            f"node id {node_id!r} is held by another process: host {other_host!r}, pid {other_pid},"
            f" last heartbeat {float(age):.1f} s ago (within the {ttl_s:g} s ttl); give this node another"
            " id, or stop that one (its id is free once its heartbeat is older than the ttl)")

    def heartbeat(self, node_id: str, *, host: str | None = None, pid: int | None = None) -> bool:
        """Record that ``node_id`` is alive now; False when its row is no longer this process's
        (another process joined as it, or the node left)."""
        host, pid = _process(host, pid)
        with self.database.transaction() as db:
            return bool(db.execute(self._heartbeat_sql, (node_id, host, pid)).fetchall())

    def leave(self, node_id: str) -> None:
        """Remove ``node_id`` from the cluster and release every lease it holds."""
        with self.database.transaction() as db:
            db.execute(self._release_all_sql, (node_id,))
            db.execute("DELETE FROM cluster_nodes WHERE node_id=?", (node_id,))

    def nodes(self, live_within_s: float | None = None) -> list[Node]:
        """The nodes, by id; with ``live_within_s``, only those heartbeated within it."""
        if live_within_s is None:
            return [_node(r) for r in self.database.rows(self._nodes_sql)]
        return [_node(r) for r in self.database.rows(self._live_nodes_sql,
                                                      (check_ttl(live_within_s, "live_within_s"),))]

    # -- leases --------------------------------------------------------------------------------
    def acquire(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take lease ``name`` for ``holder`` until ``ttl_s`` from now when it is free, expired, or
        already ``holder``'s (then it is renewed, same epoch); None when another holds it unexpired."""
        _check_lease(name, holder)
        ttl_s = check_ttl(ttl_s)
        with self.database.transaction() as db:
            rows = db.execute(self._acquire_sql, (name, holder, ttl_s)).fetchall()
        return _lease(rows[0]) if rows else None

    def renew(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Extend ``holder``'s lease ``name`` to ``ttl_s`` from now; None when it is no longer
        ``holder``'s (it expired and another took it, or it was released)."""
        _check_lease(name, holder)
        ttl_s = check_ttl(ttl_s)
        with self.database.transaction() as db:
            rows = db.execute(self._renew_sql, (ttl_s, name, holder)).fetchall()
        return _lease(rows[0]) if rows else None

    def release(self, name: str, holder: str) -> None:
        """Give lease ``name`` up when ``holder`` holds it (nothing otherwise); it is free at once."""
        _check_lease(name, holder)
        with self.database.transaction() as db:
            db.execute(self._release_sql, (name, holder))

    def holder(self, name: str) -> str | None:
        """Who holds lease ``name`` unexpired, or None."""
        rows = self.database.rows(self._holder_sql, (name,))
        return rows[0][0] if rows else None

    def leases(self, prefix: str = "", *, include_expired: bool = False) -> list[Lease]:
        """The held leases whose names start with ``prefix``, by name: the unexpired ones, or also
        those expired but not yet taken nor released (``include_expired``: a dead node's)."""
        sql = self._all_leases_sql if include_expired else self._live_leases_sql
        return [_lease(r) for r in self.database.rows(sql, (len(prefix), prefix))]

    def now(self) -> float:
        """The database's clock, Unix seconds (the clock every lease is dated by)."""
        return self.database.now()


def _process(host: str | None, pid: int | None) -> tuple[str, int]:
    return (socket.gethostname() if host is None else host), (os.getpid() if pid is None else int(pid))
