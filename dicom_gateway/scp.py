"""DICOM Storage SCP: C-ECHO and C-STORE (PS3.4 Annex A and B) with pynetdicom.

Each C-STORE is decoded in ``try``, checked, written durably to the spool (temp file, fsync,
rename, directory fsync) and recorded in the store *before* success is returned.  Bad input gets a
specific failure status (see :class:`dicom_gateway.status.StoreStatus`), a log line with the
reason, and the server keeps running.  Completion is decided by
:class:`dicom_gateway.completion.StudyAssembler`; the SCP only reports arrivals and the end of
each association.

Associations are checked when requested: called AE title, the calling-AE allow-list with source
address, and the spool's free-space watermark; each rejection is logged with its reason.  With a
TLS context the same AE also listens on a second, TLS port.
"""
from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom import sop_class as sc

from dicom_gateway import ledger, reactor
from dicom_gateway.completion import StudyAssembler, StudyCallback
from dicom_gateway.intake import GROUP_BY, STORAGE_SOP_CLASSES, SUPPORTED_SOP_CLASSES, Intake
from dicom_gateway.retention import below_watermark, purge_processed
from dicom_gateway.routing import DEFAULT_RULES, Rule
from dicom_gateway.security import AllowList
from dicom_gateway.status import RejectReason, RejectResult, RejectSource, StoreStatus
from dicom_gateway.storage import remove_temporary_files

log = logging.getLogger("medgate.dicom")

class StorageScp:
    """The gateway's listening AE.

    Parameters
    ----------
    ae_title, host, port
        Our AE title and the address to bind (``port=0`` picks a free port, see :attr:`port`).
    store
        The local store (instances and studies tables, plus :mod:`dicom_gateway.ledger`'s).
    spool
        Directory that receives instance files.
    on_study_complete
        Called with ``(study_uid, model)`` once per complete, routed study (or series) and model.
    max_associations
        Concurrent associations; more are rejected by pynetdicom (local limit exceeded).
    rules
        Routing rules (:func:`dicom_gateway.routing.rules_from_config`).
    allow
        Calling AE titles with source addresses; empty allows all.
    tls_port, ssl_context
        A second, TLS listening port (``tls_port=0`` picks one, see :attr:`tls_port`).
    group_by, quiet_period_s, poll_interval_s
        Completion grouping and timing (:class:`~dicom_gateway.completion.StudyAssembler`).
    min_free_bytes
        Free-space watermark of the spool's file system.
    retention_days
        Processed studies older than this are deleted, checked at start and then hourly.
    max_pdu_bytes
        Our maximum receive PDU size; large PDUs mean fewer reactor rounds per instance.
    fast_reactor
        Use the event-driven reactors of :mod:`dicom_gateway.reactor` (default).
    """

    def __init__(self, ae_title: str, host: str, port: int, store, spool: Path,
                 on_study_complete: StudyCallback, *, max_associations: int = 10,
                 rules: tuple[Rule, ...] = DEFAULT_RULES, allow: AllowList | None = None,
                 tls_port: int | None = None, ssl_context: ssl.SSLContext | None = None,
                 group_by: str = "study", quiet_period_s: float = 2.0, poll_interval_s: float = 0.1,
                 min_free_bytes: int = 0, retention_days: float | None = None,
                 max_pdu_bytes: int = 1024 * 1024, fast_reactor: bool = True) -> None:
        if group_by not in GROUP_BY:
            raise ValueError(f"`group_by` must be one of {GROUP_BY}, {group_by!r} is given.")
        if (tls_port is None) != (ssl_context is None):
            raise ValueError("`tls_port` and `ssl_context` must be given together, "
                             f"tls_port={tls_port!r} and ssl_context={ssl_context!r} are given.")
        if fast_reactor:
            reactor.install()
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True
        self.ae.maximum_associations = max_associations
        self.ae.maximum_pdu_size = max_pdu_bytes
        self.ae.add_supported_context(sc.Verification)
        for uid in sorted(SUPPORTED_SOP_CLASSES):
            self.ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        self.address = (host, port)
        self.tls_address = (host, tls_port) if tls_port is not None else None
        self.ssl_context = ssl_context
        self.store = store
        self.spool = Path(spool)
        self.rules = rules
        self.allow = allow or AllowList()
        self.group_by = group_by
        self.min_free_bytes = int(min_free_bytes)
        self.retention_days = retention_days
        self._stop_housekeeping = threading.Event()
        self.intake = Intake(store, self.spool, rules, group_by=group_by, min_free_bytes=min_free_bytes)
        self.assembler = StudyAssembler(store, on_study_complete, quiet_period_s=quiet_period_s,
                                        poll_interval_s=poll_interval_s)
        self._open: dict[int, set[str]] = {}  # association id -> groups it delivered to
        self._lock = threading.Lock()
        self._servers: list = []

    @property
    def port(self) -> int:
        return self._servers[0].server_address[1] if self._servers else self.address[1]

    @property
    def tls_port(self) -> int | None:
        if len(self._servers) > 1:
            return self._servers[1].server_address[1]
        return self.tls_address[1] if self.tls_address else None

    def start(self) -> None:
        removed = remove_temporary_files(self.spool)
        if removed:
            log.info("removed %d partial spool file(s) left by an interrupted write", removed)
        self.assembler.start()
        if self.retention_days is not None:
            self._stop_housekeeping.clear()
            threading.Thread(target=self._housekeeping, name="medgate-retention", daemon=True).start()
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_association_end),
            (evt.EVT_ABORTED, self._on_association_end),
            (evt.EVT_CONN_CLOSE, self._on_association_end),
        ]
        self._servers.append(self.ae.start_server(self.address, block=False, evt_handlers=handlers))
        log.info("DICOM SCP %s listening on %s:%d", self.ae.ae_title, self.address[0], self.port)
        if self.tls_address is not None:
            self._servers.append(self.ae.start_server(self.tls_address, block=False, evt_handlers=handlers,
                                                      ssl_context=self.ssl_context))
            log.info("DICOM SCP %s listening with TLS on %s:%d", self.ae.ae_title, self.tls_address[0],
                     self.tls_port)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._servers = []
        self._stop_housekeeping.set()
        self.assembler.stop()

    def _housekeeping(self, interval_s: float = 3600.0) -> None:
        while True:
            try:
                purge_processed(self.store, self.spool, self.retention_days)
            except Exception:  # noqa: BLE001 - retry at the next round
                log.exception("retention failed")
            if self._stop_housekeeping.wait(interval_s):
                return

    # -- handlers ------------------------------------------------------------------------------
    def _on_requested(self, event: evt.Event) -> None:
        """A-ASSOCIATE-RQ received: allow-list and watermark (called AE: pynetdicom, logged here)."""
        assoc = event.assoc
        request = assoc.requestor.primitive  # requestor.ae_title is only set after negotiation
        calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
        address = assoc.requestor.address
        if called != self.ae.ae_title.strip():
            log.warning("association from %s (%s) rejected: called AE title %r is not ours (%r)",
                        calling, address, called, self.ae.ae_title)
            return  # pynetdicom sends the A-ASSOCIATE-RJ (called-AE-title-not-recognized)
        reason = self.allow.reason_to_reject(calling, address)
        if reason is not None:
            log.warning("association from %s (%s) rejected: %s", calling, address, reason)
            self._reject(assoc, RejectResult.PERMANENT, RejectSource.SERVICE_USER,
                         RejectReason.CALLING_AE_NOT_RECOGNIZED)
            return
        reason = below_watermark(self.spool, self.min_free_bytes)
        if reason is not None:
            log.error("association from %s (%s) rejected: %s", calling, address, reason)
            self._reject(assoc, RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION,
                         RejectReason.LOCAL_LIMIT_EXCEEDED)

    @staticmethod
    def _reject(assoc, result: RejectResult, source: RejectSource, reason: RejectReason) -> None:
        """Send the A-ASSOCIATE-RJ and wait until it is on the wire (as pynetdicom's own rejections
        do), before pynetdicom closes the connection."""
        assoc.acse.send_reject(int(result), int(source), int(reason))
        assoc.kill()

    def _on_echo(self, event: evt.Event) -> int:
        return StoreStatus.SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        assoc = event.assoc
        calling = assoc.requestor.ae_title
        try:
            ds: Dataset = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
            log.warning("C-STORE from %s refused: cannot decode dataset: %s", calling, exc)
            return StoreStatus.CANNOT_UNDERSTAND
        result = self.intake.accept(ds, event.encoded_dataset, calling, assoc.acceptor.ae_title,
                                    context_sop_class=str(event.context.abstract_syntax))
        if result.status != StoreStatus.SUCCESS:
            return result.status
        with self._lock:
            self._open.setdefault(id(assoc), set()).add(result.group_uid)
        if result.counted:
            self.assembler.nudge()
        return StoreStatus.SUCCESS

    def _on_association_end(self, event: evt.Event) -> None:
        with self._lock:
            groups = self._open.pop(id(event.assoc), set())
        if groups:
            ledger.mark_released(self.store, groups)
            self.assembler.nudge()
