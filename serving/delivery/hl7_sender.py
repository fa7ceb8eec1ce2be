"""The outbox sender of kind ``hl7``: an ORU^R01 (:mod:`serving.delivery.hl7_message`) over MLLP to
a RIS/HIS, and its original-mode acknowledgment read (HL7 v2.5.1 2.9.2).

MLLP (HL7 v2.5.1 Appendix C.4, Minimal Lower Layer Protocol release 2): each message is framed
``<VT> message <FS><CR>``, and so is the ACK.  The connection is opened with the destination's
``connect_timeout_s`` (TLS when it has a ``tls`` section) and the whole ACK must arrive within
``read_timeout_s``.

What the ACK's MSA-1 (HL7 table 0008) means for the outbox (:mod:`kernel.delivery_errors`):

* ``AA`` (or the enhanced-mode ``CA``): delivered;
* ``AE`` (``CE``): the receiver found an error in this message and would find it again: a
  :class:`~kernel.delivery_errors.PermanentDeliveryError` with MSA-3 and each ERR segment's text,
  so the item is dead-lettered at once with that reason;
* ``AR`` (``CR``), no answer in time, a refused or broken connection, an ACK that is unreadable or
  acknowledges another message (MSA-2 is not our MSH-10): a
  :class:`~kernel.delivery_errors.TransientDeliveryError`, retried by the outbox's policy.  A
  retry sends the same bytes, MSH-10 included, so the receiver can recognise a message it
  already has.
"""
from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any

import hl7

from kernel.delivery_errors import PermanentDeliveryError, TransientDeliveryError
from serving.config import Hl7Destination

log = logging.getLogger("medgate.hl7")

#: MLLP block characters (HL7 v2.5.1 Appendix C.4.3): start block <VT>, end block <FS><CR>.
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"
#: Bytes of an ACK read at most: an ACK is a few hundred bytes; more is not an ACK.
MAX_ACK_BYTES = 64 * 1024
#: HL7 table 0008 acknowledgment codes, original and enhanced mode.
ACCEPTED = frozenset({"AA", "CA"})
ERROR = frozenset({"AE", "CE"})
REJECTED = frozenset({"AR", "CR"})


def frame(message: str) -> bytes:
    """``message`` in an MLLP block, UTF-8 encoded (the ORU declares UNICODE UTF-8 in MSH-18)."""
    return START_BLOCK + message.encode("utf-8") + END_BLOCK


class Hl7Sender:
    """Outbox sender of kind ``hl7``: the payload ``{"message": ER7 text, "control_id": MSH-10}``
    to the destination of that name (:class:`serving.config.Hl7Destination`).

    Raises
    ------
    ValueError
        A destination's TLS files cannot be read (at construction, so ``medgate serve`` stops at
        start rather than retrying every message); the message names the destination.
    """

    def __init__(self, destinations: Mapping[str, Hl7Destination]) -> None:
        self.destinations = dict(destinations)
        self._contexts = {name: tls_context(dest) for name, dest in self.destinations.items()
                          if dest.tls is not None}

    def __call__(self, destination: str, payload: dict[str, Any]) -> None:
        dest = self.destinations.get(destination)
        if dest is None:  # fixed by configuration, then `medgate outbox retry`
            raise PermanentDeliveryError(f"HL7 destination {destination!r} is not configured "
                                         f"(configured: {sorted(self.destinations) or 'none'})")
        where = f"HL7 destination {dest.name} ({dest.host}:{dest.port})"
        reply = self.exchange(dest, frame(payload["message"]), where)
        check_ack(reply, payload["control_id"], where)
        log.info("ORU %s acknowledged by %s", payload["control_id"], where)

    def exchange(self, dest: Hl7Destination, block: bytes, where: str) -> bytes:
        """Send ``block`` to ``dest`` and return the answer's block content (without framing)."""
        try:
            raw = socket.create_connection((dest.host, dest.port), timeout=dest.connect_timeout_s)
        except OSError as exc:
            raise TransientDeliveryError(f"{where} not reachable: {exc}") from None
        try:
            conn = self._wrap(dest, raw) if dest.tls is not None else raw
            with conn:
                conn.settimeout(dest.read_timeout_s)
                conn.sendall(block)
                return read_block(conn, time.monotonic() + dest.read_timeout_s, where)
        except (TimeoutError, socket.timeout):
            raise TransientDeliveryError(f"{where} sent no ACK within {dest.read_timeout_s:g} s") from None
        except OSError as exc:
            raise TransientDeliveryError(f"{where}: connection failed: {exc}") from None
        finally:
            raw.close()

    def _wrap(self, dest: Hl7Destination, raw: socket.socket) -> ssl.SSLSocket:
        return self._contexts[dest.name].wrap_socket(raw, server_hostname=dest.tls.server_hostname or dest.host)


