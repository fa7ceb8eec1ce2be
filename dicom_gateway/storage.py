"""Durable instance spool: the file is on disk before C-STORE success is returned.

Layout: ``<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, written to a temporary name,
fsynced, renamed into place, and the directory fsynced (so a crash never leaves a half file).
"""
from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from dicom_gateway.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from dicom_gateway.uids import check_uid, inside

#: What :func:`write_durably` accepts: one buffer, or several written in order without joining.
Buffers = Union[bytes, bytearray, memoryview, Sequence[Union[bytes, bytearray, memoryview]]]

#: Spool and result files hold patient data: the server's user alone reads them (the folder a
#: file is written into is made 0700 when it is new, the file 0600).
PRIVATE_FILE_MODE, PRIVATE_DIR_MODE = 0o600, 0o700


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element in Explicit VR Little Endian (PS3.5 7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    value = text.encode("ascii", "replace")
    return value + pad if len(value) % 2 else value


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                  source_ae_title: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information of a Part 10 file (PS3.10 7.1); the data set's
    bytes, as received in ``transfer_syntax_uid``, follow it unchanged.  Source Application Entity
    Title (0002,0016) records the sender's AE title."""
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _element(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
        _element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION, b" ")),
        _element(0x0016, b"AE", _padded(source_ae_title.strip() or "UNKNOWN", b" ")),
    ))
    return b"\x00" * 128 + b"DICM" + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def as_views(data: Buffers) -> list[memoryview]:
    """``data`` as a list of non-empty byte views (no copy)."""
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    return [view for view in (memoryview(part).cast("B") for part in parts) if view.nbytes]


def pwritev_all(fd: int, views: list[memoryview], offset: int) -> int:
    """Write ``views`` in order at ``offset`` (as many calls as short writes need); returns the end."""
    views = list(views)
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
    return offset


def fsync_directory(folder: Path) -> None:
    """Flush a directory's entries (the files created, renamed or deleted in it)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_durably(path: Path, data: Buffers, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, dir fsync).

    ``data`` may be a list of buffers (e.g. the File Meta Information and the received data set),
    written with one ``pwritev`` instead of being copied into one ``bytes`` first.  ``fsync=False``
    keeps the atomic rename but leaves flushing to the operating system.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        pwritev_all(fd, as_views(data), 0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_directory(path.parent)


class DirectWrite:
    """An instance to be written by :func:`write_durably` when committed (see
    :class:`dicom_gateway.slots.SlotWrite` for the other kind of pending write)."""

    def __init__(self, data: Buffers, fsync: bool = True) -> None:
        self.data, self.fsync = data, fsync

    def commit(self, path: Path) -> None:
        write_durably(path, self.data, fsync=self.fsync)

    def abandon(self) -> None:
        """Nothing was written yet."""


class DirectWriter:
    """Begins :class:`DirectWrite` s: every instance written the classic way."""

    def __init__(self, fsync: bool = True) -> None:
        self.fsync = fsync

    def begin(self, data: Buffers, transfer_syntax: str = "") -> DirectWrite:
        return DirectWrite(data, fsync=self.fsync)


def instance_path(spool: Path, study_uid: str, sop_instance_uid: str) -> Path:
    """``<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``; both UIDs checked (PS3.5 9.1) and the
    path checked to stay inside ``spool`` (returned as joined, not resolved: the rows keep the
    spool's own spelling, which :func:`dicom_gateway.ledger.unrecorded_files` compares)."""
    parts = (check_uid("StudyInstanceUID", study_uid), check_uid("SOPInstanceUID", sop_instance_uid) + ".dcm")
    inside(spool, *parts)
    return Path(spool).joinpath(*parts)


def remove_temporary_files(spool: Path, older_than_s: float = 0.0) -> int:
    """Delete ``.<name>.<pid>.tmp`` files an interrupted write left (never acknowledged), those last
    modified more than ``older_than_s`` ago (a spool shared by several nodes: younger ones may be
    another node's writes in progress); count them."""
    spool = Path(spool)
    if not spool.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for tmp in spool.glob("*/.*.tmp"):
        try:
            if older_than_s > 0 and tmp.stat().st_mtime > cutoff:
                continue
            tmp.unlink()
        except FileNotFoundError:  # finished (renamed) or removed meanwhile
            continue
        removed += 1
    return removed
