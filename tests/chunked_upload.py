"""A raw HTTP/1.1 client that streams a chunked body (no Content-Length) and stops as soon as the
server answers: it tells how many body bytes the server let it send before refusing."""
from __future__ import annotations

import select
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

CHUNK = 64 * 1024


@dataclass
class Sent:
    status: int | None  # None: no status line came back
    body_bytes_sent: int
    response: bytes


def post_chunked(url: str, headers: dict[str, str], head: bytes, total_bytes: int,
                 filler: bytes = b"\0", timeout_s: float = 60.0) -> Sent:
    """POST ``head`` then filler bytes up to ``total_bytes`` in chunks of :data:`CHUNK`, checking
    before each chunk whether the server has answered; then read the answer."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
             "Transfer-Encoding: chunked", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sent = 0
    try:
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        block = (filler * (CHUNK // len(filler) + 1))[:CHUNK]
        pending = head
        while sent < total_bytes:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            data = pending or block[:min(CHUNK, total_bytes - sent)]
            pending = b""
            try:
                sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(data)
        else:
            sock.sendall(b"0\r\n\r\n")
        response = b""
        try:
            while b"\r\n\r\n" not in response or len(response) < 64 * 1024:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
                if b"\r\n\r\n" in response:
                    head_end = response.index(b"\r\n\r\n")
                    length = [ln for ln in response[:head_end].split(b"\r\n")
                              if ln.lower().startswith(b"content-length:")]
                    if length and len(response) >= head_end + 4 + int(length[0].split(b":")[1]):
                        break
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        sock.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None
    return Sent(status, sent, response)
