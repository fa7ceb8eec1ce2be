"""A multipart body (RFC 2046 5.1; STOW-RS sends ``multipart/related``, PS3.18 8.6.1.2) parsed as
it streams, its parts spilled to one anonymous temporary file: memory does not grow with the body.

The parts lie end to end in the file, which never holds more than the body's part contents (no
padding: 300,000 one-byte parts once took 2.3 GiB when each started at a page boundary).  A part is
mapped on its own (:meth:`SpilledParts.payload`, from the page boundary before it) and read as a
buffer (:func:`memoryview`) or a file (:class:`ViewReader`) without being copied into memory.  The
file has no name (it is deleted at creation), so nothing is left behind, even by a crash.

Two limits stop a body while it streams, with :class:`SpillLimit`: more than ``max_parts`` parts
(each costs bookkeeping and a store attempt, whatever its size), and free space under the spill's
folder falling below ``min_free_bytes`` (the spool's watermark, ``dicom.storage.min_free_bytes``).
"""
from __future__ import annotations

import asyncio
import io
import mmap
import re
import shutil
import tempfile
from collections.abc import AsyncIterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

#: RFC 2046 5.1.1: a boundary is 1 to 70 ``bchars`` (digits, letters, ``'()+_,-./:=?`` and space),
#: not ending with a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


class MultipartError(ValueError):
    """A body or boundary that is not multipart as RFC 2046 5.1 defines it."""


class SpillLimit(ValueError):
    """A body stopped while it streamed: too many parts, or too little free space left to spill it."""


def check_boundary(value: str) -> str:
    """``value`` if it is a boundary by RFC 2046 5.1.1, else :class:`MultipartError` naming it."""
    if not _BOUNDARY.fullmatch(value):
        raise MultipartError("the boundary must be 1 to 70 of the characters RFC 2046 5.1.1 allows "
                             f"(digits, ASCII letters, '()+_,-./:=? and inner spaces), {value[:80]!r} is given")
    return value


@dataclass
class Part:
    """One part: its headers (names lower-cased) and where its content lies in the spill file."""

    headers: dict[str, str] = field(default_factory=dict)
    offset: int = 0
    length: int = 0


class ViewReader(io.RawIOBase):
    """A read-only, seekable file over a buffer (a mapped part), without copying it."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view, self._pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._view[self._pos:self._pos + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class SpilledParts:
    """The complete parts of one body, in an anonymous temporary file under ``folder``: at most
    ``max_parts`` of them (None: no limit), written while at least ``min_free_bytes`` stay free."""

    def __init__(self, folder: str | Path, max_parts: int | None = None, min_free_bytes: int = 0) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.folder, self.max_parts, self.min_free_bytes = Path(folder), max_parts, min_free_bytes
        self._file = tempfile.TemporaryFile(dir=folder)
        self.parts: list[Part] = []
        self.size = 0

    def __enter__(self) -> SpilledParts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def spilled_bytes(self) -> int:
        """Bytes in the spill file: the parts' contents, nothing more."""
        return self._file.seek(0, 2)

    @contextmanager
    def payload(self, part: Part) -> Iterator[memoryview]:
        """``part``'s content as a read-only view of the mapped file (:class:`ViewReader` reads it
        as a file); unmapped on exit.  Views taken from it must be released before then."""
        if part.length == 0:
            yield memoryview(b"")
            return
        start = part.offset - part.offset % mmap.ALLOCATIONGRANULARITY  # mappings start on a boundary
        mapped = mmap.mmap(self._file.fileno(), part.offset + part.length - start, offset=start,
                           access=mmap.ACCESS_READ)
        whole = memoryview(mapped)
        view = whole[part.offset - start:]
        try:
            yield view
        finally:
            try:
                view.release()
                whole.release()
                mapped.close()
            except BufferError:  # a view still exported: the mapping goes with its last view
                pass

    def check_free(self, incoming: int) -> None:
        """:class:`SpillLimit` when writing ``incoming`` more bytes would leave less than
        ``min_free_bytes`` free on the spill's disk."""
        if self.min_free_bytes and shutil.disk_usage(self.folder).free - incoming < self.min_free_bytes:
            raise SpillLimit(f"the body does not fit: spilling it would leave less than the "
                             f"{self.min_free_bytes} bytes that must stay free beside the spool "
                             f"(dicom.storage.min_free_bytes)")

    # -- writing, while the body streams -------------------------------------------------------
    def _begin(self) -> None:
        if self.max_parts is not None and len(self.parts) >= self.max_parts:
            raise SpillLimit(f"the body holds more than {self.max_parts} parts (http.stow_max_parts); "
                             "send the instances in several requests")
        self._part, self._field, self._value = Part(offset=self._file.seek(0, 2)), b"", b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._part.headers[name] = self._value.decode("latin-1").strip()
        self._field, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._file.write(data[start:end])
        self._part.length += end - start

    def _end(self) -> None:
        self._file.flush()
        self.parts.append(self._part)


async def spill(chunks: AsyncIterable[bytes], boundary: str, folder: str | Path, max_parts: int | None = None,
                min_free_bytes: int = 0) -> SpilledParts:
    """Parse the body ``chunks`` of a multipart message with ``boundary``; its parts go to a new
    :class:`SpilledParts` under ``folder``.  :class:`MultipartError` for a malformed body or one
    that ends before its closing delimiter, :class:`SpillLimit` past ``max_parts`` parts or the
    free-space watermark ``min_free_bytes``; whatever ``chunks`` raises (a size limit) passes."""
    spilled = SpilledParts(folder, max_parts, min_free_bytes)
    ended = False

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(check_boundary(boundary).encode("ascii"), {
        "on_part_begin": spilled._begin, "on_header_field": spilled._header_field,
        "on_header_value": spilled._header_value, "on_header_end": spilled._header_end,
        "on_part_data": spilled._data, "on_part_end": spilled._end, "on_end": on_end})
    try:
        async for chunk in chunks:
            spilled.size += len(chunk)
            spilled.check_free(len(chunk))
            await asyncio.to_thread(parser.write, chunk)  # file writes off the event loop
        parser.finalize()
    except FormParserError as exc:
        spilled.close()
        raise MultipartError(f"the body is not multipart with boundary {boundary!r}: {exc}") from None
    except BaseException:
        spilled.close()
        raise
    if not ended:
        spilled.close()
        raise MultipartError(f"the body ends before its closing delimiter --{boundary}--")
    return spilled
