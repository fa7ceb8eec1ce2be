"""One HL7 v2 message in, its acknowledgement out: the one place refusals become ACKs.

Original mode (HL7 v2.5.1 section 2.9.2; MSH-15/16 absent): AA only once what the message says is
committed in the vitals store and the write-ahead log is on disk; AE (the content: a field
missing, of the wrong type, not in its table) or AR (the header: message type, trigger event,
processing id, version, sending facility not allowed, a control id reused for another message)
with an ERR segment naming the field, and a dead letter (:mod:`iomt.dead_letters`, bounded) of
what was refused.  A message already acknowledged AA under the same MSH-4, MSH-3 and MSH-10
(``hl7_messages``, written in the same transaction as its effects) is acknowledged AA again and
not applied twice.  Messages are applied one at a time: the vitals pipeline is one worker.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from datetime import tzinfo

from iomt.config import Hl7Config
from iomt.dead_letters import dead_letter
from iomt.hl7.ack import acknowledgement
from iomt.hl7.adt import AdtApplier, read_adt
from iomt.hl7.identifiers import IdentifierMapper
from iomt.hl7.message import AckCode, ErrorCode, Header, Hl7Error, Message, header_of, parse, reject
from iomt.hl7.pcd01 import Pcd01Feeder, read_pcd01
from iomt.pipeline import BatchOut, VitalsPipeline
from iomt.sink import ResourceSink
from iomt.store import Hl7Receipt, Hl7Rows, VitalsStore
from kernel.correlation import bound
from kernel.logs import Untrusted

log = logging.getLogger("medgate.iomt.hl7")

_HL7 = Hl7Config()  # the ``hl7:`` section's defaults, the constructor's defaults
PRUNE_EVERY_S = 60.0  # receipts older than the dedup window are deleted at most this often
PRUNE_ROWS = 10_000  # and at most this many at a time
SOURCE_PREFIX = "hl7:"  # dead_letters.source: hl7:<MSH-4>/<MSH-3>; correlation id hl7:<MSH-4>/<MSH-10>
_PLAIN = re.compile(r"^[\x21-\x7e]{1,64}$", re.ASCII)  # printable ASCII without spaces: shown as sent


def label(text: str) -> str:
    """``text`` for a dead letter's source or a correlation id: as sent when plain printable ASCII,
    else ``#`` and the first 12 hex digits of its SHA-256 (an id from outside, never trusted as is)."""
    if _PLAIN.fullmatch(text):
        return text
    return "#" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:12]


class _CommitsHl7Rows:
    """The vitals store as a :class:`iomt.sink.ResourceSink` sees it: each batch's transaction
    also writes the HL7 rows of the message in hand."""

    def __init__(self, store: VitalsStore) -> None:
        self.store = store
        self.rows: Hl7Rows | None = None

    def commit_batch(self, *args, **kwargs) -> None:
        self.store.commit_batch(*args, hl7=self.rows, **kwargs)


