"""Request bodies counted while they stream, and stopped at a byte limit.

A Content-Length is only a claim, and a chunked upload (RFC 9112 7.1) has none: the bytes are
counted as they arrive, and the request is refused with 413 Content Too Large (RFC 9110 15.5.14)
as soon as the count passes the limit, without reading the rest.  A declared length over the limit
is refused before anything is read.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.types import Message

from serving.http.uploads import UploadError

#: RFC 9110 15.5.14.
CONTENT_TOO_LARGE = 413
#: RFC 9110 15.5.1.
BAD_REQUEST = 400


class BodyTooLarge(UploadError):
    """A body over its limit: the HTTP status is 413."""

    def __init__(self, max_bytes: int, given: str) -> None:
        super().__init__(CONTENT_TOO_LARGE, f"the body exceeds the {max_bytes}-byte limit ({given})")


def check_declared(request: Request, max_bytes: int) -> None:
    """Refuse a Content-Length that is not a number (400) or is over ``max_bytes`` (413)."""
    raw = request.headers.get("content-length")
    if raw is None:
        return
    if not raw.strip().isdigit():
        raise UploadError(BAD_REQUEST, f"Content-Length must be a number of bytes, {raw[:40]!r} is given")
    if int(raw) > max_bytes:
        raise BodyTooLarge(max_bytes, f"Content-Length {int(raw)} is given")


async def chunks(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; :class:`BodyTooLarge` once more than ``max_bytes`` came."""
    check_declared(request, max_bytes)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > max_bytes:
            raise BodyTooLarge(max_bytes, f"more than {max_bytes} bytes were sent")
        yield chunk


async def read(request: Request, max_bytes: int) -> bytes:
    """The whole body, at most ``max_bytes`` (else :class:`BodyTooLarge`, the rest unread)."""
    return b"".join([chunk async for chunk in chunks(request, max_bytes)])


def limited(request: Request, max_bytes: int) -> Request:
    """A view of ``request`` whose body, however it is read (``form()``, ``body()``, ``stream()``),
    stops with :class:`BodyTooLarge` as soon as more than ``max_bytes`` arrived."""
    check_declared(request, max_bytes)
    receive, seen = request.receive, 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise BodyTooLarge(max_bytes, f"more than {max_bytes} bytes were sent")
        return message

    return Request(request.scope, counted)
