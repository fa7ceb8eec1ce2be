"""The durable delivery outbox shared by both data paths.

Every external side effect (an SR to PACS, an alert on MQTT, a resource to a FHIR server) is first
written to the ``outbox`` table with an idempotency key, then attempted by one worker thread.
A sender that raises :class:`~kernel.delivery_errors.PermanentDeliveryError` (the peer refused
the payload) sends the item to ``dead`` at once with the peer's reason; any other failure is
retried with exponential backoff (no sooner than a peer's Retry-After), and after ``max_attempts``
failures the item is marked ``dead`` with the last reason.  A dead item stays visible
(:meth:`Outbox.items`, ``medgate outbox list``) until :meth:`Outbox.retry` (``medgate outbox
retry``) puts it back.  Items survive a restart.  The items live in the SQLite store, or in PostgreSQL when ``store.url`` names one
(see :mod:`serving.delivery.outbox_db`).  Each item keeps the correlation id in effect when it was
enqueued (:mod:`kernel.correlation`); its delivery attempt, and its log lines, run under it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Iterable

from kernel import correlation
from kernel.delivery_errors import PermanentDeliveryError
from kernel.periodic import PeriodicWorker
from serving.config import OutboxConfig
from serving.delivery.outbox_db import PostgresOutboxDb
from serving.store import OutboxItem, SqliteOutbox, Store

log = logging.getLogger("medgate.outbox")

#: A sender delivers one payload to one destination or raises with a reason: a
#: :class:`~kernel.delivery_errors.DeliveryError` says whether retrying can help.
Sender = Callable[[str, dict[str, Any]], None]


class Outbox(PeriodicWorker):
    """Persist, then deliver with retries.

    Parameters
    ----------
    store
        The server's store (its SQLite outbox is used), or an outbox backend from
        :func:`serving.delivery.outbox_db.open_outbox_db`.
    senders
        Delivery function per kind (``dicom``, ``mqtt``, ``fhir``).
    max_attempts
        Failures before an item is dead-lettered; a permanent failure dead-letters it at once.
    backoff_base_s, backoff_max_s
        Delay after the n-th failure is ``min(backoff_base_s * 2**(n-1), backoff_max_s)``, or the
        peer's Retry-After when longer.
    Each of these left out takes its default from :class:`serving.config.OutboxConfig`, the one
    place the defaults are written.
    """

    worker_name = "medgate-outbox"

    def __init__(self, store: Store | SqliteOutbox | PostgresOutboxDb, senders: dict[str, Sender], *, max_attempts: int | None = None,
                 backoff_base_s: float | None = None, backoff_max_s: float | None = None,
                 poll_interval_s: float = 0.5, delivers: Iterable[str] | None = None) -> None:
        defaults = OutboxConfig()
        max_attempts = defaults.max_attempts if max_attempts is None else max_attempts
        backoff_base_s = defaults.backoff_base_s if backoff_base_s is None else backoff_base_s
        backoff_max_s = defaults.backoff_max_s if backoff_max_s is None else backoff_max_s
        if max_attempts < 1:
            raise ValueError(f"`max_attempts` must be positive, {max_attempts} is given.")
        self.db = store if isinstance(store, (SqliteOutbox, PostgresOutboxDb)) else store.outbox
        self.senders = dict(senders)
        # the kinds this node attempts (default: every item, one without a sender failing with the
        # reason); on a cluster the others are left pending for a node of another role (serving.server)
        self.delivers = None if delivers is None else tuple(sorted(set(delivers) & set(self.senders)))
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.poll_interval_s = poll_interval_s
        self._delivering = threading.Lock()  # the worker and any direct caller never send one item twice
        super().__init__(poll_interval_s)

    def enqueue(self, key: str, kind: str, destination: str, payload: dict[str, Any],
                correlation_id: str | None = None) -> bool:
        """Persist one delivery under ``correlation_id`` (default: the one in effect); returns False
        when ``key`` was already enqueued (idempotent)."""
        if kind not in self.senders:
            raise ValueError(f"`kind` must be one of {sorted(self.senders)}, {kind!r} is given.")
        inserted = self.db.insert(key, kind, destination, json.dumps(payload),
                                  correlation_id or correlation.current_id())
        self._wake.set()
        return inserted

    def notify(self) -> None:
        """Wake the worker: items were written to the store by someone else."""
        self._wake.set()

    def items(self, status: str | None = None) -> list[OutboxItem]:
        """Every item (or those with ``status``: pending, sent, dead), oldest first."""
        return self.db.items(status)

    def retry(self, keys: list[str] | None = None) -> int:
        """Put dead items (all, or those with ``keys``) back to pending; returns how many."""
        count = self.db.retry(keys)
        self._wake.set()
        return count

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of items per ``(kind, status)``, for metrics."""
        return self.db.counts()

    def deliver_due(self) -> int:
        """Attempt every pending item that is due; returns how many were delivered."""
        delivered = 0
        with self._delivering:
            for item in self.db.claim_due(time.time(), self.delivers):
                if self._stop.is_set():
                    break
                with correlation.bound(item.correlation_id):
                    delivered += self._attempt(item)
        return delivered

    def _attempt(self, item: OutboxItem) -> bool:
        try:
            self.senders[item.kind](item.destination, json.loads(item.payload))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a retry or a dead letter
            self._failed(item, exc)
            return False
        self.db.mark_sent(item.id)
        log.info("delivered %s to %s", item.key, item.destination)
        return True

    def _failed(self, item: OutboxItem, exc: Exception) -> None:
        attempts = item.attempts + 1
        permanent = isinstance(exc, PermanentDeliveryError)
        status = "dead" if permanent or attempts >= self.max_attempts else "pending"
        delay = min(self.backoff_base_s * 2 ** (attempts - 1), self.backoff_max_s)
        retry_after_s = getattr(exc, "retry_after_s", None)  # TransientDeliveryError
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        reason = f"{type(exc).__name__}: {exc}"
        self.db.mark_failed(item.id, status, attempts, time.time() + delay, reason)
        if permanent:
            log.error("delivery %s to %s refused permanently (attempt %d, dead): %s", item.key,
                      item.destination, attempts, reason)
        else:
            log.warning("delivery %s to %s failed (attempt %d, %s): %s", item.key,
                        item.destination, attempts, status, reason)

    def tick(self) -> None:
        self.deliver_due()
