"""The Storage SCP against DCMTK (storescu/echoscu) and pynetdicom SCUs, without the model path."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE

from dicom_gateway.scp import StorageScp
from dicom_gateway.status import StoreStatus
from dicom_gateway.store import open_gateway_store
from peers import DCMTK_ENV, association_rejection, free_port, require_peer, wait_until
from training.synthetic.dicom import make_dx_dataset


@pytest.fixture
def scp(tmp_path):
    completed: list[tuple[str, str]] = []
    store = open_gateway_store(tmp_path / "db.sqlite3")
    server = StorageScp("MEDGATE", "127.0.0.1", free_port(), store, tmp_path / "spool",
                        lambda study, model: completed.append((study, model)))
    server.start()
    try:
        yield server, store, completed
    finally:
        server.stop()
        store.close()


def send(scp_server, ds, calling="MODALITY"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp_server.port, ae_title="MEDGATE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return status.Status


def dx(tmp_path: Path, name="dx.dcm"):
    pixels = (np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) % 4096)
    ds = make_dx_dataset(pixels)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return ds, path


def test_storescu_dx_is_durable_and_completes_at_release(scp, tmp_path):
    server, store, completed = scp
    storescu = require_peer("storescu", "dcmtk")
    ds, path = dx(tmp_path)
    result = subprocess.run([storescu, "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1", str(server.port),
                             str(path), str(path)], env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: completed, timeout_s=10)
    assert completed == [(ds.StudyInstanceUID, "tb")]
    rows = store.instances_of(ds.StudyInstanceUID)
    assert len(rows) == 1  # the duplicate is idempotent
    assert Path(rows[0]["path"]).read_bytes()[128:132] == b"DICM"
    assert store.study(ds.StudyInstanceUID)["status"] == "complete"


def test_echoscu(scp):
    server, _, _ = scp
    echoscu = require_peer("echoscu", "dcmtk")
    assert subprocess.run([echoscu, "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1", str(server.port)],
                          env=DCMTK_ENV, timeout=30).returncode == 0


def test_unrouted_study_is_stored_not_refused(scp):
    server, store, completed = scp
    from pydicom import dcmread

    ds = dcmread(get_testdata_file("MR_small.dcm"))  # MR: no default route (chest CT goes to nodule)
    assert send(server, ds) == StoreStatus.SUCCESS
    wait_until(lambda: store.study(ds.StudyInstanceUID)["status"] == "unrouted", timeout_s=10)
    assert completed == []


def test_undecodable_pixels_get_cannot_understand(scp):
    server, store, _ = scp
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
    ds.PixelData = ds.PixelData[:100]
    assert send(server, ds) == StoreStatus.CANNOT_UNDERSTAND
    assert store.instances_of(ds.StudyInstanceUID) == []


def test_unsupported_sop_class_is_not_negotiated_and_server_stays_up(scp):
    server, _, _ = scp
    storescu = require_peer("storescu", "dcmtk")
    result = subprocess.run([storescu, "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1", str(server.port),
                             get_testdata_file("reportsi.dcm")], env=DCMTK_ENV, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "presentation context" in (result.stdout + result.stderr).lower()
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
    assert send(server, ds) == StoreStatus.SUCCESS


def test_wrong_called_ae_is_rejected(scp):
    server, _, _ = scp
    assert "Reason: Called AE Title Not Recognized" in association_rejection(server.port, called="SOMEONE-ELSE")


def test_a_refusal_tells_the_sender_why_in_error_comment(scp, tmp_path):
    """The reason of every refusal reaches the sender as Error Comment (0000,0902): a pynetdicom SCU reads
    it from the C-STORE-RSP, DCMTK ``storescu -d`` prints it."""
    from dicom_testdata import make_photo_dataset
    from gateway_helpers import storescu

    server, _, _ = scp
    mono = make_photo_dataset(np.full((48, 48, 3), 120, np.uint8), photometric="MONOCHROME2")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(mono.SOPClassUID, mono.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MEDGATE")
    assert assoc.is_established
    status = assoc.send_c_store(mono)
    assoc.release()
    assert status.Status == StoreStatus.NOT_READABLE_BY_MODEL
    assert status.ErrorComment == "routed to derm, which cannot read it: a colour (RGB) image is..."
    require_peer("storescu", "dcmtk")
    path = tmp_path / "mono.dcm"
    mono.save_as(path, enforce_file_format=True)
    out = storescu(server.port, path, extra=("-d", "-R"))
    assert "(0000,0902) LO [routed to derm, which cannot read it: a colour (RGB) image is...]" \
        in out.stdout + out.stderr
    # a malformed data set: the reason names what the structural check found
    broken = make_dx_dataset(np.zeros((64, 64), np.uint16))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(broken.SOPClassUID, broken.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MEDGATE")
    broken.SOPInstanceUID = "1.2.3.abc"
    status = assoc.send_c_store(broken)
    assoc.release()
    assert status.Status == StoreStatus.CANNOT_UNDERSTAND and status.ErrorComment


def test_rows_are_committed_before_the_release_is_answered(scp, tmp_path, monkeypatch):
    """Success is sent once the file is durable; the rows follow in the background, but the sender's
    A-RELEASE-RP waits for them, so a crash after a finished transfer loses no row."""
    server, store, _ = scp
    record = server.intake.record

    def slow_record(arrivals):
        time.sleep(0.5)
        return record(arrivals)

    monkeypatch.setattr(server.recorder, "_record", slow_record)
    ds, _ = dx(tmp_path)
    assert send(server, ds) == StoreStatus.SUCCESS  # returns after A-RELEASE-RP
    assert len(store.instances_of(ds.StudyInstanceUID)) == 1
