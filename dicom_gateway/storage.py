"""Durable instance spool: the file is on disk before C-STORE success is returned.

Layout: ``<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, written to a temporary name,
fsynced, renamed into place, and the directory fsynced (so a crash never leaves a half file).
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

#: PS3.5 9.1: a UID is digits and dots, at most 64 characters.
_UID = re.compile(r"^[0-9.]{1,64}$")


def check_uid(name: str, value: str) -> str:
    """Return ``value`` if it is a syntactically valid UID, else raise naming ``name``."""
    value = str(value).rstrip("\x00 ")
    if not _UID.match(value):
        raise ValueError(f"{name} must be a DICOM UID (digits and dots, <= 64), {value!r} is given.")
    return value


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, dir fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def instance_path(spool: Path, study_uid: str, sop_instance_uid: str) -> Path:
    return spool / check_uid("StudyInstanceUID", study_uid) / (
        check_uid("SOPInstanceUID", sop_instance_uid) + ".dcm")


def remove_temporary_files(spool: Path) -> int:
    """Delete ``.<name>.<pid>.tmp`` files an interrupted write left (never acknowledged); count them."""
    spool = Path(spool)
    if not spool.is_dir():
        return 0
    removed = 0
    for tmp in spool.glob("*/.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed
