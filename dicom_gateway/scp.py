"""DICOM Storage SCP: C-ECHO and C-STORE (PS3.4 Annex A and B).

Associations are served by :class:`dicom_gateway.acceptor.Acceptor` (one thread each, blocking
reads, no polling).  Each C-STORE's data set starts on its way to disk at once (into a pre-written
slot, :mod:`dicom_gateway.slots`, or the classic temp file); meanwhile it is checked for a
well-formed encoding, decoded and checked; the write is flushed and put in place *before* success
is returned.  The instance's row is committed in the background (:mod:`dicom_gateway.recorder`):
the spool file is the durable record, and every row is committed before A-RELEASE-RP is sent.  Bad input gets a specific failure status (see
:class:`dicom_gateway.status.StoreStatus`), a log line with the reason, and the server keeps
running.  Completion is decided by :class:`dicom_gateway.completion.StudyAssembler`; the SCP only
reports arrivals and the end of each association.

Associations are checked when requested: called AE title, the calling-AE allow-list with source
address (and, on the TLS port, the AE title named by the client certificate when the allow-list
asks for it), and the spool's free-space watermark; each rejection is logged with its reason.
With a TLS context the same AE also listens on a second, TLS port, or on that port alone.

When the database stops answering (a node that lost PostgreSQL), the rows already acknowledged are
kept and committed again until it answers (:class:`dicom_gateway.recorder.Recorder`); meanwhile each
C-STORE is refused, Out of Resources (0xA700) with the Error Comment "database unavailable", and
nothing of it is kept: the sender sends it again later.  Acceptance resumes by itself with the
first commit that succeeds.
"""
from __future__ import annotations

import logging
import ssl
import threading
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, FileMetaDataset, dcmread
from pynetdicom import ALL_TRANSFER_SYNTAXES
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import decode
from pynetdicom.presentation import build_context

from dicom_gateway import ledger
from dicom_gateway.acceptor import Acceptor, Association, Rejection
from dicom_gateway.completion import StudyAssembler, StudyCallback
from dicom_gateway.config import DicomConfig
from dicom_gateway.dimse import Response
from dicom_gateway.header import read_header
from dicom_gateway.intake import GROUP_BY, STORAGE_SOP_CLASSES, SUPPORTED_SOP_CLASSES, Intake
from dicom_gateway.recorder import Recorder
from dicom_gateway.retention import below_watermark, purge_processed
from dicom_gateway.routing import DEFAULT_RULES, Rule
from dicom_gateway.security import AllowList
from dicom_gateway.status import PresentationReason, RejectResult, RejectSource, ServiceUserReason, StoreStatus
from dicom_gateway.slots import SlotPool
from dicom_gateway.storage import DirectWriter, instance_path, part10_header, remove_temporary_files
from dicom_gateway.uids import check_uid
from dicom_gateway.wellformed import Element, dataset_problem
from kernel.cluster import check_node_id

log = logging.getLogger("medgate.dicom")

__all__ = ["StorageScp", "STORAGE_SOP_CLASSES"]

_DICOM = DicomConfig()  # the ``dicom:`` section's defaults, the constructor's defaults
HOUSEKEEPING_INTERVAL_S = 3600.0  # retention is checked at start, then hourly
#: Error Comment (0000,0902) of a C-STORE refused while the database does not answer (at most 64
#: characters, :data:`dicom_gateway.dimse.ERROR_COMMENT_MAX_CHARS`).
DATABASE_UNAVAILABLE = "database unavailable: not stored, send again later"
#: With several nodes on one spool, a temporary file is taken for one a crash left (and deleted at
#: start) only when it is older than this: a write in progress on another node is younger.
TEMPORARY_FILE_AGE_S = 600.0


def slot_folder(spool: Path, node_id: str) -> Path:
    """The node's pre-written slot files (:mod:`dicom_gateway.slots`): ``<spool>/.slots`` alone,
    ``<spool>/.slots-<node_id>`` for each of several nodes sharing the spool, so that a node's start
    recovers and deletes its own slots, never another's in use."""
    return Path(spool) / (".slots" if node_id == ledger.LOCAL_NODE else f".slots-{node_id}")


