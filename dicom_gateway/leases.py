"""The leases one node holds on the dispatches it works on, kept alive while it works.

A dispatch (one complete group handed to one model, :mod:`dicom_gateway.ledger`) is leased to the
node that claimed it: when its group completed there, when the node took it over from a node whose
lease expired (:func:`dicom_gateway.ledger.take_over_expired`), or at the node's start
(:func:`dicom_gateway.ledger.resume_dispatches`).  Lease ends are dated by the database's clock,
never by a node's own, so a node whose clock is wrong neither takes a live lease nor keeps an
expired one.

:class:`DispatchLeases` is the node's side: the consumer (the imaging pipeline) :meth:`~DispatchLeases.hold` s
each dispatch it queues, and a small thread renews every held lease each ``lease_s / 3``, so a model
call of many minutes (a CT on a CPU) stays this node's although the lease is short.  Before it
starts, and again before it writes any result, the consumer :meth:`~DispatchLeases.confirm` s the
lease (a renewal that answers whether the dispatch is still this node's): a node that lost its
lease (the database was out of its reach for longer than the lease, and another node took the
dispatch over) writes nothing.  :meth:`~DispatchLeases.release` marks it processed, which ends the
lease; when the database does not answer, the thread tries again.

A node that dies stops renewing: after at most ``lease_s`` another node's sweep takes its dispatches
over.  Result objects derive their UIDs from the source and the model version, so a dispatch
processed again after a takeover replaces the objects of an interrupted run instead of adding more.
"""
from __future__ import annotations

import logging
import threading

from dicom_gateway import ledger
from dicom_gateway.config import DicomConfig
from kernel.cluster import check_node_id

_DICOM = DicomConfig()  # the ``dicom:`` section's defaults, the constructor's defaults

log = logging.getLogger("medgate.dicom")

Key = tuple[str, str]  # (study_uid, model)


class LeaseLost(RuntimeError):
    """The dispatch is not this node's any more (another node took it over, or it was processed)."""


class DispatchLeases:
    """The dispatches this node holds, their leases renewed from one thread.

    Parameters
    ----------
    store
        The gateway's store (or one carrying it as ``.gateway``).
    node_id
        This node's id, the owner of the leases (unique per node; ``local`` for a gateway alone).
    lease_s
        Length of a lease (default ``dicom.completion.lease_s``); renewed every ``lease_s / 3``.
    """

    def __init__(self, store, *, node_id: str = ledger.LOCAL_NODE,
                 lease_s: float = _DICOM.completion.lease_s) -> None:
        self.store = store
        self.node_id = check_node_id(node_id)
        self.lease_s = ledger.check_lease(lease_s)
        self._held: set[Key] = set()
        self._finishing: set[Key] = set()  # processed, its mark not committed yet (database out of reach)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def renew_interval_s(self) -> float:
        return self.lease_s / 3

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="medgate-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the leases still held lapse after ``lease_s``; this node resumes them at
        its next start, or another node takes them over)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def hold(self, study_uid: str, model: str) -> bool:
        """Keep renewing the lease on ``(study_uid, model)``; False when this node holds it already
        (queued or in progress here: the caller must not queue it twice)."""
        key = (study_uid, model)
        with self._lock:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    def held(self) -> set[Key]:
        with self._lock:
            return set(self._held)

    def confirm(self, study_uid: str, model: str) -> bool:
        """Renew the lease now: True when the dispatch is this node's to process (its lease is
        renewed, or the gateway has no dispatch of it: work that did not come through the gateway);
        False when another node took it over or it was processed (the caller drops it).  Raises
        when the database cannot be reached."""
        key = (study_uid, model)
        state = ledger.renew_leases(self.store, self.node_id, [key], self.lease_s)[key]
        if state is False:
            self.drop(study_uid, model)
        return state is not False

    def drop(self, study_uid: str, model: str) -> None:
        """Stop renewing the lease on ``(study_uid, model)`` without processing it: it lapses, and
        the takeover sweep of this node or another one claims it again."""
        with self._lock:
            self._held.discard((study_uid, model))

    def release(self, study_uid: str, model: str) -> None:
        """``(study_uid, model)`` is processed: mark it (which ends its lease) and stop renewing.
        When the database does not answer, the lease is kept alive and the mark tried again each
        round, so the dispatch is not run a second time."""
        key = (study_uid, model)
        try:
            ledger.mark_processed(self.store, study_uid, model)
        except Exception as exc:  # noqa: BLE001 - kept, marked again by the thread
            log.warning("study %s: %s processed, but the database did not take the mark (%s); trying again"
                        " every %.0f s", study_uid, model, exc, self.renew_interval_s)
            with self._lock:
                self._finishing.add(key)
            return
        with self._lock:
            self._held.discard(key)

    def renew(self) -> dict[Key, bool | None]:
        """One round: the pending marks, then every held lease; the leases found lost are dropped
        (logged).  Per key renewed: True, False (lost), None (not a gateway dispatch)."""
        with self._lock:
            finishing = sorted(self._finishing)
        for study_uid, model in finishing:
            ledger.mark_processed(self.store, study_uid, model)
            with self._lock:
                self._finishing.discard((study_uid, model))
                self._held.discard((study_uid, model))
        with self._lock:
            keys = sorted(self._held)
        states = ledger.renew_leases(self.store, self.node_id, keys, self.lease_s) if keys else {}
        for (study_uid, model), state in states.items():
            if state is False:
                log.warning("study %s: the lease on %s is no longer node %s's (taken over, or processed)",
                            study_uid, model, self.node_id)
                self.drop(study_uid, model)
        return states

    def _run(self) -> None:
        while not self._stop.wait(self.renew_interval_s):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                if not self._failing:
                    log.error("leases of node %s not renewed (%s); held dispatches are taken over by other"
                              " nodes once their leases expire", self.node_id, exc)
                self._failing = True
                continue
            if self._failing:
                log.info("leases of node %s renewed again", self.node_id)
            self._failing = False
