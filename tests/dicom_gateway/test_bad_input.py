"""Bad input gets a failure status or a rejection with a reason; the SCP stays up."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE

from dicom_gateway.routing import Rule
from dicom_gateway.status import StoreStatus
from dicom_testdata import make_ct_series
from gateway_helpers import Running, storescu
from peers import association_rejection, require_peer
from training.synthetic.dicom import make_dx_dataset

RULES = (Rule(models=("tb",), modalities=frozenset({"DX", "CR"})),
         Rule(models=("nodule",), modalities=frozenset({"CT"})))


@pytest.fixture
def gateway(tmp_path):
    running = Running(tmp_path, rules=RULES)
    yield running
    assert _echo(running.scp.port)  # still up after every case
    running.stop()


def _echo(port: int) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGATE")
    ok = assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def _send(port: int, ds, syntax=None) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, syntax or ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGATE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return status.Status


def test_truncated_pixel_data(gateway):
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
    ds.PixelData = ds.PixelData[:100]
    assert _send(gateway.scp.port, ds) == StoreStatus.CANNOT_UNDERSTAND


def test_truncated_file_and_file_without_meta_are_refused_by_storescu(gateway):
    require_peer("storescu", "dcmtk")
    for name in ("MR_truncated.dcm", "no_meta.dcm", "rtplan_truncated.dcm"):
        result = storescu(gateway.scp.port, get_testdata_file(name))
        assert result.returncode != 0 or "Store Failed" in result.stderr or "Bad DICOM" in result.stderr, name
    assert gateway.store.database.rows("SELECT * FROM instances") == []


def test_dataset_without_study_uid(gateway):
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
    del ds.StudyInstanceUID
    assert _send(gateway.scp.port, ds) == StoreStatus.CANNOT_UNDERSTAND


def test_wrong_vr_value(gateway, tmp_path):
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
    path = tmp_path / "bad-vr.dcm"
    ds.save_as(path, enforce_file_format=True)
    rows = b"\x28\x00\x10\x00US\x02\x00\x40\x00"  # Rows (0028,0010) US, 2 bytes, value 64
    data = path.read_bytes()
    assert data.count(rows) == 1
    path.write_bytes(data.replace(rows, b"\x28\x00\x10\x00US\x03\x00\x40\x00\x00"))  # 3 bytes: invalid US
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", gateway.scp.port, ae_title="MEDGATE")
    status = assoc.send_c_store(path)  # a path is sent as its raw bytes, undecoded
    assoc.release()
    assert 0xC000 <= status.Status <= 0xCFFF  # cannot understand (0xC000, or pynetdicom's 0xC210)
    assert gateway.store.instances_of(ds.StudyInstanceUID) == []


def test_unsupported_transfer_syntax_is_not_negotiated(gateway):
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, "1.2.826.0.1.3680043.9.9999.1")  # a private, unknown TS
    assoc = ae.associate("127.0.0.1", gateway.scp.port, ae_title="MEDGATE")
    assert not assoc.is_established or not assoc.accepted_contexts
    if assoc.is_established:
        assoc.release()


def test_unknown_called_ae_is_rejected(gateway):
    rejection = association_rejection(gateway.scp.port, called="NOT-MEDGATE")
    assert "Reason: Called AE Title Not Recognized" in rejection  # PS3.8 9.3.4: diagnostic 7


def test_slices_that_disagree_in_size(gateway, caplog):
    series = make_ct_series(np.zeros((3, 32, 32), np.uint16))
    odd = make_ct_series(np.zeros((1, 16, 16), np.uint16))[0]
    odd.SeriesInstanceUID, odd.StudyInstanceUID = series[0].SeriesInstanceUID, series[0].StudyInstanceUID
    odd.FrameOfReferenceUID = series[0].FrameOfReferenceUID
    odd.ImagePositionPatient = [0, 0, 50]
    assert [_send(gateway.scp.port, ds) for ds in series] == [StoreStatus.SUCCESS] * 3
    assert _send(gateway.scp.port, odd) == StoreStatus.CANNOT_UNDERSTAND
    assert "slice size 16x16 differs from the series' 32x32" in caplog.text
    assert len(gateway.store.instances_of(series[0].StudyInstanceUID)) == 3