def tls_context(dest: Hl7Destination) -> ssl.SSLContext:
    """The client TLS context of ``dest``: the receiver verified against ``tls.ca_file`` (else the
    system's CAs) and by name; ``tls.cert_file``/``key_file`` as the client certificate."""
    tls = dest.tls
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"hl7.destinations {dest.name!r}: TLS files unreadable ({exc}); ca_file "
                         f"{tls.ca_file}, cert_file {tls.cert_file}, key_file {tls.key_file}") from None
    return context


def read_block(conn: socket.socket, deadline: float, where: str) -> bytes:
    """One MLLP block from ``conn`` before ``deadline`` (``time.monotonic``), without its framing."""
    data = b""
    while END_BLOCK not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        conn.settimeout(remaining)
        chunk = conn.recv(4096)
        if not chunk:
            raise TransientDeliveryError(f"{where} closed the connection before a complete ACK "
                                         f"({len(data)} bytes received)")
        data += chunk
        if len(data) > MAX_ACK_BYTES:
            raise TransientDeliveryError(f"{where} answered more than {MAX_ACK_BYTES} bytes without an "
                                         f"MLLP end block")
    block = data[:data.index(END_BLOCK)]
    start = block.find(START_BLOCK)
    if start < 0:
        raise TransientDeliveryError(f"{where} answered without an MLLP start block: {block[:80]!r}")
    return block[start + 1:]


def check_ack(reply: bytes, control_id: str, where: str) -> None:
    """Return when ``reply`` accepts the message ``control_id``; else raise (module docstring)."""
    text = reply.decode("utf-8", "replace").replace("\r\n", "\r").replace("\n", "\r")
    try:
        ack = hl7.parse(text)
        msa = ack.segment("MSA")
    except (KeyError, ValueError, IndexError, TypeError, hl7.HL7Exception) as exc:
        raise TransientDeliveryError(f"{where} answered with an unreadable ACK ({exc}): {text[:120]!r}") from None
    code, acknowledged = _field(msa, 1), _field(msa, 2)
    if acknowledged != control_id:
        raise TransientDeliveryError(f"{where} acknowledged message {acknowledged!r} (MSA-2), not {control_id!r}")
    if code in ACCEPTED:
        return
    reason = f"{where} answered {code or 'no code'} (MSA-1) to {control_id}"
    details = [ack.unescape(_field(msa, 3))] + [_error_text(ack, err) for err in _segments(ack, "ERR")]
    details = [d for d in details if d]
    if details:
        reason += ": " + "; ".join(details)
    if code in ERROR:
        raise PermanentDeliveryError(reason)
    if code not in REJECTED:
        reason += " (not an HL7 table 0008 code)"
    raise TransientDeliveryError(reason)


def _field(segment, index: int) -> str:
    return str(segment[index]) if len(segment) > index else ""


def _segments(message, name: str) -> list:
    try:
        return list(message.segments(name))
    except KeyError:
        return []


def _error_text(message, err) -> str:
    """ERR-8 user message, else ERR-3's text (HL7 table 0357), with the ERR-2 location; or ERR-1 (the
    error location and code of HL7 v2.3)."""
    text = _field(err, 8) or _component(err, 3, 2) or _field(err, 3) or _field(err, 1)
    location = _field(err, 2)
    text = message.unescape(text) if text else ""
    return f"{text} at {message.unescape(location)}" if text and location else text


def _component(segment, index: int, component: int) -> str:
    try:
        return str(segment(index)(1)(component))
    except (IndexError, KeyError, TypeError):  # absent, or a field without components
        return ""
