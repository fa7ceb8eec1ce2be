"""Pre-written slots (dicom_gateway/slots.py): a valid Part 10 file at every step, one flush,
recovery of flushed slots whose rename a crash lost, and the classic path where no slot fits."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, \
    ImplicitVRLittleEndian

from dicom_gateway.routing import Rule
from dicom_gateway.slots import TRAILER, SlotPool, SlotWrite, read_trailer
from dicom_gateway.storage import DirectWrite, instance_path, part10_header
from dicom_testdata import make_ct_series
from gateway_helpers import Running
from peers import wait_until


def _instance(syntax: str = ExplicitVRLittleEndian, seed: int = 0) -> tuple[list[bytes], object]:
    """The buffers a C-STORE hands the pool (File Meta Information, data set as received)."""
    volume = np.random.default_rng(seed).integers(0, 3000, (1, 32, 32)).astype(np.uint16)
    ds = make_ct_series(volume)[0]
    buffer = io.BytesIO()
    little, implicit = syntax != ExplicitVRBigEndian, syntax == ImplicitVRLittleEndian
    if syntax == ExplicitVRBigEndian:
        ds.BitsAllocated, ds.PixelData = 16, volume[0].astype(">u2").tobytes()
    write_dataset(_Stream(buffer, little, implicit), ds)
    header = part10_header(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, "CTSCANNER")
    ds.pixels = volume[0]
    return [header, buffer.getvalue()], ds


class _Stream:
    """pydicom's DicomFileLike over a BytesIO with the encoding set."""

    def __new__(cls, buffer, little, implicit):
        from pydicom.filebase import DicomFileLike
        stream = DicomFileLike(buffer)
        stream.is_little_endian, stream.is_implicit_VR = little, implicit
        return stream


@pytest.fixture
def pool(tmp_path):
    pool = SlotPool(tmp_path / ".slots", pool_bytes=1 << 20, finish_interval_s=60.0)
    pool.start()
    yield pool
    pool.stop()


def _ready(pool: SlotPool, buffers) -> None:
    assert pool.wait_ready(sum(len(b) for b in buffers), timeout_s=30)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_a_committed_slot_is_a_valid_file_before_and_after_it_is_cut_to_length(pool, tmp_path, syntax):
    buffers, ds = _instance(syntax)
    _ready(pool, buffers)
    write = pool.begin(buffers, syntax)
    assert isinstance(write, SlotWrite)
    target = tmp_path / "spool" / "study" / "a.dcm"
    write.commit(target)
    length = sum(len(b) for b in buffers)
    assert target.stat().st_size == write.slot.size > length  # still padded: the finisher waits
    padded = dcmread(target)
    assert padded.file_meta.TransferSyntaxUID == syntax
    assert padded.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(padded.pixel_array, ds.pixels)
    assert "DataSetTrailingPadding" in padded
    assert read_trailer(target) == length
    pool.stop()  # the last finisher round: directories flushed, files cut to their length
    assert target.read_bytes() == b"".join(buffers)
    assert "DataSetTrailingPadding" not in dcmread(target)


def test_an_abandoned_slot_has_no_trailer_and_is_used_again(pool):
    buffers, _ = _instance()
    _ready(pool, buffers)
    before = pool.ready_count()
    write = pool.begin(buffers, ExplicitVRLittleEndian)
    assert pool.ready_count() == before - 1
    write.abandon()
    assert pool.ready_count() == before
    assert read_trailer(write.slot.path) is None
    again = pool.begin(buffers, ExplicitVRLittleEndian)
    assert again.slot.path == write.slot.path
    again.abandon()


def test_no_ready_slot_deflate_or_odd_length_take_the_classic_write(pool):
    buffers, _ = _instance()
    assert isinstance(pool.begin(buffers, ExplicitVRLittleEndian), DirectWrite)  # cold: none of this size yet
    assert pool.misses == 1
    _ready(pool, buffers)
    assert isinstance(pool.begin(buffers, DeflatedExplicitVRLittleEndian), DirectWrite)
    assert isinstance(pool.begin(buffers + [b"x"], ExplicitVRLittleEndian), DirectWrite)
    slot = pool.begin(buffers, ExplicitVRLittleEndian)
    assert isinstance(slot, SlotWrite)
    slot.abandon()


def _flushed_not_renamed(pool: SlotPool, buffers) -> Path:
    """A slot as a crash between its flush and its rename leaves it."""
    write = pool.begin(buffers, ExplicitVRLittleEndian)
    os.pwrite(write._fd, write._trailer, write.slot.size - TRAILER.size)
    os.fdatasync(write._fd)
    os.close(write._fd)
    return write.slot.path


def test_recovery_places_flushed_slots_and_deletes_the_others(tmp_path):
    folder = tmp_path / "spool" / ".slots"
    pool = SlotPool(folder, pool_bytes=1 << 20)
    pool.start()
    committed, ds = _instance(seed=1)
    torn, _ = _instance(seed=2)
    unfinished, _ = _instance(seed=3)
    _ready(pool, committed)
    committed_slot = _flushed_not_renamed(pool, committed)
    torn_slot = _flushed_not_renamed(pool, torn)
    with open(torn_slot, "r+b") as file:  # part of the data never reached the disk
        file.seek(sum(len(b) for b in torn) - 512)
        file.write(bytes(512))
    pool.begin(unfinished, ExplicitVRLittleEndian)  # written, never flushed nor given a trailer
    pool.stop()
    spool = tmp_path / "spool"
    placed = SlotPool(folder).recover(
        lambda slot: instance_path(spool, *(str(getattr(dcmread(slot), k))
                                            for k in ("StudyInstanceUID", "SOPInstanceUID"))))
    target = instance_path(spool, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
    assert placed == [target]
    assert target.read_bytes() == b"".join(committed)
    assert not committed_slot.exists() and not torn_slot.exists()
    assert list(folder.iterdir()) == []


def test_the_scp_records_and_routes_an_instance_whose_rename_a_crash_lost(tmp_path):
    """kill -9 after the flush, before the rename: at start the slot is put in place, recorded,
    and its study completes."""
    folder = tmp_path / "spool" / ".slots"
    pool = SlotPool(folder, pool_bytes=1 << 20)
    pool.start()
    buffers, ds = _instance(seed=4)
    _ready(pool, buffers)
    _flushed_not_renamed(pool, buffers)
    pool.stop()
    running = Running(tmp_path, rules=(Rule(models=("nodule",), modalities=frozenset({"CT"})),))
    try:
        wait_until(lambda: running.completed, timeout_s=10)
        assert running.completed == [(str(ds.StudyInstanceUID), "nodule")]
        [row] = running.store.instances_of(str(ds.StudyInstanceUID))
        assert Path(row["path"]).read_bytes() == b"".join(buffers)
        assert row["calling_ae"] == "CTSCANNER"
    finally:
        running.stop()


def test_a_commit_that_fails_leaves_no_instance_behind(pool, tmp_path):
    buffers, _ = _instance()
    _ready(pool, buffers)
    write = pool.begin(buffers, ExplicitVRLittleEndian)
    blocked = tmp_path / "not-a-folder"
    blocked.write_bytes(b"")
    with pytest.raises(OSError):
        write.commit(blocked / "a.dcm")
    assert not write.slot.path.exists()  # neither put in place at the next start nor used again
    write.abandon()  # what the intake does after a failed commit: nothing more happens
    assert write.slot not in [slot for slots in pool._ready.values() for slot in slots]