class StorageScp:
    """The gateway's listening AE.

    Parameters
    ----------
    Each default is the ``dicom:`` section's (:class:`dicom_gateway.config.DicomConfig`).
    ae_title, host, port
        Our AE title and the address to bind (``port=0`` picks a free port, see :attr:`port`).
    store
        The local store (instances and studies tables, plus :mod:`dicom_gateway.ledger`'s).
    spool
        Directory that receives instance files.
    on_study_complete
        Called with ``(study_uid, model)`` once per complete, routed study (or series) and model.
    max_associations
        Concurrent associations; more are rejected (transient, local limit exceeded).
    rules
        Routing rules (:func:`dicom_gateway.routing.rules_from_config`).
    allow
        Calling AE titles with source addresses; empty allows all.
    tls_port, ssl_context
        A second, TLS listening port (``tls_port=0`` picks one, see :attr:`tls_port`).
    tls_only
        Listen on the TLS port alone: ``port`` is not opened (:attr:`port` is None).
    group_by, quiet_period_s, poll_interval_s
        Completion grouping and timing (:class:`~dicom_gateway.completion.StudyAssembler`).
    min_free_bytes
        Free-space watermark of the spool's file system (0 turns it off).
    retention_days
        Processed studies older than this are deleted, checked at start and then hourly.
    max_pdu_bytes
        Our Maximum Length Received for P-DATA-TF PDUs (0 = unlimited).
    fsync
        Flush each instance to disk before success (default); turn off only where the storage's
        write cache survives a power loss.
    slot_pool_bytes
        With ``fsync``: bytes of pre-written slot files kept ready per instance size in demand
        (:class:`dicom_gateway.slots.SlotPool`); 0 writes every instance the classic way.
    node_id
        This node's id when several share one database and spool (``local`` alone): the owner of
        the dispatches it claims (:class:`~dicom_gateway.completion.StudyAssembler`) and the name of
        its own slot folder in the spool (:func:`slot_folder`).
    lease_s
        Length of a dispatch lease (default ``dicom.completion.lease_s``).
    """

    def __init__(self, ae_title: str, host: str, port: int, store, spool: Path,
                 on_study_complete: StudyCallback, *,
                 max_associations: int = _DICOM.max_associations,
                 rules: tuple[Rule, ...] = DEFAULT_RULES, allow: AllowList | None = None,
                 tls_port: int | None = None, ssl_context: ssl.SSLContext | None = None, tls_only: bool = False,
                 group_by: str = _DICOM.completion.group_by,
                 quiet_period_s: float = _DICOM.completion.quiet_period_s,
                 poll_interval_s: float = _DICOM.completion.poll_interval_s,
                 min_free_bytes: int = _DICOM.storage.min_free_bytes,
                 retention_days: float | None = _DICOM.storage.retention_days,
                 max_pdu_bytes: int = _DICOM.max_pdu_bytes, fsync: bool = _DICOM.storage.fsync,
                 slot_pool_bytes: int = _DICOM.storage.slot_pool_bytes,
                 group_commit: bool = _DICOM.storage.group_commit,
                 node_id: str = ledger.LOCAL_NODE, lease_s: float = _DICOM.completion.lease_s) -> None:
        if group_by not in GROUP_BY:
            raise ValueError(f"`group_by` must be one of {GROUP_BY}, {group_by!r} is given.")
        if (tls_port is None) != (ssl_context is None):
            raise ValueError("`tls_port` and `ssl_context` must be given together, "
                             f"tls_port={tls_port!r} and ssl_context={ssl_context!r} are given.")
        if tls_only and ssl_context is None:
            raise ValueError("`tls_only` needs `tls_port` and `ssl_context`, none are given.")
        contexts = [build_context(sc.Verification)] + [
            build_context(uid, ALL_TRANSFER_SYNTAXES) for uid in sorted(SUPPORTED_SOP_CLASSES)]
        for context_id, context in enumerate(contexts):
            context.context_id = 2 * context_id + 1
        self.ae_title = ae_title.strip()
        self.acceptor = Acceptor(self.ae_title, contexts, self, max_associations=max_associations,
                                 max_pdu_bytes=max_pdu_bytes)
        self.address = (host, port) if not tls_only else None
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
        self._stop_orphans = threading.Event()
        self.node_id = check_node_id(node_id)
        self.slots = SlotPool(slot_folder(self.spool, self.node_id), pool_bytes=slot_pool_bytes,
                              group_commit=group_commit) if fsync and slot_pool_bytes > 0 else None
        self.intake = Intake(store, self.spool, rules, group_by=group_by, min_free_bytes=min_free_bytes,
                             writer=self.slots or DirectWriter(fsync))
        self.recorder = Recorder(self.intake.record, self._counted)
        self.assembler = StudyAssembler(store, on_study_complete, quiet_period_s=quiet_period_s,
                                        poll_interval_s=poll_interval_s, node_id=self.node_id, lease_s=lease_s)
        self._open: dict[int, set[str]] = {}  # association id -> groups it delivered to
        self._lock = threading.Lock()
        self._bound: dict[str, int] = {}  # "plain" / "tls" -> the port bound

    @property
    def port(self) -> int | None:
        """The plain port (the bound one once started); None with TLS only."""
        return self._bound.get("plain", self.address[1]) if self.address else None

    @property
    def tls_port(self) -> int | None:
        return self._bound.get("tls", self.tls_address[1]) if self.tls_address else None

    def start(self) -> None:
        # a shared spool: another node's write in progress is never taken for one a crash left
        removed = remove_temporary_files(self.spool, older_than_s=0.0 if self.node_id == ledger.LOCAL_NODE
                                         else TEMPORARY_FILE_AGE_S)
        if removed:
            log.info("removed %d partial spool file(s) left by an interrupted write", removed)
        if self.slots is not None:
            self.slots.recover(self._place_slot)
            self.slots.start()
        recovered = self.intake.recover(self.ae_title)
        if recovered and self.node_id == ledger.LOCAL_NODE:
            # their senders are gone; in a shared spool a file may be another node's whose row is on
            # its way, its sender still sending: those groups complete by the quiet period instead
            ledger.mark_released(self.store, recovered)
        self.recorder.start()
        self.assembler.start()
        if self.retention_days is not None:
            self._stop_housekeeping.clear()
            threading.Thread(target=self._housekeeping, name="medgate-retention", daemon=True).start()
        if self.node_id != ledger.LOCAL_NODE:  # a shared spool: what a dead node acknowledged
            self._stop_orphans.clear()
            threading.Thread(target=self._adopt_orphans, name="medgate-orphans", daemon=True).start()
        if self.address is not None:
            self._bound["plain"] = self.acceptor.listen(*self.address)
            log.info("DICOM SCP %s listening on %s:%d", self.ae_title, self.address[0], self.port)
        if self.tls_address is not None:
            self._bound["tls"] = self.acceptor.listen(*self.tls_address, ssl_context=self.ssl_context)
            log.info("DICOM SCP %s listening with TLS on %s:%d%s", self.ae_title, self.tls_address[0],
                     self.tls_port, " (TLS only)" if self.address is None else "")

    def stop(self) -> None:
        self.acceptor.stop()
        self._bound = {}
        self._stop_housekeeping.set()
        self._stop_orphans.set()
        self.recorder.stop()
        self.assembler.stop()
        if self.slots is not None:
            self.slots.stop()

    def _place_slot(self, slot: Path) -> Path:
        """Where a slot's instance goes: its spool path, from its Study and SOP Instance UIDs."""
        ds = dcmread(slot, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPInstanceUID"])
        return instance_path(self.spool, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))

    def _housekeeping(self, interval_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
        while True:
            try:
                purge_processed(self.store, self.spool, self.retention_days)
            except Exception:  # noqa: BLE001 - retry at the next round
                log.exception("retention failed")
            if self._stop_housekeeping.wait(interval_s):
                return

    def _adopt_orphans(self) -> None:
        """On a shared spool, every ``lease_s``: record the files some node acknowledged and then died
        before committing their rows (C-STORE Success is sent once the file is durable, the row
        follows).  Without this they would wait for that node's restart.  Only files older than a
        lease are taken, so a live node's row on its way is not raced (a race is harmless anyway: an
        instance is recorded once); their groups complete by the quiet period."""
        while not self._stop_orphans.wait(self.assembler.lease_s):
            try:
                adopted = self.intake.recover(self.ae_title, older_than_s=self.assembler.lease_s)
            except Exception as exc:  # noqa: BLE001 - the next round retries
                if not ledger.database_unreachable(self.store, exc):
                    log.exception("adopting unrecorded spool files failed")
                continue
            if adopted:
                log.warning("node %s recorded spool files another node acknowledged but did not record: "
                            "group(s) %s", self.node_id, ", ".join(adopted))
                self.assembler.nudge()

    # -- handlers (dicom_gateway.acceptor.Handlers) ----------------------------------------------
    def on_requested(self, calling_ae: str, called_ae: str, address: tuple[str, int],
                     certificate: dict | None = None) -> Rejection | None:
        """A-ASSOCIATE-RQ for our AE title: the allow-list (with the client certificate on the TLS
        port), then the spool's watermark."""
        reason = self.allow.reason_to_reject(calling_ae, address[0], certificate)
        if reason is not None:
            return Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER,
                             ServiceUserReason.CALLING_AE_NOT_RECOGNIZED, reason)
        reason = below_watermark(self.spool, self.min_free_bytes)
        if reason is not None:
            return Rejection(RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION,
                             PresentationReason.LOCAL_LIMIT_EXCEEDED, reason)
        return None

    def on_echo(self, association: Association) -> int:
        return StoreStatus.SUCCESS

    def on_store(self, association: Association, context_id: int, command: Dataset,
                 data: bytes | memoryview) -> Response:
        """Check, store and record one instance (:meth:`Intake.accept`); a refusal's reason goes back
        as Error Comment (0000,0902)."""
        calling = association.calling_ae
        abstract_syntax, transfer_syntax = association.contexts[context_id]
        unavailable = self.recorder.unavailable
        if unavailable is not None:  # acknowledged rows wait for the database: take no more
            log.warning("C-STORE from %s refused: the database is unavailable (%s)", calling, unavailable)
            return Response(StoreStatus.OUT_OF_RESOURCES, DATABASE_UNAVAILABLE)
        try:
            sop_class = check_uid("Affected SOP Class UID", command.AffectedSOPClassUID)
            sop_instance = check_uid("Affected SOP Instance UID", command.AffectedSOPInstanceUID)
        except Exception as exc:  # noqa: BLE001 - a bad UID is "cannot understand"
            log.warning("C-STORE from %s refused: %s", calling, exc)
            return Response(StoreStatus.CANNOT_UNDERSTAND, "Affected SOP Class or Instance UID is not a UID")
        # the disk starts on the bytes now; the checks below decide whether they are kept
        write = self.intake.writer.begin([part10_header(sop_class, sop_instance, transfer_syntax, calling), data],
                                         str(transfer_syntax))
        try:
            top: list[Element] = []
            problem = dataset_problem(data, transfer_syntax, top)
            if problem is not None:
                log.warning("C-STORE from %s refused: malformed data set: %s", calling, problem)
                return Response(StoreStatus.CANNOT_UNDERSTAND, f"malformed data set: {problem}")
            ds = read_header(data, transfer_syntax, top) or _decoded(data, transfer_syntax, calling)
            if ds is None:
                return Response(StoreStatus.CANNOT_UNDERSTAND, "the data set cannot be decoded")
            result = self.intake.accept(ds, write, calling, self.ae_title, context_sop_class=str(abstract_syntax),
                                        defer_record=True)
        finally:
            write.abandon()
        if result.status != StoreStatus.SUCCESS:
            return Response(result.status, result.reason)
        self.recorder.submit(result.arrival)
        with self._lock:
            self._open.setdefault(association.id, set()).add(result.group_uid)
        return Response(StoreStatus.SUCCESS)

    def _counted(self) -> None:
        """A recorded instance announced its group's count: completion may be due."""
        self.assembler.nudge()

    def on_release(self, association: Association) -> None:
        self.recorder.flush()  # the rows of what this sender stored, before A-RELEASE-RP

    def on_end(self, association: Association) -> None:
        self.recorder.flush()  # an aborted or lost association: its rows before its groups are released
        with self._lock:
            groups = self._open.pop(association.id, set())
        if groups:
            try:
                ledger.mark_released(self.store, groups)
            except Exception as exc:  # noqa: BLE001 - the quiet period completes them instead
                log.warning("association %d: the end of its sender not recorded (%s); its %d group(s)"
                            " complete after the quiet period", association.id, exc, len(groups))
            self.assembler.nudge()


def _decoded(data, transfer_syntax, calling: str) -> Dataset | None:
    """The data set decoded by pydicom (where :func:`read_header` does not apply), or None with a
    log line when it cannot be."""
    try:
        ds = decode(BytesIO(data), transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian,
                    transfer_syntax.is_deflated)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
        log.warning("C-STORE from %s refused: cannot decode dataset: %s", calling, exc)
        return None
    return ds
