"""A minimal DICOM upper-layer client (PS3.8) for the fuzz tests: it builds the PDUs itself, so any
bytes can go on the wire — a bad data set in a C-STORE, or a bad PDU instead of a good one."""
from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dsutils import encode

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = b"1.2.826.0.1.3680043.8.498.2"
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07
PDU_NAMES = {A_ASSOCIATE_AC: "A-ASSOCIATE-AC", A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ", P_DATA_TF: "P-DATA-TF",
             A_RELEASE_RP: "A-RELEASE-RP", A_ABORT: "A-ABORT", A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
             A_RELEASE_RQ: "A-RELEASE-RQ"}
C_STORE_RQ = 0x0001
FRAGMENT_BYTES = 16_384


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


def _ae(title: str | bytes) -> bytes:
    title = title.encode("ascii") if isinstance(title, str) else title
    return title[:16].ljust(16, b" ")


def associate_rq(contexts: list[tuple[int, str, str]], called: str | bytes = "MEDGATE",
                 calling: str | bytes = "FUZZER") -> bytes:
    """A-ASSOCIATE-RQ proposing ``(context id, abstract syntax, transfer syntax)`` contexts."""
    items = _item(0x10, APPLICATION_CONTEXT)
    for context_id, abstract, transfer in contexts:
        items += _item(0x20, bytes([context_id, 0, 0, 0]) + _item(0x30, abstract.encode())
                       + _item(0x40, transfer.encode()))
    items += _item(0x50, _item(0x51, struct.pack(">L", FRAGMENT_BYTES + 6))
                   + _item(0x52, IMPLEMENTATION_CLASS_UID))
    return pdu(A_ASSOCIATE_RQ, struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + b"\0" * 32 + items)


def p_data(context_id: int, data: bytes, command: bool, last: bool = True) -> bytes:
    """One P-DATA-TF with one PDV (PS3.8 9.3.5.1, E.2 message control header)."""
    header = (1 if command else 0) | (2 if last else 0)
    return pdu(P_DATA_TF, struct.pack(">L", len(data) + 2) + bytes([context_id, header]) + data)


def c_store_rq(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian."""
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = C_STORE_RQ
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance
    return encode_command(command)


def encode_command(command: Dataset) -> bytes:
    """``command`` with its Command Group Length (0000,0000) in front (PS3.7 6.3.1)."""
    group = encode(command, True, True, False)
    return struct.pack("<HHLL", 0, 0, 4, len(group)) + group


@dataclass
class Reply:
    """What the SCP answered: a PDU type name (or ``closed`` / ``timeout``) and, for a DIMSE
    response, its status."""

    kind: str
    status: int | None = None


class Connection:
    """One TCP connection to an SCP, read and written PDU by PDU."""

    def __init__(self, port: int, timeout_s: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.accepted: dict[int, bool] = {}
        self.message_id = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the SCP has already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read_pdu(self) -> tuple[int, bytes] | str:
        """The next PDU as ``(type, body)``, or ``"closed"`` / ``"timeout"``."""
        try:
            head = self._read(6)
            if head is None:
                return "closed"
            kind, _, length = struct.unpack(">BBL", head)
            body = self._read(length)
            return "closed" if body is None else (kind, body)
        except socket.timeout:
            return "timeout"
        except OSError:
            return "closed"

    def _read(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def reply(self) -> Reply:
        """Read until a PDU that answers: a DIMSE response (its status), or any other PDU."""
        command = b""
        while True:
            got = self.read_pdu()
            if isinstance(got, str):
                return Reply(got)
            kind, body = got
            if kind != P_DATA_TF:
                return Reply(PDU_NAMES.get(kind, f"PDU 0x{kind:02X}"))
            pos, last = 0, False
            while pos + 6 <= len(body):
                length = struct.unpack_from(">L", body, pos)[0]
                header = body[pos + 5]
                command += body[pos + 6:pos + 4 + length]
                last = last or (header & 3) == 3
                pos += 4 + length
            if last:
                rsp = read_dataset(io.BytesIO(command), True, True)
                return Reply("P-DATA-TF", int(rsp.Status))

    def associate(self, contexts: list[tuple[int, str, str]], **titles) -> str:
        """Send an A-ASSOCIATE-RQ; returns the answering PDU's name and records accepted contexts."""
        if not self.send(associate_rq(contexts, **titles)):
            return "closed"
        got = self.read_pdu()
        if isinstance(got, str):
            return got
        kind, body = got
        if kind == A_ASSOCIATE_AC:
            pos = 68
            while pos + 4 <= len(body):
                item, length = body[pos], struct.unpack_from(">H", body, pos + 2)[0]
                if item == 0x21:
                    self.accepted[body[pos + 4]] = body[pos + 6] == 0
                pos += 4 + length
        return PDU_NAMES.get(kind, f"PDU 0x{kind:02X}")

    def store(self, context_id: int, sop_class: str, sop_instance: str, data: bytes) -> Reply:
        """One C-STORE of the raw data set ``data``; the SCP's reply."""
        self.message_id += 1
        message = p_data(context_id, c_store_rq(sop_class, sop_instance, self.message_id), command=True)
        fragments = [data[i:i + FRAGMENT_BYTES] for i in range(0, len(data), FRAGMENT_BYTES)] or [b""]
        for index, fragment in enumerate(fragments):
            message += p_data(context_id, fragment, command=False, last=index == len(fragments) - 1)
        if not self.send(message):
            return Reply("closed")
        return self.reply()

    def release(self) -> str:
        if not self.send(pdu(A_RELEASE_RQ, b"\0\0\0\0")):
            return "closed"
        got = self.read_pdu()
        self.close()
        return got if isinstance(got, str) else PDU_NAMES.get(got[0], f"PDU 0x{got[0]:02X}")
