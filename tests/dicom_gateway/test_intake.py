"""The intake's checks, through DCMTK ``storescu`` and STOW-RS: what a routed model cannot read is refused
to the sender, by name, and nothing of it is stored.

* A MONOCHROME image routed to a colour model, and a multi-frame photo routed to a 2D model, were
  stored and answered success; their study failed later, where no sender looks.  They are now refused
  with 0xC001 (:attr:`StoreStatus.NOT_READABLE_BY_MODEL`) over C-STORE and as the STOW-RS Failure
  Reason, with a log line naming the model and the reason.
* A PALETTE COLOR Secondary Capture sent by ``storescu`` was refused 0xC000: the C-STORE header
  reader carries no decoder, and the pixel check decoded palette images.  ``storescu`` (DCMTK 3.6.7)
  says nothing of a refusal unless told to print it, which is how the route matrix missed it.
* Dermoscopic Photography and VL Microscopic Images are accepted and routed to derm.
"""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from dicom_gateway.intake import SUPPORTED_SOP_CLASSES, registered_image_input
from dicom_gateway.pixels import ImageInput
from dicom_gateway.status import StoreStatus
from dicom_testdata import make_photo_dataset
from gateway_helpers import Running, store_statuses
from peers import require_peer, wait_until

#: The photometric and frames refusals' texts (dicom_gateway.pixels.ImageInput.problem).
COLOUR = "derm, which cannot read it: a colour (RGB) image is required, Photometric Interpretation MONOCHROME2"
SINGLE = "derm, which cannot read it: a 2D image model reads single-frame images, Number of Frames 3"


def _skin() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:48].astype(np.float32)
    lesion = np.exp(-(((y - 24) / 9) ** 2 + ((x - 24) / 9) ** 2))
    return np.clip(np.stack([215 - 120 * lesion, 170 - 110 * lesion, 150 - 100 * lesion], -1), 0, 255).astype(np.uint8)


