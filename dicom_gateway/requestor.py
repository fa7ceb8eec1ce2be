"""DICOM association requestor for C-STORE, on one blocking socket (PS3.8 requestor side).

The outbox sends each result object (SR, SEG, SC, GSPS) over an association of its own.  With
pynetdicom's requestor that cost ~10 ms to associate and ~50 ms a C-STORE on our 2-core machine
under load: its reactor and DUL threads hand every PDU over through queues and poll.  Here one
thread does it all with blocking reads, like :mod:`dicom_gateway.acceptor`: connect
(``TCP_NODELAY``), A-ASSOCIATE-RQ, C-STORE-RQ + data set in P-DATA-TF, wait for the C-STORE-RSP,
A-RELEASE-RQ.  A file's data set is sent as the bytes it holds when the accepted transfer syntax
is the file's own (no decoding, no re-encoding); otherwise pydicom encodes it.

Outcomes are reported as :class:`Refused` (the association was rejected or accepted nothing),
:class:`Lost` (not reachable, aborted, no answer) or the C-STORE response's status; the
classification into permanent and transient delivery errors is :mod:`dicom_gateway.scu`'s.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import UID
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification,
                                       ImplementationVersionNameNotification, MaximumLengthNotification)
from pynetdicom.presentation import PresentationContext

from dicom_gateway import dimse
from dicom_gateway import upper_layer as ul
from dicom_gateway.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

APPLICATION_CONTEXT = UID("1.2.840.10008.3.1.1.1")  # PS3.7 A.2.1
#: Our Maximum Length Received: responses are a few hundred bytes.
MAX_PDU_RECEIVED = 1 << 16
#: PS3.8 9.3.2: at most 128 presentation contexts (odd ids 1-255).
MAX_CONTEXTS = 128
_META_START = 132  # 128-byte preamble + "DICM" (PS3.10 7.1)


class Lost(Exception):
    """The association could not be made or was lost: not reachable, aborted, no answer."""


class Refused(Exception):
    """The peer rejected the association (``result``, ``source``, ``reason`` of A-ASSOCIATE-RJ,
    PS3.8 9.3.4), or accepted none of the proposed presentation contexts (``result`` None)."""

    def __init__(self, message: str, result: int | None = None, source: int | None = None,
                 reason: int | None = None) -> None:
        super().__init__(message)
        self.result, self.source, self.reason = result, source, reason


@dataclass
class Part10:
    """A Part 10 file's SOP Class and Instance UIDs, transfer syntax and data set bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data_set: bytes
    path: Path

    @classmethod
    def read(cls, path: str | Path) -> "Part10":
        """Read ``path``; raises :class:`OSError` or pydicom's ``InvalidDicomError``."""
        raw = Path(path).read_bytes()
        ds = dcmread(BytesIO(raw), stop_before_pixels=True)
        meta = ds.file_meta
        offset = _data_set_offset(raw)
        if offset is None:  # no File Meta Information Group Length: let pydicom find the data set
            full = dcmread(BytesIO(raw))
            syntax = UID(meta.TransferSyntaxUID)
            data = encode(full, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        else:
            data = raw[offset:]
        return cls(str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                   str(meta.TransferSyntaxUID), data, Path(path))

    def encoded_as(self, transfer_syntax: str) -> bytes:
        """The data set in ``transfer_syntax``: its own bytes when that is the file's syntax."""
        if transfer_syntax == self.transfer_syntax:
            return self.data_set
        syntax = UID(transfer_syntax)
        return encode(dcmread(self.path), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)


def _data_set_offset(raw: bytes) -> int | None:
    """Where the data set starts: after (0002,0000) File Meta Information Group Length's value."""
    if raw[128:132] != b"DICM" or raw[_META_START:_META_START + 6] != b"\x02\x00\x00\x00UL":
        return None
    length = int.from_bytes(raw[_META_START + 8:_META_START + 12], "little")
    return _META_START + 12 + length


class Association:
    """One association from ``calling_ae`` to ``called_ae`` at ``host:port`` proposing a
    presentation context per (SOP Class, transfer syntax) of ``objects``; use as a context manager
    (released on a clean exit, aborted otherwise)."""

    def __init__(self, host: str, port: int, *, called_ae: str, calling_ae: str,
                 objects: list[Part10], timeout_s: float) -> None:
        pairs = sorted({(o.sop_class_uid, o.transfer_syntax) for o in objects})
        if len(pairs) > MAX_CONTEXTS:
            raise ValueError(f"at most {MAX_CONTEXTS} presentation contexts per association, {len(pairs)} are needed.")
        self.peer = f"{called_ae}@{host}:{port}"
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.called_ae, self.calling_ae = called_ae, calling_ae
        self.proposed = {2 * index + 1: pair for index, pair in enumerate(pairs)}
        self.accepted: dict[tuple[str, str], int] = {}  # (SOP class, transfer syntax) -> context id
        self.peer_max_pdu = 0
        self._sock: socket.socket | None = None
        self._message_id = 0

    # -- association -------------------------------------------------------------------------------
    def __enter__(self) -> "Association":
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise Lost(f"association with {self.peer} was not established (not reachable: {exc})") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.sendall(self._request())
            pdu_type, body = self._read()
            if pdu_type == ul.ASSOCIATE_RJ and len(body) >= 4:
                raise Refused(f"{self.peer} rejected the association", body[1], body[2], body[3])
            if pdu_type != ul.ASSOCIATE_AC:
                raise Lost(f"{self.peer} answered A-ASSOCIATE-RQ with {ul.PDU_NAMES[pdu_type]}")
            self._accepted(body)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self._release()
            else:
                self._sock.sendall(ul.abort_pdu(0, 0))
        except OSError:
            pass
        finally:
            self._close()

    def _request(self) -> bytes:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title, primitive.called_ae_title = self.calling_ae, self.called_ae
        contexts = []
        for context_id, (abstract, syntax) in self.proposed.items():
            context = PresentationContext()
            context.context_id, context.abstract_syntax, context.transfer_syntax = context_id, abstract, [syntax]
            contexts.append(context)
        primitive.presentation_context_definition_list = contexts
        length = MaximumLengthNotification()
        length.maximum_length_received = MAX_PDU_RECEIVED
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION
        primitive.user_information = [length, implementation, version]
        request = A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        return request.encode()

    def _accepted(self, body: bytearray) -> None:
        reply = A_ASSOCIATE_AC()
        try:
            reply.decode(ul.pdu(ul.ASSOCIATE_AC, bytes(body)))
            primitive = reply.to_primitive()
        except Exception as exc:  # noqa: BLE001 - a malformed answer is a lost association
            raise Lost(f"malformed A-ASSOCIATE-AC from {self.peer}: {type(exc).__name__}: {exc}") from None
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
        for context in primitive.presentation_context_definition_results_list:
            pair = self.proposed.get(context.context_id)
            if pair is not None and context.result == 0 and context.transfer_syntax:
                self.accepted[pair[0], str(context.transfer_syntax[0])] = context.context_id
        if not self.accepted:
            raise Refused(f"{self.peer} accepted none of the proposed presentation contexts "
                          "(SOP Class or transfer syntax not supported)")

    def _release(self) -> None:
        self._sock.sendall(ul.pdu(ul.RELEASE_RQ, b"\x00" * 4))
        try:
            while self._read()[0] not in (ul.RELEASE_RP, ul.ABORT):
                pass
        except (Lost, ul.UpperLayerError):
            pass  # the objects were stored; a peer closing instead of answering the release loses nothing

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read(self) -> tuple[int, bytearray]:
        try:
            pdu_type, body = ul.read_pdu(self._sock, MAX_PDU_RECEIVED)
        except TimeoutError:
            raise Lost(f"no answer from {self.peer} within {self.timeout_s:g} s") from None
        except (ul.PeerClosed, OSError) as exc:
            raise Lost(f"connection to {self.peer} lost: {exc}") from None
        if pdu_type == ul.ABORT:
            raise Lost(f"{self.peer} aborted the association")
        return pdu_type, body

    # -- C-STORE -----------------------------------------------------------------------------------
    def context_for(self, obj: Part10) -> int | None:
        """The accepted presentation context for ``obj``, or None."""
        return self.accepted.get((obj.sop_class_uid, obj.transfer_syntax))

    def store(self, obj: Part10) -> Dataset:
        """C-STORE ``obj``; returns the C-STORE-RSP command set (Status, Error Comment, ...).
        :class:`LookupError` when no presentation context was accepted for it."""
        context_id = self.context_for(obj)
        if context_id is None:
            raise LookupError(f"{self.peer} accepted no presentation context for {obj.sop_class_uid} "
                              f"in {obj.transfer_syntax}")
        self._message_id = self._message_id % 0xFFFF + 1
        command = dimse.encode_store_request(obj.sop_class_uid, obj.sop_instance_uid, self._message_id)
        try:
            self._sock.sendall(b"".join(ul.command_pdus(context_id, command, self.peer_max_pdu)
                                        + ul.data_pdus(context_id, obj.encoded_as(obj.transfer_syntax),
                                                       self.peer_max_pdu)))
        except TimeoutError:
            raise Lost(f"{self.peer} did not take the data set within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise Lost(f"connection to {self.peer} lost: {exc}") from None
        return self._response()

    def _response(self) -> Dataset:
        parts: list[bytes] = []
        while True:
            pdu_type, body = self._read()
            if pdu_type != ul.DATA_TF:
                raise Lost(f"{self.peer} sent {ul.PDU_NAMES[pdu_type]} instead of a C-STORE response")
            for _, is_command, is_last, fragment in ul.pdvs(body):
                if is_command:
                    parts.append(bytes(fragment))
                    if is_last:
                        try:
                            return decode(BytesIO(b"".join(parts)), True, True)
                        except Exception as exc:  # noqa: BLE001 - an unreadable response is no response
                            raise Lost(f"malformed C-STORE response from {self.peer}: {exc}") from None
