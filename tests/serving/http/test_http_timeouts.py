"""Slow header senders: uvicorn (Ray Serve's proxy) has no header-read timeout; haproxy in front
with ``timeout http-request`` (docs/security.md, "Slow clients and timeouts") cuts them off."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from peers import find_peer, free_port, stop_process, wait_for_port
from serving.config import load_config
from serving.http.proxy import http_options
from web_app import WebApp

HEADER_TIMEOUT_S = 1  # haproxy `timeout http-request` below
BYTE_EVERY_S = 0.2


def slow_headers(port: int, for_s: float) -> float | None:
    """Send a request's headers a byte every BYTE_EVERY_S for ``for_s``; when the server closed, or None."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: medgate\r\n")
        conn.settimeout(BYTE_EVERY_S)
        while time.monotonic() - start < for_s:
            try:
                conn.sendall(b"x")
                conn.recv(4096)  # a reply (408) or the close (b"") both end it
                return time.monotonic() - start
            except socket.timeout:
                continue
            except OSError:  # reset by the server
                return time.monotonic() - start
    return None


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    with WebApp(tmp_path_factory.mktemp("timeouts")) as app:
        yield app


def test_uvicorn_alone_keeps_a_slow_header_sender(web):
    """The gap this file is about: nothing in uvicorn bounds the time to send the headers."""
    assert slow_headers(web.port, for_s=3 * HEADER_TIMEOUT_S + 1) is None


def test_haproxy_in_front_cuts_a_slow_header_sender(web, tmp_path):
    haproxy = find_peer("haproxy")
    if haproxy is None:
        pytest.skip(reason="haproxy not installed (Debian package haproxy)")
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request {HEADER_TIMEOUT_S}s
    timeout http-keep-alive 5s
    option forwardfor
frontend medgate
    bind 127.0.0.1:{port}
    default_backend medgate
backend medgate
    server ingress 127.0.0.1:{web.port}
""")
    proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc=proc)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # a normal request passes
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: medgate\r\nConnection: close\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 404")  # no /healthz on the bare web routes
        cut_after_s = slow_headers(port, for_s=3 * HEADER_TIMEOUT_S + 1)
        print(f"haproxy closed a slow header sender after {cut_after_s:.2f} s (timeout http-request "
              f"{HEADER_TIMEOUT_S}s)")
        assert cut_after_s is not None and cut_after_s <= HEADER_TIMEOUT_S + 1.5
    finally:
        stop_process(proc)


def test_http_options_pass_the_idle_and_request_limits():
    settings = load_config(None, http={"port": 8123, "keep_alive_timeout_s": 7, "request_timeout_s": 30})
    assert http_options(settings.http) == {"host": "127.0.0.1", "port": 8123, "keep_alive_timeout_s": 7,
                                           "request_timeout_s": 30.0}
    assert "request_timeout_s" not in http_options(load_config(None).http)