@pytest.fixture
def running(tmp_path):
    running = Running(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_storescu_is_told_what_derm_cannot_read_and_nothing_is_stored(running, tmp_path, caplog):
    mono = make_photo_dataset(_skin(), photometric="MONOCHROME2")
    video = make_photo_dataset(np.stack([_skin()] * 3), kind="video")
    paths = []
    for name, ds in (("mono", mono), ("video", video)):
        paths.append(tmp_path / f"{name}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    require_peer("storescu", "dcmtk")
    with caplog.at_level(logging.WARNING, logger="medgate.dicom"):
        statuses = store_statuses(running.scp.port, *paths)
    assert statuses == [StoreStatus.NOT_READABLE_BY_MODEL] * 2 == [0xC001] * 2
    for ds, reason in ((mono, COLOUR), (video, SINGLE)):
        assert running.store.instances_of(ds.StudyInstanceUID) == []
        assert not (running.scp.spool / ds.StudyInstanceUID).exists()
        study = running.store.study(ds.StudyInstanceUID)  # on the worklist, with the sender and why
        assert study["status"] == "refused"
        assert study["detail"].startswith(f"0xC001 NOT_READABLE_BY_MODEL from MODALITY: routed to {reason}")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused (0xC001 NOT_READABLE_BY_MODEL)" in logged
    assert COLOUR in logged and SINGLE in logged


@pytest.mark.parametrize("kind, photometric", [("sc", "PALETTE COLOR"), ("dermoscopy", "RGB"),
                                               ("microscopic", "RGB"), ("photo", "RGB")])
def test_storescu_colour_photos_are_stored_and_routed_to_derm(running, tmp_path, kind, photometric):
    ds = make_photo_dataset(_skin(), kind=kind, photometric=photometric)
    path = tmp_path / "photo.dcm"
    ds.save_as(path, enforce_file_format=True)
    require_peer("storescu", "dcmtk")
    assert store_statuses(running.scp.port, path) == [StoreStatus.SUCCESS]
    wait_until(lambda: running.completed, timeout_s=10)
    assert running.completed == [(ds.StudyInstanceUID, "derm")]


def test_dermoscopy_and_vl_microscopic_are_accepted_by_their_own_uids():
    # 1.2.840.10008.5.1.4.1.1.77.1.4.1 was accepted as "Dermoscopic Photography": it is Video Photographic
    assert {"1.2.840.10008.5.1.4.1.1.77.1.7", "1.2.840.10008.5.1.4.1.1.77.1.2",
            "1.2.840.10008.5.1.4.1.1.77.1.4.1"} <= SUPPORTED_SOP_CLASSES


def test_the_registered_models_say_what_they_read():
    assert registered_image_input("derm") == ImageInput(channels=3, dimensions=2)
    assert registered_image_input("tb") == ImageInput(channels=1, dimensions=2)
    assert registered_image_input("nodule") == ImageInput(channels=1, dimensions=3)
    assert registered_image_input("vitals") is None  # not an image input
    assert registered_image_input("no-such-model") is None


def test_stow_rs_failure_reason_names_the_refusal(tmp_path):
    pytest.importorskip("uvicorn")
    from test_stow import _multipart, _post, _serving

    mono = make_photo_dataset(_skin(), photometric="MONOCHROME2")
    photo = make_photo_dataset(_skin(), study_uid=mono.StudyInstanceUID)
    bodies = []
    for ds in (mono, photo):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        bodies.append(buffer.getvalue())
    with _serving(tmp_path, routes=[{"models": ["derm"], "modality": ["XC"]}]) as base:
        reply = _post(base, _multipart(*bodies))
    assert reply.status_code == 202, reply.text  # PS3.18 10.5.3: some stored, some failed
    failed, = reply.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [mono.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [StoreStatus.NOT_READABLE_BY_MODEL] == [0xC001]
    stored, = reply.json()["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [photo.SOPInstanceUID]


def test_recover_quarantines_spool_files_not_where_their_uids_put_them(tmp_path, caplog):
    """A file planted in the spool (issue: ``../spool/1.2.999.777`` written through an unchecked upload)
    was recorded as a study at the next start and shown on the worklist."""
    from pydicom.uid import generate_uid

    from serving.http.worklist import worklist
    from serving.store import Store

    spool = tmp_path / "spool"
    planted = make_photo_dataset(_skin())  # its own StudyInstanceUID is not 1.2.999.777
    pathlike = make_photo_dataset(_skin())
    pathlike.StudyInstanceUID = "../../tmp/x"
    misnamed = make_photo_dataset(_skin())
    placed = make_photo_dataset(_skin())  # where the gateway writes it: recorded as before
    files = {
        "planted": (planted, spool / "1.2.999.777" / f"{planted.SOPInstanceUID}.dcm"),
        "pathlike": (pathlike, spool / "1.2.999.778" / f"{pathlike.SOPInstanceUID}.dcm"),
        "misnamed": (misnamed, spool / str(misnamed.StudyInstanceUID) / f"{generate_uid()}.dcm"),
        "placed": (placed, spool / str(placed.StudyInstanceUID) / f"{placed.SOPInstanceUID}.dcm"),
    }
    for ds, path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    with caplog.at_level(logging.ERROR, logger="medgate.dicom"):
        running = Running(tmp_path)
    try:
        shown = {s["study_uid"] for s in worklist(Store(running.store.database))}
        assert shown == {placed.StudyInstanceUID}
        for name in ("planted", "pathlike", "misnamed"):
            ds, path = files[name]
            assert not path.exists()
            assert (tmp_path / "spool-quarantine" / path.parent.name / path.name).is_file(), name
            assert running.store.study(ds.StudyInstanceUID) is None
        assert running.store.study("1.2.999.777") is None
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "not recorded, moved to" in logged and "StudyInstanceUID must be a DICOM UID" in logged
        assert "its UIDs place it at" in logged
    finally:
        running.stop()



def test_a_refused_study_moves_on_when_an_instance_of_it_is_stored(running, tmp_path):
    from serving.http.worklist import worklist
    from serving.store import Store

    mono = make_photo_dataset(_skin(), photometric="MONOCHROME2")
    photo = make_photo_dataset(_skin(), study_uid=mono.StudyInstanceUID)
    paths = [tmp_path / "mono.dcm", tmp_path / "photo.dcm"]
    mono.save_as(paths[0], enforce_file_format=True)
    photo.save_as(paths[1], enforce_file_format=True)
    require_peer("storescu", "dcmtk")
    assert store_statuses(running.scp.port, paths[0]) == [StoreStatus.NOT_READABLE_BY_MODEL]
    row, = [s for s in worklist(Store(running.store.database)) if s["study_uid"] == mono.StudyInstanceUID]
    assert row["status"] == "refused" and COLOUR in row["detail"] and row["instances"] == 0
    assert store_statuses(running.scp.port, paths[1]) == [StoreStatus.SUCCESS]
    wait_until(lambda: running.completed, timeout_s=10)
    assert running.completed == [(mono.StudyInstanceUID, "derm")]
    assert running.store.study(mono.StudyInstanceUID)["status"] == "complete"
    # a refusal after the study was stored leaves it as it is
    assert store_statuses(running.scp.port, paths[0]) == [StoreStatus.NOT_READABLE_BY_MODEL]
    assert running.store.study(mono.StudyInstanceUID)["status"] == "complete"


def test_refusal_text_is_bounded_and_without_control_characters(tmp_path):
    from dicom_gateway import ledger
    from dicom_gateway.store import open_gateway_store

    store = open_gateway_store(tmp_path / "db.sqlite3")
    try:
        refusal = ledger.Refusal("1.2.3", "1.2.3.4", "EVIL\r\nAE", StoreStatus.CANNOT_UNDERSTAND,
                                 "forged\nlog line\x1b[31m" + "x" * 1000)
        ledger.record_refusal(store, refusal)
        detail = store.study("1.2.3")["detail"]
        assert len(detail) == ledger.MAX_REFUSAL_CHARS
        assert detail.startswith("0xC000 CANNOT_UNDERSTAND from EVIL  AE: forged log line [31mxxx")
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in detail)
        ledger.record_refusal(store, ledger.Refusal("1.2.3", "1.2.3.5", "B", StoreStatus.NOT_READABLE_BY_MODEL, "r"))
        assert store.study("1.2.3")["detail"] == "0xC001 NOT_READABLE_BY_MODEL from B: r"
        with pytest.raises(ValueError, match="non-success"):
            ledger.Refusal("1.2.3", "1.2.3.4", "A", StoreStatus.SUCCESS, "")
    finally:
        store.close()


def test_storescu_palette_with_a_broken_table_is_refused_at_intake(running, tmp_path):
    """A PALETTE COLOR image whose Green table holds half the entries its descriptor announces was
    stored (0x0000) and failed later in its study: the header path now checks the tables."""
    ds = make_photo_dataset(_skin(), kind="sc", photometric="PALETTE COLOR")
    ds.GreenPaletteColorLookupTableData = ds.GreenPaletteColorLookupTableData[:256]
    path = tmp_path / "palette.dcm"
    ds.save_as(path, enforce_file_format=True)
    require_peer("storescu", "dcmtk")
    assert store_statuses(running.scp.port, path) == [StoreStatus.CANNOT_UNDERSTAND]
    assert running.store.instances_of(ds.StudyInstanceUID) == []
    study = running.store.study(ds.StudyInstanceUID)
    assert study["status"] == "refused" and "Palette Color Lookup Table Data must hold 256 entries" in study["detail"]
