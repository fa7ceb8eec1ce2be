"""The blocking C-STORE requestor against DCMTK storescp: bytes sent as stored, several SOP classes
and transfer syntaxes in one association, data sets fragmented to the peer's maximum PDU."""
from __future__ import annotations

import subprocess
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from dicom_gateway import upper_layer as ul
from dicom_gateway.requestor import Association, Part10, _data_set_offset
from dicom_gateway.scu import send_files
from peers import DCMTK_ENV, free_port, require_peer, stop_process, wait_for_port

CT = get_testdata_file("CT_small.dcm")  # Explicit VR Little Endian
MR = get_testdata_file("MR_small.dcm")
RLE = get_testdata_file("SC_rgb_rle.dcm")  # RLE Lossless, another SOP class and transfer syntax


@pytest.fixture
def pacs(tmp_path):
    """storescp accepting every transfer syntax (``+xa``) with a 4 KiB maximum PDU; yields (port, folder)."""
    port, out = free_port(), tmp_path / "pacs"
    out.mkdir()
    proc = subprocess.Popen([require_peer("storescp", "dcmtk"), "-aet", "PACS", "+xa", "--max-pdu", "4096",
                             "-od", str(out), str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc)
    yield port, out
    stop_process(proc)


def test_objects_of_several_classes_and_syntaxes_arrive_as_they_were(pacs):
    port, out = pacs
    send_files([CT, MR, RLE], ae_title="PACS", host="127.0.0.1", port=port, timeout_s=10)
    received = {dcmread(path).SOPInstanceUID: path for path in out.iterdir()}
    for source in (CT, MR, RLE):
        sent = dcmread(source)
        got = dcmread(received[sent.SOPInstanceUID])
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        for ds in (sent, got):  # storescp drops Data Set Trailing Padding when it writes the file
            ds.pop(0xFFFCFFFC, None)
        assert got.PixelData == sent.PixelData and got == sent  # fragmented over 4 KiB PDUs, reassembled


def test_a_file_s_data_set_is_sent_as_its_bytes():
    raw = open(CT, "rb").read()
    obj = Part10.read(CT)
    assert obj.data_set == raw[_data_set_offset(raw):]
    assert dcmread(BytesIO(raw)).SOPInstanceUID == obj.sop_instance_uid


def test_a_file_without_group_length_is_encoded_by_pydicom(tmp_path):
    ds = dcmread(CT)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    del ds.file_meta.FileMetaInformationGroupLength
    path = tmp_path / "no-group-length.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert _data_set_offset(path.read_bytes()) is None  # the case under test: no group length to read
    obj = Part10.read(path)
    assert dcmread(BytesIO(obj.data_set), force=True).SOPInstanceUID == ds.SOPInstanceUID


def test_data_pdus_fit_the_peer_maximum_and_mark_the_last_fragment():
    payload = bytes(range(256)) * 40
    pdus = ul.data_pdus(3, payload, 1000)
    assert all(len(p) - 6 <= 1000 for p in pdus)
    fragments = [list(ul.pdvs(bytearray(p[6:])))[0] for p in pdus]
    assert b"".join(bytes(f[3]) for f in fragments) == payload
    assert [f[2] for f in fragments] == [False] * (len(pdus) - 1) + [True]
    assert not any(f[1] for f in fragments)  # data set, not command


def test_the_association_proposes_one_context_per_class_and_syntax(pacs):
    port, _ = pacs
    objects = [Part10.read(p) for p in (CT, MR, RLE, CT)]
    with Association("127.0.0.1", port, called_ae="PACS", calling_ae="MEDGATE", objects=objects,
                     timeout_s=10) as association:
        assert len(association.proposed) == 3 and len(association.accepted) == 3
        assert association.peer_max_pdu == 4096
