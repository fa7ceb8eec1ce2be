"""WADO-RS Retrieve Frames (PS3.18 10.4.1.1.3) with the real ``dicomweb-client``: native frames as
``application/octet-stream`` (Explicit VR Little Endian), compressed frames as they are stored in
their own media type, frame numbers and ``Accept`` checked, every read audited.

Objects are stored by STOW-RS (the ``server`` fixture of ``test_dicomweb``) from pydicom's test files:
CT_small (native), MR_small_bigendian, an RLE two-frame RGB
image and the same decompressed, JPEG 2000 and JPEG baseline images.
"""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from serving.governance.audit import AuditLog
from serving.http import wado
from serving.http.wado import read_frames
from test_dicomweb import _client, _part10, server  # noqa: F401 - the fixture
from web_app import auth

RLE, JPEG_2000, JPEG_BASELINE = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50"
OCTET_STREAM = ("application/octet-stream", "1.2.840.10008.1.2.1")


def _testdata(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _own_uids(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` under UIDs of its own (pydicom's MR_small variants share theirs)."""
    ds.SOPInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _native_rgb() -> pydicom.Dataset:
    """The RLE two-frame RGB image decompressed."""
    ds = _testdata("SC_rgb_rle_2frame.dcm")
    ds.decompress()
    return _part10(_own_uids(ds))


@pytest.fixture
def held(server):
    names = ("CT_small.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm")
    datasets = {name: _testdata(name) for name in names}
    datasets["MR_small_bigendian.dcm"] = _own_uids(_testdata("MR_small_bigendian.dcm"))
    datasets["native_rgb"] = _native_rgb()
    _client(server).store_instances(list(datasets.values()))
    return server, datasets


def _path(ds: pydicom.Dataset, frames: str) -> str:
    return (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
            f"{ds.SOPInstanceUID}/frames/{frames}")


def _get(web, path: str, role: str = "clinician", **headers: str) -> requests.Response:
    return requests.get(web.url + path, headers={**auth(role), **headers}, timeout=30)


def _frames(web, ds, numbers, media_types=(OCTET_STREAM,)) -> list[bytes]:
    return _client(web).retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                                 frame_numbers=numbers, media_types=media_types)


def test_native_frames_are_octet_streams_in_explicit_little_endian(held):
    web, held_ = held
    ct, rgb = held_["CT_small.dcm"], held_["native_rgb"]
    assert _frames(web, ct, [1]) == [ct.PixelData]
    frame_bytes = 100 * 100 * 3
    assert _frames(web, rgb, [2, 1]) == [rgb.PixelData[frame_bytes:], rgb.PixelData[:frame_bytes]]
    response = _get(web, _path(ct, "1"), accept='multipart/related; type="application/octet-stream"')
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    assert b"Content-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1" in response.content

    big = held_["MR_small_bigendian.dcm"]
    [frame] = _frames(web, big, [1])
    assert np.array_equal(np.frombuffer(frame, "<i2").reshape(64, 64), big.pixel_array)  # swapped to LE


def test_single_bit_frames_start_on_a_byte():
    """A SEG's frames (read from the file: the gateway takes no SEG in)."""
    seg = _testdata("liver_1frame.dcm")
    frames = read_frames(get_testdata_file("liver_1frame.dcm"), [1])
    assert frames.media_type == "application/octet-stream"
    [frame] = frames.data
    unpacked = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[:seg.Rows * seg.Columns]
    assert np.array_equal(unpacked.reshape(seg.Rows, seg.Columns), seg.pixel_array)


@pytest.mark.parametrize("name, media, syntax", [
    ("SC_rgb_rle_2frame.dcm", "image/dicom-rle", RLE), ("MR_small_jp2klossless.dcm", "image/jp2", JPEG_2000),
    ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg", JPEG_BASELINE)])
def test_compressed_frames_go_as_stored_in_their_media_type(held, name, media, syntax):
    web, held_ = held
    ds = held_[name]
    count = int(ds.get("NumberOfFrames", 1))
    stored = list(generate_frames(ds.PixelData, number_of_frames=count))
    assert _frames(web, ds, [count], media_types=((media, syntax),)) == [stored[-1]]
    assert _frames(web, ds, [1], media_types=((media,),)) == [stored[0]]  # no syntax named: the stored one
    anything = _get(web, _path(ds, "1"), accept="multipart/related; type=application/octet-stream; transfer-syntax=*")
    assert anything.status_code == 200 and f'type="{media}"' in anything.headers["content-type"]  # OHIF's Accept
    assert f"Content-Type: {media}; transfer-syntax={syntax}".encode() in anything.content
    refused = _get(web, _path(ds, "1"), accept='multipart/related; type="application/octet-stream"')
    assert refused.status_code == 406 and "not transcoded" in refused.json()["error"]
    other = _get(web, _path(ds, "1"), accept=f'multipart/related; type="{media}"; transfer-syntax=1.2.3')
    assert other.status_code == 406


@pytest.mark.parametrize("name, frames, status, named", [
    ("CT_small.dcm", "0", 400, "'0'"), ("CT_small.dcm", "1,x", 400, "'x'"), ("CT_small.dcm", "-1", 400, "'-1'"),
    ("CT_small.dcm", "1,,2", 400, "''"), ("CT_small.dcm", "01", 400, "'01'"), ("CT_small.dcm", "2", 404, "[2]"),
    ("SC_rgb_rle_2frame.dcm", "1,3,9", 404, "[3, 9]")])
def test_frame_numbers_are_checked(held, name, frames, status, named):
    web, held_ = held
    response = _get(web, _path(held_[name], frames))
    assert response.status_code == status, response.text
    assert named in response.json()["error"]


def test_frames_of_an_object_without_pixels_or_unknown_are_404(held):
    web, held_ = held
    ct = held_["CT_small.dcm"]
    gone = f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/1.2.3.4/frames/1"
    assert _get(web, gone).status_code == 404
    assert _get(web, gone.replace("1.2.3.4", "1.02.3")).status_code == 400  # the UID grammar


def test_frames_are_patient_data_read_by_clinical_roles_and_audited(held):
    web, held_ = held
    ct = held_["CT_small.dcm"]
    denied = _get(web, _path(ct, "1"), role="engineer")
    assert denied.status_code == 403 and "engineer" in denied.json()["error"]
    assert _get(web, _path(ct, "1")).status_code == 200
    assert _get(web, _path(ct, "5")).status_code == 404
    audit = AuditLog(web.state_dir / "medgate.sqlite3")
    try:
        rows = [r for r in audit.rows() if r["study_uid"] == ct.StudyInstanceUID and "frames" in (r["query"] or "")]
        assert audit.verify().ok
    finally:
        audit.close()
    assert [(r["role"], r["outcome"]) for r in rows] == [("engineer", "denied"), ("clinician", "success"),
                                                          ("clinician", "not-found")]
    assert ct.SOPInstanceUID in rows[1]["detail"] and "5" in rows[2]["query"]


def test_single_bit_frames_not_ending_on_a_byte_are_repacked(tmp_path):
    """Two 3x3 frames of one bit each: the second begins at bit 9 of the Pixel Data (PS3.5 8.1.1)."""
    seg = _testdata("liver_1frame.dcm")
    planes = np.array([[[1, 0, 1], [0, 1, 0], [1, 1, 1]], [[0, 1, 1], [1, 0, 0], [0, 0, 1]]], np.uint8)
    seg.Rows, seg.Columns, seg.NumberOfFrames = 3, 3, 2
    seg.PixelData = np.packbits(planes.ravel(), bitorder="little").tobytes() + b"\0"
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    second, first = read_frames(str(tmp_path / "seg.dcm"), [2, 1]).data
    for frame, plane in ((first, planes[0]), (second, planes[1])):
        assert np.array_equal(np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[:9], plane.ravel())


@pytest.mark.parametrize("bits", [16, 1])
def test_frames_of_large_pixel_data_are_read_at_their_offset(tmp_path, bits):
    """Pixel Data over ``DEFER_BYTES`` stays in the file; each frame is read where it lies."""
    ds = _testdata("CT_small.dcm" if bits == 16 else "liver_1frame.dcm")
    rows, columns, count = (256, 256, 6) if bits == 16 else (999, 1001, 5)  # single bits: frames not on a byte
    rng = np.random.default_rng(bits)
    if bits == 16:
        planes = rng.integers(0, 4000, (count, rows, columns), dtype=np.uint16)
        ds.PixelData = planes.tobytes()
    else:
        planes = rng.integers(0, 2, (count, rows, columns), dtype=np.uint8)
        ds.PixelData = np.packbits(planes.ravel(), bitorder="little").tobytes()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, count
    assert len(ds.PixelData) > wado.DEFER_BYTES
    ds.save_as(tmp_path / "large.dcm", enforce_file_format=True)
    frames = read_frames(str(tmp_path / "large.dcm"), [count, 2, 1])
    for frame, plane in zip(frames.data, planes[[count - 1, 1, 0]]):
        if bits == 16:
            assert frame == plane.tobytes()
        else:
            unpacked = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[:rows * columns]
            assert np.array_equal(unpacked, plane.ravel())


def test_frames_of_a_file_gone_or_broken_since_it_was_indexed_are_404(held):
    web, held_ = held
    ct = held_["CT_small.dcm"]
    assert _get(web, _path(ct, "1")).status_code == 200  # indexed
    spool = web.state_dir / "spool" / str(ct.StudyInstanceUID) / f"{ct.SOPInstanceUID}.dcm"
    spool.write_bytes(b"not DICOM")
    broken = _get(web, _path(ct, "1"))
    assert broken.status_code == 404 and "readable" in broken.json()["error"]
    spool.unlink()
    assert _get(web, _path(ct, "1")).status_code == 404
