"""A multipart body (RFC 2046 5.1; STOW-RS sends ``multipart/related``, PS3.18 8.6.1.2) parsed as
it streams, its parts spilled to one anonymous temporary file: memory does not grow with the body.

Each part starts at a page boundary of the file, so it is mapped on its own (:meth:`SpilledParts.payload`)
and read as a buffer or a file without being copied into memory.  The file has no name (it is
deleted at creation), so nothing is left behind, even by a crash.
"""
from __future__ import annotations

import asyncio
import mmap
import re
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


class SpilledParts:
    """The complete parts of one body, in an anonymous temporary file under ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
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

    @contextmanager
    def payload(self, part: Part) -> Iterator[mmap.mmap | bytes]:
        """``part``'s content, mapped read-only (a buffer and a file: ``read``, ``seek``); unmapped
        on exit.  Views taken from it must be released before then."""
        if part.length == 0:
            yield b""
            return
        mapped = mmap.mmap(self._file.fileno(), part.length, offset=part.offset, access=mmap.ACCESS_READ)
        try:
            yield mapped
        finally:
            try:
                mapped.close()
            except BufferError:  # a view still exported: the mapping goes with its last view
                pass

    # -- writing, while the body streams -------------------------------------------------------
    def _begin(self) -> None:
        end = self._file.seek(0, 2)
        start = -(-end // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY
        self._file.seek(start)
        self._part, self._field, self._value = Part(offset=start), b"", b""

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


async def spill(chunks: AsyncIterable[bytes], boundary: str, folder: str | Path) -> SpilledParts:
    """Parse the body ``chunks`` of a multipart message with ``boundary``; its parts go to a new
    :class:`SpilledParts` under ``folder``.  :class:`MultipartError` for a malformed body or one
    that ends before its closing delimiter; whatever ``chunks`` raises (a size limit) passes."""
    spilled = SpilledParts(folder)
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
