"""The association acceptor at the protocol level: fragments, limits, timeouts and broken peers."""
from __future__ import annotations

import socket
import struct
import time
from io import BytesIO

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, build_context
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

from dicom_gateway import dimse
from dicom_gateway import upper_layer as ul
from dicom_gateway.acceptor import APPLICATION_CONTEXT
from dicom_gateway.scp import StorageScp
from dicom_gateway.store import open_gateway_store
from gateway_helpers import Running
from peers import association_rejection, free_port, wait_until
from training.synthetic.dicom import make_dx_dataset


@pytest.fixture
def gateway(tmp_path):
    running = Running(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def echo_ok(port: int) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(sc.Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGATE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status == 0


def raw_associate(port: int, contexts) -> socket.socket:
    """A raw connection with an accepted association (our own PDUs, checked by the acceptor)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = "RAW", "MEDGATE"
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request.encode())
    pdu_type, _ = ul.read_pdu(sock, 0)
    assert pdu_type == ul.ASSOCIATE_AC
    return sock


def test_data_set_in_many_small_fragments_is_stored_byte_identical(tmp_path):
    store = open_gateway_store(tmp_path / "db.sqlite3")
    scp = StorageScp("MEDGATE", "127.0.0.1", free_port(), store, tmp_path / "spool", lambda *a: None,
                     max_pdu_bytes=4096)
    scp.start()
    try:
        ds = make_dx_dataset((np.arange(256 * 256) % 4096).astype(np.uint16).reshape(256, 256))
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDGATE")
        assert assoc.is_established and assoc.acceptor.maximum_length == 4096
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        row = store.database.rows("SELECT path FROM instances")[0]
        stored = dcmread(row["path"])
        assert stored.PixelData == ds.PixelData and stored.SOPInstanceUID == ds.SOPInstanceUID
        assert stored.file_meta.SourceApplicationEntityTitle.strip() == "MODALITY"
    finally:
        scp.stop()
        store.close()


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",            # not a PDU type
    struct.pack(">BxI", 1, 0xFFFFFFF0),               # A-ASSOCIATE-RQ with a giant length
    struct.pack(">BxI", 4, 8) + b"\x00" * 8,          # P-DATA-TF before any association
    struct.pack(">BxI", 1, 10) + b"\x00" * 10,        # A-ASSOCIATE-RQ too short to decode
], ids=["http", "giant-length", "data-first", "short-rq"])
def test_broken_peers_are_aborted_and_the_server_stays_up(gateway, garbage, caplog):
    with socket.create_connection(("127.0.0.1", gateway.scp.port), timeout=10) as sock:
        sock.sendall(garbage)
        reply = sock.recv(64)
    assert reply == b"" or reply[0] == ul.ABORT
    assert echo_ok(gateway.scp.port)
    assert "aborted" in caplog.text


def test_unknown_command_gets_unrecognized_operation_and_context_checks(gateway):
    context = build_context(sc.Verification)
    context.context_id = 1
    sock = raw_associate(gateway.scp.port, [context])
    with sock:
        command = Dataset()  # a C-FIND-RQ (0x0020), which this SCP does not provide
        command.AffectedSOPClassUID = sc.Verification
        command.CommandField, command.MessageID, command.CommandDataSetType = 0x0020, 7, dimse.NO_DATA_SET
        elements = encode(command, True, True)
        message = struct.pack("<HHII", 0, 0, 4, len(elements)) + elements
        for pdu in ul.command_pdus(1, message, 0):
            sock.sendall(pdu)
        pdu_type, body = ul.read_pdu(sock, 0)
        (_, _, _, fragment), = ul.pdvs(body)
        response = decode(BytesIO(bytes(fragment)), True, True)
        assert response.Status == dimse.UNRECOGNIZED_OPERATION and response.MessageIDBeingRespondedTo == 7
        for pdu in ul.command_pdus(9, message, 0):  # context 9 was never proposed
            sock.sendall(pdu)
        pdu_type, _ = ul.read_pdu(sock, 0)
        assert pdu_type == ul.ABORT
    assert echo_ok(gateway.scp.port)


def test_association_limit_rejects_transiently(tmp_path):
    running = Running(tmp_path, max_associations=2)
    held = []
    try:
        for _ in range(2):
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(sc.Verification)
            held.append(ae.associate("127.0.0.1", running.scp.port, ae_title="MEDGATE"))
        assert all(a.is_established for a in held)
        assert ("Result: Rejected Transient, Source: Service Provider (Presentation Related)\n"
                "F: Reason: Local Limit Exceeded" in association_rejection(running.scp.port))
        held.pop().release()
        assert wait_until(lambda: echo_ok(running.scp.port), timeout_s=10)
    finally:
        for assoc in held:
            assoc.release()
        running.stop()


def test_silent_connection_is_closed_after_the_artim_time(gateway, caplog):
    gateway.scp.acceptor.artim_s = 0.5
    with socket.create_connection(("127.0.0.1", gateway.scp.port), timeout=10) as sock:
        start = time.monotonic()
        data = sock.recv(64)
        waited = time.monotonic() - start
    assert data == b"" or data[0] == ul.ABORT
    assert waited < 9
    assert "network timeout (ARTIM)" in caplog.text


@pytest.mark.parametrize("field, value, reason", [
    ("protocol_version", 0x0000, "protocol version"),
    ("contexts", [1, 1], "must be distinct odd numbers"),
])
def test_malformed_association_requests_are_rejected(gateway, caplog, field, value, reason):
    contexts = []
    for context_id in (value if field == "contexts" else [1]):
        context = build_context(sc.Verification)
        context.context_id = context_id
        contexts.append(context)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = "RAW", "MEDGATE"
    primitive.presentation_context_definition_list = contexts
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    if field == "protocol_version":
        request.protocol_version = value
    with socket.create_connection(("127.0.0.1", gateway.scp.port), timeout=10) as sock:
        sock.sendall(request.encode())
        pdu_type, _ = ul.read_pdu(sock, 0)
    assert pdu_type == ul.ASSOCIATE_RJ
    assert reason in caplog.text
    assert echo_ok(gateway.scp.port)


@pytest.mark.parametrize("sop_class, sop_instance", [(sc.CTImageStorage, "1.2.3.4.5"),  # odd: padded
                                                     (sc.CTImageStorage, "1.2.3.45"),
                                                     (sc.Verification, None)])  # C-ECHO: no instance
def test_response_command_set_is_what_pydicom_encodes(sop_class, sop_instance):
    """The hand-written C-xxx-RSP encoder gives the bytes pydicom gives for the same elements."""
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = dimse.C_STORE_RQ if sop_instance else dimse.C_ECHO_RQ
    command.MessageID = 65535
    if sop_instance:
        command.AffectedSOPInstanceUID = sop_instance
    expected = Dataset()
    expected.AffectedSOPClassUID = sop_class
    expected.CommandField = command.CommandField | 0x8000
    expected.MessageIDBeingRespondedTo = 65535
    expected.CommandDataSetType = dimse.NO_DATA_SET
    expected.Status = 0xA700
    if sop_instance:
        expected.AffectedSOPInstanceUID = sop_instance
    elements = encode(expected, True, True)
    assert dimse.encode_response(command, 0xA700) == struct.pack("<HHII", 0, 0, 4, len(elements)) + elements
    assert decode(BytesIO(dimse.encode_response(command, 0)), True, True).Status == 0


def test_error_comment_is_an_lo_of_at_most_64_characters():
    """Error Comment (0000,0902) carries the refusal's reason: LO (PS3.5 6.2), default repertoire, no
    control character or backslash, at most 64 characters; never on a success."""
    command = Dataset()
    command.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    command.CommandField = dimse.C_STORE_RQ
    command.MessageID = 7
    command.AffectedSOPInstanceUID = "1.2.3.4"
    reason = "routed to derm\r\n\x1b[31mforged \\ line\x00 é " + "x" * 100
    response = decode(BytesIO(dimse.encode_response(command, 0xC001, reason)), True, True)
    assert response.Status == 0xC001
    comment = response.ErrorComment
    assert len(comment) <= dimse.ERROR_COMMENT_MAX_CHARS == 64
    assert comment.startswith("routed to derm [31mforged line ") and comment.endswith("...")
    assert all(0x20 <= ord(c) <= 0x7E and c != "\\" for c in comment)
    assert "ErrorComment" not in decode(BytesIO(dimse.encode_response(command, 0, reason)), True, True)
    assert "ErrorComment" not in decode(BytesIO(dimse.encode_response(command, 0xC000)), True, True)
    assert dimse.error_comment("short reason") == "short reason"
