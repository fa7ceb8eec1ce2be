"""DICOM association acceptor: listening sockets, negotiation, and one thread per association.

Each association is served start to end by one thread with blocking reads (PS3.8 state machine,
acceptor side): A-ASSOCIATE-RQ within the ARTIM time, checks and presentation-context negotiation
(pynetdicom's :func:`~pynetdicom.presentation.negotiate_as_acceptor`), then P-DATA-TF until
A-RELEASE-RQ or A-ABORT.  A complete DIMSE request is handed to :class:`Handlers` in the same
thread and the response is sent at once (``TCP_NODELAY``), so a C-STORE costs one round trip
plus the handler's work, without hand-offs between threads or polling.  Protocol errors and
network timeouts abort the association with a logged reason; nothing a peer sends stops the server.
"""
from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification,
                                       ImplementationVersionNameNotification, MaximumLengthNotification)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicom_gateway import dimse
from dicom_gateway import upper_layer as ul
from dicom_gateway.config import DicomConfig
from dicom_gateway.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from dicom_gateway.status import (REASONS_OF_SOURCE, AcseReason, PresentationReason, RejectReason, RejectResult,
                                   RejectSource, ServiceUserReason)

log = logging.getLogger("medgate.dicom")

APPLICATION_CONTEXT = UID("1.2.840.10008.3.1.1.1")  # PS3.7 A.2.1
_DICOM = DicomConfig()  # the ``dicom:`` section's defaults, the constructor's defaults
#: PS3.8 9.1.5: the ARTIM timer bounds the wait for the A-ASSOCIATE-RQ after the TCP connection
#: (its value is the implementation's; 30 s as pynetdicom's ACSE timeout).
ARTIM_S = 30.0
#: Silence tolerated from the peer once associated (pynetdicom's network timeout) before an abort.
NETWORK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 9.3.4), and why, for the log."""

    result: RejectResult
    source: RejectSource
    reason: RejectReason
    why: str

    def __post_init__(self) -> None:
        allowed = REASONS_OF_SOURCE[self.source]
        if not isinstance(self.reason, allowed):
            raise ValueError(f"reason {self.reason!r} is not one of {allowed.__name__}, the reasons of source "
                             f"{self.source.name}")


@dataclass
class Association:
    """An accepted association as the handlers see it."""

    id: int
    calling_ae: str
    called_ae: str
    address: tuple[str, int]
    contexts: dict[int, tuple[UID, UID]] = field(default_factory=dict)  # id -> (abstract, transfer)
    peer_max_length: int = 0


class Handlers(Protocol):
    def on_requested(self, calling_ae: str, called_ae: str, address: tuple[str, int],
                     certificate: dict[str, Any] | None = None) -> Rejection | None:
        """Return a rejection, or None to go on with negotiation.  ``certificate``: the peer's
        verified certificate on a TLS port (:meth:`ssl.SSLSocket.getpeercert`), None on a plain one."""

    def on_echo(self, association: Association) -> int: ...

    def on_store(self, association: Association, context_id: int, command: Dataset,
                 data: bytes | memoryview) -> dimse.Response | int:
        """Handle a C-STORE request; return its status, with the reason of a refusal
        (:class:`dimse.Response`, sent as Error Comment)."""

    def on_release(self, association: Association) -> None:
        """The peer asked to release: called before A-RELEASE-RP is sent, so what must be true
        when the sender counts its transfer as finished (every row committed) is true by then."""

    def on_end(self, association: Association) -> None:
        """The association was released or aborted, or its connection was lost."""


class Acceptor:
    """Accepts associations for ``ae_title`` on any number of listening addresses.

    ``contexts`` are the presentation contexts we support; ``max_pdu_bytes`` is our Maximum Length
    Received (0 = unlimited); more than ``max_associations`` at once are rejected (transient,
    local limit exceeded).  ``artim_s`` bounds the wait for the A-ASSOCIATE-RQ, ``network_timeout_s``
    any later silence.
    """

    def __init__(self, ae_title: str, contexts: list[PresentationContext], handlers: Handlers, *,
                 max_associations: int = _DICOM.max_associations, max_pdu_bytes: int = _DICOM.max_pdu_bytes,
                 artim_s: float = ARTIM_S, network_timeout_s: float = NETWORK_TIMEOUT_S) -> None:
        self.ae_title = ae_title.strip()
        self.contexts, self.handlers = contexts, handlers
        self.max_associations, self.max_pdu_bytes = max_associations, max_pdu_bytes
        self.artim_s, self.network_timeout_s = artim_s, network_timeout_s
        self._listeners: list[socket.socket] = []
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()

    def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Start accepting on ``host:port`` (TLS with ``ssl_context``); returns the bound port."""
        listener = socket.create_server((host, port), backlog=64)
        self._listeners.append(listener)
        threading.Thread(target=self._accept_loop, args=(listener, ssl_context), daemon=True,
                         name=f"dicom-accept-{listener.getsockname()[1]}").start()
        return listener.getsockname()[1]

    def stop(self) -> None:
        """Stop listening and abort the associations in progress."""
        self._stopping.set()
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_loop(self, listener: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        while not self._stopping.is_set():
            try:
                connection, address = listener.accept()
            except OSError:
                return  # closed by stop()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(connection, address[:2], ssl_context), daemon=True,
                             name=f"dicom-association-{address[0]}:{address[1]}").start()

    # -- one association ---------------------------------------------------------------------------
    def _serve(self, connection: socket.socket, address: tuple[str, int],
               ssl_context: ssl.SSLContext | None) -> None:
        association: Association | None = None
        with self._lock:
            self._connections.add(connection)
        try:
            connection.settimeout(self.artim_s)
            if ssl_context is not None:
                connection = ssl_context.wrap_socket(connection, server_side=True)
            association = self._associate(connection, address)
            if association is not None:
                connection.settimeout(self.network_timeout_s or None)
                self._transfer(connection, association)
        except ul.PeerClosed:
            if association is not None:
                log.warning("association %d from %s (%s:%d): connection closed without release",
                            association.id, association.calling_ae, *address)
        except TimeoutError:
            log.warning("connection from %s:%d aborted: network timeout (%s)", *address,
                        "ARTIM" if association is None else f"{self.network_timeout_s:g} s idle")
            _send_and_await_close(connection, ul.abort_pdu(2, 0))
        except ul.UpperLayerError as exc:
            log.warning("connection from %s:%d aborted: %s", *address, exc)
            _send_and_await_close(connection, ul.abort_pdu(2, exc.reason))
        except (OSError, ssl.SSLError) as exc:
            log.warning("connection from %s:%d lost: %s", *address, exc)
        finally:
            with self._lock:
                self._connections.discard(connection)
                if association is not None:
                    self._active -= 1
            connection.close()
            if association is not None:
                self.handlers.on_end(association)

    def _associate(self, connection: socket.socket, address: tuple[str, int]) -> Association | None:
        pdu_type, body = ul.read_pdu(connection, self.max_pdu_bytes)
        if pdu_type != ul.ASSOCIATE_RQ:
            raise ul.UpperLayerError(f"{ul.PDU_NAMES[pdu_type]} before A-ASSOCIATE-RQ", ul.UNEXPECTED_PDU)
        request = ul.decode_associate_rq(body)
        calling, called = request.calling_ae_title.strip(), request.called_ae_title.strip()
        certificate = connection.getpeercert() if isinstance(connection, ssl.SSLSocket) else None
        rejection = self._check(request, calling, called, address, certificate)
        if rejection is not None:
            _reject(connection, calling, address, rejection)
            return None
        with self._lock:
            if self._active >= self.max_associations:
                rejection = Rejection(RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION,
                                      PresentationReason.LOCAL_LIMIT_EXCEEDED,
                                      f"{self.max_associations} associations already in progress")
            else:
                self._active += 1
        if rejection is not None:
            _reject(connection, calling, address, rejection)
            return None
        results, _ = negotiate_as_acceptor(request.presentation_context_definition_list, self.contexts)
        association = Association(next(self._ids), calling, called, address, peer_max_length=next(
            (item.maximum_length_received or 0 for item in request.user_information
             if isinstance(item, MaximumLengthNotification)), 0))
        association.contexts = {c.context_id: (c.abstract_syntax, c.transfer_syntax[0])
                                for c in results if c.result == 0}
        connection.sendall(ul.encode_associate(self._accept_primitive(request, results)))
        log.debug("association %d from %s (%s:%d) accepted, %d context(s)", association.id, calling, *address,
                  len(association.contexts))
        return association

    def _check(self, request: A_ASSOCIATE, calling: str, called: str, address: tuple[str, int],
               certificate: dict[str, Any] | None) -> Rejection | None:
        if not getattr(request, "protocol_version", 1) & 0x0001:  # PS3.8 9.3.2: bit 0 is version 1
            return Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_PROVIDER_ACSE,
                             AcseReason.PROTOCOL_VERSION_NOT_SUPPORTED,
                             f"protocol version 0x{request.protocol_version:04X} does not include version 1")
        ids = [context.context_id for context in request.presentation_context_definition_list]
        if len(ids) != len(set(ids)) or any(i % 2 == 0 for i in ids):
            return Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER, ServiceUserReason.NO_REASON_GIVEN,
                             f"presentation context IDs {ids} must be distinct odd numbers (PS3.8 9.3.2.2)")
        if request.application_context_name != APPLICATION_CONTEXT:
            return Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER,
                             ServiceUserReason.APPLICATION_CONTEXT_NOT_SUPPORTED,
                             f"application context {request.application_context_name} is not DICOM's")
        if called != self.ae_title:
            return Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER,
                             ServiceUserReason.CALLED_AE_NOT_RECOGNIZED,
                             f"called AE title {called!r} is not ours ({self.ae_title!r})")
        return self.handlers.on_requested(calling, called, address, certificate)

    def _accept_primitive(self, request: A_ASSOCIATE, results: list[PresentationContext]) -> A_ASSOCIATE:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = request.calling_ae_title
        primitive.called_ae_title = request.called_ae_title
        primitive.result, primitive.result_source = 0x00, 0x01
        primitive.presentation_context_definition_results_list = results
        length = MaximumLengthNotification()
        length.maximum_length_received = self.max_pdu_bytes
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION
        primitive.user_information = [length, implementation, version]
        return primitive

    def _transfer(self, connection: socket.socket, association: Association) -> None:
        """P-DATA-TF until release or abort: assemble each DIMSE message, answer it."""
        command: Dataset | None = None
        command_parts: list[memoryview] = []
        data_parts: list[memoryview] = []
        while True:
            pdu_type, body = ul.read_pdu(connection, self.max_pdu_bytes)
            if pdu_type == ul.RELEASE_RQ:
                self.handlers.on_release(association)
                connection.sendall(ul.RELEASE_RP_PDU)
                log.debug("association %d released", association.id)
                return
            if pdu_type == ul.ABORT:
                log.warning("association %d from %s aborted by the peer", association.id, association.calling_ae)
                return
            if pdu_type != ul.DATA_TF:
                raise ul.UpperLayerError(f"unexpected {ul.PDU_NAMES[pdu_type]} during data transfer",
                                         ul.UNEXPECTED_PDU)
            for context_id, is_command, is_last, fragment in ul.pdvs(body):
                if context_id not in association.contexts:
                    raise ul.UpperLayerError(f"PDV on presentation context {context_id}, which is not accepted")
                if is_command:
                    if command is not None:
                        raise ul.UpperLayerError("a command fragment arrived inside a data set")
                    command_parts.append(fragment)
                    if not is_last:
                        continue
                    command = dimse.decode_command(_joined(command_parts))
                    command_parts = []
                    if dimse.has_data_set(command):
                        continue
                    data = None
                else:
                    if command is None:
                        raise ul.UpperLayerError("a data set fragment arrived before its command")
                    data_parts.append(fragment)
                    if not is_last:
                        continue
                    data, data_parts = _joined(data_parts), []
                response = self._dispatch(association, context_id, command, data)
                for message in ul.command_pdus(context_id, dimse.encode_response(command, *response),
                                               association.peer_max_length):
                    connection.sendall(message)
                command = None

    def _dispatch(self, association: Association, context_id: int, command: Dataset,
                  data: bytes | memoryview | None) -> tuple[int, str]:
        """The handler's status and Error Comment for one request."""
        field_ = int(command.CommandField)
        try:
            if field_ == dimse.C_ECHO_RQ:
                response = dimse.Response.of(self.handlers.on_echo(association))
                return response.status, response.comment
            if field_ == dimse.C_STORE_RQ and data is not None:
                response = dimse.Response.of(self.handlers.on_store(association, context_id, command, data))
                return response.status, response.comment
        except Exception:  # noqa: BLE001 - a handler bug fails this request, not the server
            log.exception("association %d: handler failed for command 0x%04X", association.id, field_)
            return dimse.PROCESSING_FAILURE, "processing failure, named in the receiver's log"
        log.warning("association %d: unsupported DIMSE command 0x%04X", association.id, field_)
        return dimse.UNRECOGNIZED_OPERATION, f"command 0x{field_:04X} is not supported"


def _joined(parts: list[memoryview]) -> bytes | memoryview:
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _reject(connection, calling: str, address: tuple[str, int], rejection: Rejection) -> None:
    """Log ``rejection`` by its source's reason name and send it as an A-ASSOCIATE-RJ."""
    log.warning("association from %s (%s:%d) rejected (%s, %s): %s", calling, *address,
                rejection.source.name, rejection.reason.name, rejection.why)
    _send_and_await_close(connection, ul.encode_associate(_rejection_primitive(rejection)))


def _rejection_primitive(rejection: Rejection) -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.result = int(rejection.result)
    primitive.result_source = int(rejection.source)
    primitive.diagnostic = int(rejection.reason)
    return primitive


def _send_and_await_close(connection: socket.socket, message: bytes, wait_s: float = 2.0) -> None:
    """Send an A-ASSOCIATE-RJ or A-ABORT, then wait (at most ``wait_s``) for the peer to close the
    connection, as PS3.8 state Sta13 does: closing at once can reset the connection before the
    peer has read the PDU, and the peer then sees a dropped connection instead of the reason."""
    deadline = time.monotonic() + wait_s
    try:
        connection.sendall(message)
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not connection.recv(65536):
                return
    except (OSError, ValueError):
        pass
