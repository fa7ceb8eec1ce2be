"""The threads that keep a node in the cluster and its share of the named leases (:mod:`kernel.cluster`).

:class:`Membership` joins at :meth:`~Membership.start` (a second process started with the same node
id refuses to start there, :class:`kernel.cluster.NodeIdConflict`), heartbeats every ``ttl_s / 3``
and leaves at :meth:`~Membership.stop`.  While the database is unreachable it logs and keeps trying.

:class:`LeaseKeeper` holds a fair share of a list of lease names (say, one per ward whose vitals
bridge must run on exactly one node): every ``ttl_s / 3`` it renews the leases it holds and takes
free or expired ones until it holds ``ceil(len(names) / live nodes)`` (the live nodes with the
keeper's ``role``, when it names one).  The callbacks ``on_acquired(name)`` and ``on_lost(name)``
start and stop the work a lease guards.

**No name is left without a holder.**  The share counts nodes, not keepers: a live node that runs
no keeper for these names (not started yet, or its keeper failed) would leave its share free.  So a
name seen free for :data:`STARVED_ROUNDS` rounds in a row is taken beyond the share.  The other way,
a keeper above its share (a node joined) sheds one lease a round while every name is held, and
waits until the one it shed is taken by another before shedding the next; when nobody takes it
within :data:`STARVED_ROUNDS` rounds it takes it back and stops shedding for
:data:`SHED_RETRY_ROUNDS` rounds or until the live nodes change, so the lease does not go back and
forth.

**A lease is lost by the keeper's own clock first.**  The database dates a renewed lease
``ttl_s`` after the renewal ran; the keeper counts the same ``ttl_s`` on its monotonic clock from
the moment *before* it sent the renewal, so its own deadline falls no later than the database's.
When a renewal fails (the database unreachable, the connection broken) the keeper keeps the lease
until that deadline, then calls ``on_lost``: by the time another node can take the lease, this
one has stopped the work.  (A node's wall clock is never used: see :mod:`kernel.cluster`.)

The keeper's thread never waits on the database longer than the time left to its deadline: its
calls run on a worker thread of their own, so a call hung on a broken network (no answer, no error,
until TCP gives up minutes later) costs the lease on time instead of keeping it past its expiry.

Callbacks run on the keeper's thread, one at a time; an exception in one is logged and the keeper
goes on.  A lease whose ``on_acquired`` raised is handed back (``on_lost`` is called to undo what
was started), so that another node, or this one a round later, tries again.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from typing import Any, Callable, Sequence

from kernel.cluster import ClusterStore, Node, check_node_id, check_ttl

log = logging.getLogger("medgate.cluster")

#: Rounds a name must be seen free, in a row, before a keeper takes it beyond its share; also how
#: long a shed lease may stay free before the keeper that shed it takes it back.
STARVED_ROUNDS = 3
#: Rounds a keeper whose shed lease nobody took waits before shedding again (the live nodes unchanged).
SHED_RETRY_ROUNDS = 30


def _interval(ttl_s: float, interval_s: float | None) -> float:
    if interval_s is None:
        return ttl_s / 3
    interval_s = check_ttl(interval_s, "interval_s")
    if interval_s >= ttl_s:
        raise ValueError(f"interval_s must be shorter than ttl_s ({ttl_s:g} s), {interval_s!r} is given.")
    return interval_s


class _Worker:
    """One daemon thread running the keeper's database calls, waited for with a timeout.  While a
    call is unanswered the next is refused at once (:class:`TimeoutError`) rather than queued
    behind it."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._busy: threading.Event | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, done, box = job
            try:
                box.append((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box.append((False, e))
            done.set()

    def call(self, timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        if self._busy is not None and not self._busy.is_set():
            raise TimeoutError("the database has not answered the previous call yet")
        done, box = threading.Event(), []
        self._busy = done
        self._jobs.put((fn, args, done, box))
        if not done.wait(max(timeout_s, 0.0)):
            raise TimeoutError(f"the database did not answer within {timeout_s:.1f} s")
        ok, value = box[0]
        if ok:
            return value
        raise value

    def close(self) -> None:
        self._jobs.put(None)


class Membership:
    """This process as node ``node_id`` of ``cluster``, with ``roles``, heartbeated every
    ``interval_s`` (``ttl_s / 3`` by default).

    ``host`` and ``pid`` name the process (this machine and process by default; tests give others).
    """

    def __init__(self, cluster: ClusterStore, node_id: str, roles: Sequence[str], ttl_s: float, *,
                 host: str | None = None, pid: int | None = None, interval_s: float | None = None) -> None:
        self.cluster, self.node_id, self.roles = cluster, check_node_id(node_id), tuple(roles)
        self.ttl_s = check_ttl(ttl_s)
        self.interval_s = _interval(self.ttl_s, interval_s)
        self.host, self.pid = host, pid
        self.node: Node | None = None
        #: True while the last heartbeat was recorded (False: database unreachable, or id taken).
        self.healthy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Node:
        """Join the cluster and start heartbeating; returns the node as recorded.

        Raises
        ------
        NodeIdConflict
            another live process holds ``node_id``: this one must not start.
        """
        if self._thread is not None:
            raise RuntimeError(f"membership of {self.node_id!r} is already started")
        self.node = self.cluster.join(self.node_id, self.roles, self.ttl_s, host=self.host, pid=self.pid)
        self.healthy = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"membership-{self.node_id}", daemon=True)
        self._thread.start()
        log.info("node %s joined the cluster (roles %s)", self.node_id, ", ".join(self.roles) or "none")
        return self.node

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def beat(self) -> bool:
        """One heartbeat (the thread's round); rejoins when the row is gone, logs when it cannot."""
        try:
            if self.cluster.heartbeat(self.node_id, host=self.host, pid=self.pid):
                self.healthy = True
                return True
            # The row is not ours: the node left (or was removed), or another process took the id
            # after our heartbeats lapsed.  Rejoin when the id is free; refuse loudly when it is not.
            self.node = self.cluster.join(self.node_id, self.roles, self.ttl_s, host=self.host, pid=self.pid)
            log.warning("node %s had lost its membership row and joined again", self.node_id)
            self.healthy = True
            return True
        except Exception as e:  # noqa: BLE001 - the database unreachable, or the id taken: keep trying
            if self.healthy:
                log.error("node %s: heartbeat failed, retrying every %.1f s: %s", self.node_id, self.interval_s, e)
            self.healthy = False
            return False

    def stop(self, *, leave: bool = True) -> None:
        """Stop heartbeating and leave the cluster, releasing every lease this node holds
        (``leave=False`` lets the heartbeat lapse instead, as a node that died would).  Stop the
        node's :class:`LeaseKeeper` first: leaving takes its leases from under it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not leave:
            return
        try:
            self.cluster.leave(self.node_id)
        except Exception as e:  # noqa: BLE001 - its heartbeat lapses in ttl_s anyway
            log.error("node %s could not leave the cluster (its heartbeat lapses in %.1f s): %s",
                      self.node_id, self.ttl_s, e)
        log.info("node %s left the cluster", self.node_id)


class LeaseKeeper:
    """Holds ``holder``'s fair share of the leases ``names`` in ``cluster`` (see the module docstring).

    ``holder`` is the node id (so that :meth:`kernel.cluster.ClusterStore.leave` releases its
    leases); the live nodes counted for the fair share are those heartbeated within ``ttl_s``,
    with ``role`` among their roles when it is given (the nodes that run a keeper for ``names``),
    this keeper always counted.  ``interval_s``: the round, ``ttl_s / 3`` by default.
    ``rebalance``: shed a lease while holding more than the share (the module docstring).
    """

    def __init__(self, cluster: ClusterStore, holder: str, names: Sequence[str], ttl_s: float,
                 on_acquired: Callable[[str], None], on_lost: Callable[[str], None], *,
                 interval_s: float | None = None, rebalance: bool = True, role: str | None = None) -> None:
        if isinstance(names, str):
            raise ValueError(f"names must be a sequence of lease names, the string {names!r} is given.")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be distinct, {list(names)!r} are given.")
        if not isinstance(holder, str) or not holder:
            raise ValueError(f"holder must be a non-empty string, {holder!r} is given.")
        self.cluster, self.holder, self.names = cluster, holder, tuple(names)
        self.ttl_s = check_ttl(ttl_s)
        self.interval_s = _interval(self.ttl_s, interval_s)
        self.on_acquired, self.on_lost, self.rebalance, self.role = on_acquired, on_lost, rebalance, role
        self._prefix = os.path.commonprefix(list(self.names))
        self._round = 0
        #: name -> rounds in a row it was seen free (no unexpired holder).
        self._free_rounds: dict[str, int] = {}
        #: the lease last shed and the round it was, until another holder takes it.
        self._shed: tuple[str, int] | None = None
        #: the live nodes when a shed lease was not taken, and the round: no shedding meanwhile.
        self._shed_refused: tuple[frozenset[str], int] | None = None
        #: name -> monotonic deadline: this keeper's own bound on when the lease expires.
        self._held: dict[str, float] = {}
        #: name -> fencing epoch of each lease held, as last acquired or renewed.
        self.epochs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: _Worker | None = None

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start keeping the leases; the first round runs at once."""
        if self._thread is not None:
            raise RuntimeError(f"the lease keeper of {self.holder!r} is already started")
        self._stop.clear()
        self._worker = _Worker(f"leases-{self.holder}-db")
        self._thread = threading.Thread(target=self._run, name=f"leases-{self.holder}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_round = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_round:
                try:
                    self.step()
                except Exception:  # noqa: BLE001 - the thread must outlive any one round
                    log.exception("lease keeper %s: a round failed", self.holder)
                next_round = time.monotonic() + self.interval_s
            else:
                self._expire()
            with self._lock:
                deadlines = list(self._held.values())
            wake = min([next_round] + deadlines)
            self._stop.wait(max(wake - time.monotonic(), 0.0) + 0.001)

    def held(self) -> set[str]:
        """The names this keeper holds: ``on_acquired`` called for them, ``on_lost`` not yet."""
        with self._lock:
            return set(self._held)

    def stop(self, *, release: bool = True) -> None:
        """Stop the thread; call ``on_lost`` for each lease held, then release it (``release=False``
        leaves the leases to expire, as a node that died would)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for name in sorted(self.held()):
            self._lose(name, "the keeper stopped", level=logging.INFO)
            if release:
                self._release(name)
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # -- one round -----------------------------------------------------------------------------
    def step(self) -> None:
        """One round: renew what is held, drop what is lost, take or shed towards the fair share."""
        self._round += 1
        for name in sorted(self.held()):
            if self._stop.is_set():
                return
            self._renew(name)
        if self._stop.is_set():
            return
        try:
            nodes = self._call(self.interval_s, self.cluster.nodes, self.ttl_s)
            holders = {lease.name: lease.holder for lease in
                       self._call(self.interval_s, self.cluster.leases, self._prefix)}
        except Exception as e:  # noqa: BLE001 - no new leases while the database is unreachable
            log.warning("lease keeper %s: cannot read the live nodes and leases: %s", self.holder, e)
            return
        live = frozenset(n.node_id for n in nodes if self.role is None or self.role in n.roles) | {self.holder}
        share = math.ceil(len(self.names) / len(live))
        held = self.held()
        unheld = {n for n in self.names if n not in holders}
        # what this keeper may take: the free names, and any the database says are this holder's
        # without the keeper knowing (an acquire whose answer came too late)
        free = [n for n in self.names if n not in held and holders.get(n, self.holder) == self.holder]
        for name in self.names:
            self._free_rounds[name] = self._free_rounds.get(name, 0) + 1 if name in unheld else 0
        if self._shed is not None:
            name, at = self._shed
            if holders.get(name, self.holder) != self.holder:
                self._shed = None  # another took it: the next may be shed
            elif self._round - at >= STARVED_ROUNDS:
                self._shed, self._shed_refused = None, (live, self._round)
                log.info("lease keeper %s: the lease %s it shed was not taken; shedding paused", self.holder, name)
        if self._shed_refused is not None and (self._shed_refused[0] != live or
                                               self._round - self._shed_refused[1] >= SHED_RETRY_ROUNDS):
            self._shed_refused = None
        if (self.rebalance and len(held) > share and not unheld and self._shed is None
                and self._shed_refused is None):
            name = sorted(held)[-1]
            self._lose(name, f"shed to the fair share of {share} among {len(live)} nodes", level=logging.INFO)
            self._release(name)
            self._shed = (name, self._round)
            return
        shed = self._shed[0] if self._shed else None
        for name in self._candidates(free):
            if self._stop.is_set():
                return
            if len(self.held()) < share and name != shed:
                self._acquire(name)
            elif self._free_rounds.get(name, 0) >= STARVED_ROUNDS:
                log.info("lease %s free for %d rounds: taken by %s beyond its share of %d",
                         name, self._free_rounds[name], self.holder, share)
                self._acquire(name)

    def _call(self, timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        if self._worker is None:  # step() driven without start(): in the caller's thread
            return fn(*args)
        return self._worker.call(timeout_s, fn, *args)

    def _candidates(self, free: list[str]) -> list[str]:
        """``free``, each keeper starting at its own place in the list, so that keepers starting
        together do not all race for the same first names."""
        if not free:
            return free
        start = sum(self.holder.encode()) % len(free)
        return free[start:] + free[:start]

    def _acquire(self, name: str) -> None:
        sent = time.monotonic()
        try:
            lease = self._call(self.interval_s, self.cluster.acquire, name, self.holder, self.ttl_s)
        except Exception as e:  # noqa: BLE001 - another round
            log.warning("lease %s: acquire by %s failed: %s", name, self.holder, e)
            return
        if lease is None:
            return
        with self._lock:
            self._held[name] = sent + self.ttl_s
            self.epochs[name] = lease.epoch
        log.info("lease %s acquired by %s (epoch %d)", name, self.holder, lease.epoch)
        try:
            self.on_acquired(name)
        except Exception:  # noqa: BLE001 - the work did not start: hand the lease to someone who can
            log.exception("lease %s: on_acquired failed; undoing it and handing the lease back", name)
            self._lose(name, "on_acquired failed")
            self._release(name)

    def _renew(self, name: str) -> None:
        sent = time.monotonic()
        with self._lock:
            deadline = self._held.get(name)
        if deadline is None:
            return
        if sent >= deadline:
            self._lose(name, "not renewed before it expired")
            return
        try:
            lease = self._call(deadline - sent, self.cluster.renew, name, self.holder, self.ttl_s)
        except Exception as e:  # noqa: BLE001 - kept until its deadline, then lost
            if time.monotonic() >= deadline:
                self._lose(name, f"not renewed before it expired ({e})")
            else:
                log.warning("lease %s: renewal by %s failed, %.1f s left: %s",
                            name, self.holder, deadline - time.monotonic(), e)
            return
        if lease is None:
            self._lose(name, "taken by another holder or released")
            return
        with self._lock:
            if name in self._held:
                self._held[name] = sent + self.ttl_s
                self.epochs[name] = lease.epoch

    def _expire(self) -> None:
        """Lose every lease past its deadline (between rounds)."""
        now = time.monotonic()
        with self._lock:
            late = [name for name, deadline in self._held.items() if deadline <= now]
        for name in late:
            self._lose(name, "not renewed before it expired")

    def _lose(self, name: str, why: str, level: int = logging.WARNING) -> None:
        with self._lock:
            if self._held.pop(name, None) is None:
                return
            self.epochs.pop(name, None)
        log.log(level, "lease %s given up by %s: %s", name, self.holder, why)
        try:
            self.on_lost(name)
        except Exception:  # noqa: BLE001 - the keeper goes on
            log.exception("lease %s: on_lost failed", name)

    def _release(self, name: str) -> None:
        try:
            self._call(self.ttl_s, self.cluster.release, name, self.holder)
        except Exception as e:  # noqa: BLE001 - it expires in ttl_s anyway
            log.warning("lease %s: release by %s failed (it expires within %.1f s): %s",
                        name, self.holder, self.ttl_s, e)
