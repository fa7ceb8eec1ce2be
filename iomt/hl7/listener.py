"""The MLLP listener: HL7 v2 messages over TCP (optionally TLS), one ACK per message.

MLLP (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol" release 2): each message is sent as
``<SB> message <EB><CR>`` (0x0B ... 0x1C 0x0D) and answered on the same connection before the next
one.  A block is read only up to ``hl7.max_message_bytes``: a longer one is answered AR
(:meth:`iomt.hl7.intake.Intake.refuse_oversized`) and the connection closed, since the rest of it
cannot be told from the next message.  Connections come only from ``hl7.allowed_sources``;
with ``hl7.cert_file`` the socket speaks TLS 1.2 or later, and with ``hl7.ca_file`` a sender must
present a certificate that CA signed.  One thread per connection (at most ``hl7.max_connections``);
the intake applies one message at a time.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Iterable

from iomt.config import Hl7Config
from iomt.hl7.intake import Intake
from kernel.logs import Untrusted

log = logging.getLogger("medgate.iomt.hl7")

START_BLOCK, END_BLOCK, CARRIAGE_RETURN = b"\x0b", b"\x1c", b"\x0d"  # MLLP <SB>, <EB>, <CR>
_HL7 = Hl7Config()  # the ``hl7:`` section's defaults, the constructor's defaults
READ_BYTES = 64 * 1024
ACCEPT_POLL_S = 0.5  # how soon stop() is noticed by the accepting thread
HANDSHAKE_TIMEOUT_S = 10.0


def tls_context(cert_file: Path, key_file: Path, ca_file: Path | None = None) -> ssl.SSLContext:
    """A server context: TLS 1.2 or later; client certificates required when ``ca_file`` is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    if ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(ca_file))
    return context


class MllpListener:
    """Accepts MLLP connections and answers each message with the intake's ACK.

    Parameters
    ----------
    intake
        :class:`iomt.hl7.intake.Intake`.
    host, port
        Where to listen; port 0 takes a free one (``self.port`` after :meth:`start`).
    allowed_sources
        Addresses or CIDR networks that may connect; empty: any.
    """

    def __init__(self, intake: Intake, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 allowed_sources: Iterable[str] = _HL7.allowed_sources, max_message_bytes: int = _HL7.max_message_bytes,
                 max_connections: int = _HL7.max_connections, idle_timeout_s: float = _HL7.idle_timeout_s) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, {max_message_bytes} is given.")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, {max_connections} is given.")
        self.intake, self.host, self.port = intake, host, port
        self.ssl_context = ssl_context
        self.networks = [ipaddress.ip_network(s, strict=False) for s in allowed_sources]
        self.max_message_bytes, self.max_connections = max_message_bytes, max_connections
        self.idle_timeout_s = idle_timeout_s
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._acceptor: threading.Thread | None = None

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.port))
        server.listen(self.max_connections)
        server.settimeout(ACCEPT_POLL_S)
        self._server, self.port = server, server.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="medgate-hl7-accept", daemon=True)
        self._acceptor.start()
        log.info("HL7 MLLP listener on %s:%d%s", self.host, self.port, " (TLS)" if self.ssl_context else "")

    def stop(self) -> None:
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(10)
        if self._server is not None:
            self._server.close()
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(10)

    def allowed(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None) is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, address = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peer = f"{address[0]}:{address[1]}"
            if not self.allowed(address[0]):
                log.warning("HL7 connection from %s refused: not in hl7.allowed_sources", peer)
                conn.close()
                continue
            with self._lock:
                if len(self._connections) >= self.max_connections:
                    log.warning("HL7 connection from %s refused: %d connections open (hl7.max_connections)",
                                peer, len(self._connections))
                    conn.close()
                    continue
                self._connections.add(conn)
                thread = threading.Thread(target=self._serve, args=(conn, peer), name=f"medgate-hl7-{peer}",
                                          daemon=True)
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        try:
            if self.ssl_context is not None:
                conn.settimeout(HANDSHAKE_TIMEOUT_S)
                tls = self.ssl_context.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._connections.discard(conn)
                    self._connections.add(tls)
                conn = tls
            conn.settimeout(self.idle_timeout_s)
            self._read(conn, peer)
        except (OSError, ssl.SSLError) as exc:
            log.info("HL7 connection from %s closed: %s", peer, Untrusted(str(exc)))
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close()

    def _read(self, conn: socket.socket, peer: str) -> None:
        """Answer each block until the peer closes; an oversized block ends the connection."""
        buffer = bytearray()
        while not self._stop.is_set():
            data = conn.recv(READ_BYTES)
            if not data:
                return
            buffer += data
            while True:
                start = buffer.find(START_BLOCK)
                if start < 0:
                    buffer.clear()  # nothing of a message yet: bytes between blocks are dropped
                    break
                end = buffer.find(END_BLOCK, start)
                length = (end if end >= 0 else len(buffer)) - start - 1
                if length > self.max_message_bytes:
                    ack = self.intake.refuse_oversized(bytes(buffer[start + 1:start + 1 + 4096]), length,
                                                       self.max_message_bytes, peer)
                    conn.sendall(START_BLOCK + ack + END_BLOCK + CARRIAGE_RETURN)
                    return
                if end < 0:
                    del buffer[:start]
                    break
                block = bytes(buffer[start + 1:end])
                del buffer[:end + 1]
                if buffer[:1] == CARRIAGE_RETURN:
                    del buffer[:1]
                ack = self.intake.handle(block, peer)
                conn.sendall(START_BLOCK + ack + END_BLOCK + CARRIAGE_RETURN)
