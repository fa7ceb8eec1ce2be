"""STOW-RS (PS3.18 10.5) into the same intake, store and completion as C-STORE.

The route runs here in a plain FastAPI app (in production: the Ray Serve ingress process); the
assembler reading the same SQLite store plays the server process.
"""
from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from fastapi import FastAPI

from dicom_gateway import ledger
from dicom_gateway.completion import StudyAssembler
from dicom_gateway.testdata import make_dx_dataset
from peers import free_port, wait_until
from serving import stow
from serving.store import Store

uvicorn = pytest.importorskip("uvicorn")
BOUNDARY = "medgate-test-boundary"


def _multipart(*payloads: bytes, media: str = "application/dicom") -> bytes:
    out = b""
    for payload in payloads:
        out += f"--{BOUNDARY}\r\nContent-Type: {media}\r\n\r\n".encode() + payload + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _dx_bytes() -> tuple[bytes, object]:
    ds = make_dx_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


@pytest.fixture
def client(tmp_path):
    app = FastAPI()
    app.include_router(stow.router)
    stow.configure(app, tmp_path, {"ae_title": "MEDGATE", "group_by": "study", "min_free_bytes": 0,
                                   "routes": [{"models": ["tb"], "modality": ["DX", "CR"]}]})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=20)
    try:
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        server.should_exit = True
        thread.join(10)


class _Reply:
    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code, self.text = status_code, body.decode(errors="replace")

    def json(self):
        return json.loads(self.text)


def _post(base: str, body: bytes, content_type: str | None = None) -> _Reply:
    content_type = content_type or f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    request = urllib.request.Request(base + "/dicomweb/studies", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return _Reply(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return _Reply(exc.code, exc.read())


def test_stow_stores_durably_and_the_server_completes_once(client):
    c, state_dir = client
    data, ds = _dx_bytes()
    response = _post(c, _multipart(data))
    assert response.status_code == 200, response.text
    assert response.json()["00081199"]["Value"][0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    store = Store(state_dir / "medgate.sqlite3")  # the server process's own connection
    handed: list[tuple[str, str]] = []
    assembler = StudyAssembler(store, lambda s, m: handed.append((s, m)), poll_interval_s=0.05)
    assembler.start()
    try:
        wait_until(lambda: handed, timeout_s=10)
        assert handed == [(ds.StudyInstanceUID, "tb")]  # single image: complete at the request's end
        assert _post(c, _multipart(data)).status_code == 200  # a resend is idempotent ...
        assembler.check()
        assert handed == [(ds.StudyInstanceUID, "tb")]  # ... and is never dispatched again
        assert (state_dir / "spool" / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm").read_bytes() == data
        assert [d["model"] for d in ledger.dispatches(store, ds.StudyInstanceUID)] == ["tb"]
    finally:
        assembler.stop()
        store.close()


def test_stow_partial_and_total_failure(client):
    c, _ = client
    data, ds = _dx_bytes()
    partial = _post(c, _multipart(data, b"not dicom at all"))
    assert partial.status_code == 202
    failed = partial.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [stow.CANNOT_UNDERSTAND]
    assert _post(c, _multipart(b"junk")).status_code == 409
    assert _post(c, b"x", content_type="application/json").status_code == 415
    assert _post(c, b"x", content_type='multipart/related; type="application/dicom+xml"; boundary=b').status_code == 415