class Intake:
    """Applies messages and answers each with its ACK (see the module docstring).

    Parameters
    ----------
    store, pipeline
        The vitals store and the pipeline the readings and device ADT events go through.
    identifiers
        PID-3 / MRG-1 mapping (``hl7.assigning_authorities``, ``hl7.identifier_types``).
    zone
        ``hl7.timezone``: of date/times sent without an offset.
    outbox, fhir_base_url, bundle_max_entries
        Where resources go, as for the MQTT bridge (:class:`iomt.sink.ResourceSink`).
    application, facility, allowed_facilities
        ``hl7.application`` / ``hl7.facility`` of the ACKs; the MSH-4 values accepted (empty: any).
    dedup_window_s
        ``hl7.dedup_window_hours``: receipts are kept this long, so a resend within it is not applied twice.
    """

    def __init__(self, store: VitalsStore, pipeline: VitalsPipeline, identifiers: IdentifierMapper,
                 zone: tzinfo, *, outbox=None, fhir_base_url: str | None = None, bundle_max_entries: int | None = None,
                 application: str, facility: str, allowed_facilities: tuple[str, ...] | list[str] = _HL7.allowed_facilities,
                 dedup_window_s: float = _HL7.dedup_window_hours * 3600) -> None:
        if dedup_window_s <= 0:
            raise ValueError(f"dedup_window_s must be > 0, {dedup_window_s} is given.")
        self.store, self.pipeline, self.identifiers, self.zone = store, pipeline, identifiers, zone
        self._target = _CommitsHl7Rows(store)
        extra = {} if bundle_max_entries is None else {"bundle_max_entries": bundle_max_entries}
        self.sink = ResourceSink(self._target, outbox, fhir_base_url, **extra)
        self.adt, self.pcd01 = AdtApplier(store, pipeline), Pcd01Feeder(store, pipeline)
        self.application, self.facility = application, facility
        self.allowed_facilities = frozenset(allowed_facilities)
        self.dedup_window_s, self._pruned_at = dedup_window_s, 0.0
        self._lock = threading.Lock()
        self.accepted = self.refused = self.duplicates = 0

    def handle(self, raw: bytes, peer: str = "") -> bytes:
        """The ACK of one message (the content of one MLLP block) from ``peer``."""
        header = header_of(raw)
        with self._lock, bound(f"{SOURCE_PREFIX}{label(header.sending_facility)}/{label(header.control_id)}"):
            try:
                message = parse(raw)
                header = message.header
                return self._apply(message, raw)
            except Hl7Error as exc:
                return self._refuse(header, raw, exc, peer)
            except Exception:  # noqa: BLE001 - the sender must hear of it; the listener stays up
                log.exception("HL7 %s from %s failed", Untrusted(header.kind), Untrusted(peer))
                return self._refuse(header, raw, Hl7Error(AckCode.ERROR, ErrorCode.APPLICATION_INTERNAL_ERROR, "",
                                                          "internal error while applying the message"), peer)

    def refuse_oversized(self, prefix: bytes, size: int, limit: int, peer: str = "") -> bytes:
        """AR for a block longer than ``hl7.max_message_bytes`` (its first bytes are ``prefix``)."""
        header = header_of(prefix)
        failure = reject(ErrorCode.APPLICATION_INTERNAL_ERROR, "MSH^1",
                         f"the message is longer than hl7.max_message_bytes ({limit}): {size} bytes read")
        with self._lock:
            return self._refuse(header, prefix, failure, peer)

    def _ack(self, header: Header, ack: AckCode, failure: Hl7Error | None = None) -> bytes:
        return acknowledgement(header, ack, failure, application=self.application, facility=self.facility)

    def _apply(self, message: Message, raw: bytes) -> bytes:
        header = message.header
        if self.allowed_facilities and header.sending_facility not in self.allowed_facilities:
            raise reject(ErrorCode.TABLE_VALUE_NOT_FOUND, "MSH^1^4",
                         f"sending facility {header.sending_facility[:64]!r} is not in hl7.allowed_facilities")
        digest = hashlib.sha256(raw).hexdigest()
        seen = self.store.hl7_receipt(header.sending_facility, header.sending_application, header.control_id)
        if seen is not None:
            if seen.sha256 != digest:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seen.received_at))
                raise reject(ErrorCode.DUPLICATE_KEY_IDENTIFIER, "MSH^1^10",
                             f"control id {header.control_id!r} was acknowledged for another message "
                             f"({seen.message_type} at {when})")
            self.duplicates += 1
            log.info("HL7 %s %s resent: acknowledged again, not applied twice", header.kind,
                     Untrusted(header.control_id))
            return self._ack(header, AckCode.ACCEPT)
        out = BatchOut()
        encounters, bed_devices = (), ()
        if header.message_type == "ADT":
            encounters = tuple(self.adt.apply(read_adt(message, self.identifiers, self.zone),
                                              header.sending_facility, out))
        else:
            readings = read_pcd01(message, self.identifiers, self.zone)
            bed_devices = tuple(self.pcd01.feed(readings, out))
        receipt = Hl7Receipt(header.sending_facility, header.sending_application, header.control_id,
                             header.kind, digest, time.time())
        self._target.rows = Hl7Rows((receipt,), encounters, bed_devices)
        try:
            self.sink.commit(out.resources, out.dead_letters, out.outbox_rows, list(out.beds.values()),
                             out.vitals, durable=True, contexts=out.contexts)
        finally:
            self._target.rows = None
        if out.replayed_ids:
            self.store.mark_replayed(out.replayed_ids)
        self.accepted += 1
        self._prune(receipt.received_at)
        log.info("HL7 %s %s applied: %d resources, %d vitals messages", header.kind,
                 Untrusted(header.control_id), len(out.resources), len(out.vitals))
        return self._ack(header, AckCode.ACCEPT)

    def _prune(self, now: float) -> None:
        """Forget receipts older than the dedup window (``hl7.dedup_window_hours``)."""
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            deleted = self.store.delete_hl7_receipts_before(now - self.dedup_window_s, PRUNE_ROWS)
        except Exception:  # noqa: BLE001 - tried again next time; the message is stored
            log.exception("deleting HL7 receipts older than %.0f h failed", self.dedup_window_s / 3600)
            return
        if deleted:
            log.info("deleted %d HL7 receipts older than %.0f h", deleted, self.dedup_window_s / 3600)

    def _refuse(self, header: Header, raw: bytes, failure: Hl7Error, peer: str) -> bytes:
        self.refused += 1
        log.warning("HL7 %s %s from %s refused (%s %s %s): %s", Untrusted(header.kind),
                    Untrusted(header.control_id), Untrusted(peer), failure.ack.value, failure.code.value,
                    failure.location, Untrusted(failure.text))
        letter = dead_letter(f"{SOURCE_PREFIX}{label(header.sending_facility)}/{label(header.sending_application)}",
                             f"{failure.ack.value} {failure.location} {failure.code.value}: {failure.text}", raw)
        try:
            self.store.commit_batch([], [letter])
        except Exception:  # noqa: BLE001 - the ACK still says why
            log.exception("writing the dead letter of HL7 %s failed", Untrusted(header.control_id))
        return self._ack(header, failure.ack, failure)
