"""STOW-RS (PS3.18 10.5) into the same intake, store and completion as C-STORE.

The route runs here in a plain FastAPI app (in production: the Ray Serve ingress process); the
assembler reading the same SQLite store plays the server process.
"""
from __future__ import annotations

import http.client
import io
import json
import logging
import threading
from contextlib import contextmanager
import urllib.error
import urllib.request

import numpy as np
import pytest
from fastapi import FastAPI

from chunked_upload import post_chunked
from dicom_gateway import ledger
from dicom_gateway.completion import StudyAssembler
from dicom_gateway.store import open_gateway_store
from peers import free_port, wait_until
from serving.http import stow
from training.synthetic.dicom import make_dx_dataset

uvicorn = pytest.importorskip("uvicorn")
BOUNDARY = "medgate-test-boundary"


def _multipart(*payloads: bytes, media: str = "application/dicom") -> bytes:
    out = b""
    for payload in payloads:
        out += f"--{BOUNDARY}\r\nContent-Type: {media}\r\n\r\n".encode() + payload + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _dx_bytes(study_uid: str | None = None, side: int = 64) -> tuple[bytes, object]:
    ds = make_dx_dataset((np.arange(side * side) % 4096).astype(np.uint16).reshape(side, side), study_uid=study_uid)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


@contextmanager
def _serving(state_dir, **settings):
    app = FastAPI()
    app.include_router(stow.router)
    stow.configure(app, state_dir, {"ae_title": "MEDGATE", "group_by": "study", "min_free_bytes": 0,
                                    "routes": [{"models": ["tb"], "modality": ["DX", "CR"]}], **settings})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def client(tmp_path):
    with _serving(tmp_path) as url:
        yield url, tmp_path


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
    store = open_gateway_store(state_dir / "medgate.sqlite3")  # the server process's own connection
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


def _files(folder) -> set:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


@pytest.mark.parametrize("study_uid", ["../spool/1.2.999.777", "../../../../tmp/x", "1.2.03"])
def test_stow_refuses_uids_outside_the_grammar_and_writes_nothing(client, study_uid):
    c, state_dir = client
    data, _ = _dx_bytes(study_uid=study_uid)
    before = _files(state_dir.parent)
    response = _post(c, _multipart(data))
    assert response.status_code == 409, response.text
    assert _files(state_dir.parent) - before <= {state_dir / "medgate.sqlite3", state_dir / "medgate.sqlite3-wal",
                                                   state_dir / "medgate.sqlite3-shm"}


@pytest.mark.parametrize("boundary", ["grenz\u00e9", "b" * 71, "ends with a space "])
def test_a_boundary_outside_rfc_2046_is_a_bad_request(client, boundary):
    c, _ = client
    data, _ = _dx_bytes()
    body = _multipart(data).replace(BOUNDARY.encode(), boundary.encode("latin-1"))
    response = _post(c, body, content_type=f'multipart/related; type="application/dicom"; boundary="{boundary}"')
    assert response.status_code == 400, response.text
    assert "boundary" in response.json()["error"]


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(tmp_path):
    limit = 1024 * 1024
    with _serving(tmp_path, max_bytes=limit) as url:
        head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        sent = post_chunked(url + "/dicomweb/studies", {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
            head, total_bytes=256 * 1024 * 1024)
    print(f"413 after {sent.body_bytes_sent / 2**20:.1f} MiB of a 256 MiB chunked body (limit 1 MiB)")
    assert sent.status == 413, sent.response[:300]
    assert b"1048576-byte limit" in sent.response
    assert sent.body_bytes_sent < 32 * 1024 * 1024  # the limit plus what the sockets buffer, not the body
    assert not list((tmp_path / "spool").glob("*/*.dcm"))


def _rss_kib() -> dict[str, int]:
    fields = {}
    for line in open("/proc/self/status"):
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields


def test_a_256_mib_body_is_stored_in_bounded_memory(tmp_path):
    data, ds = _dx_bytes(side=4096)  # one 32 MiB instance, sent 8 times
    part = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    peak, stop = dict(_rss_kib()), threading.Event()
    baseline = dict(peak)

    def sample():
        while not stop.wait(0.005):
            for name, value in _rss_kib().items():
                peak[name] = max(peak[name], value)

    def body():
        for _ in range(8):
            yield part
            yield data
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    with _serving(tmp_path, max_bytes=512 * 1024 * 1024) as url:
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=120)
            connection.request("POST", "/dicomweb/studies", body=body(), encode_chunked=True, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})
            response = connection.getresponse()
            reply = json.loads(response.read())
        finally:
            stop.set()
            sampler.join()
    growth = {name: (peak[name] - baseline[name]) // 1024 for name in peak}
    print(f"8 x {len(data) / 2**20:.0f} MiB parts: peak growth {growth} MiB")
    assert response.status == 200, reply
    assert len(reply["00081199"]["Value"]) == 8
    assert (tmp_path / "spool" / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm").stat().st_size == len(data)
    assert growth["RssAnon"] < 128 and growth["VmRSS"] < 192  # was 2.2 GiB for a 256 MiB body


def test_a_body_of_more_parts_than_the_limit_is_413_and_stores_nothing(tmp_path):
    data, ds = _dx_bytes()
    with _serving(tmp_path, max_parts=3) as url:
        assert _post(url, _multipart(data, data, data)).status_code == 200
        response = _post(url, _multipart(*[data] * 4 + [b"x"] * 1000))
    assert response.status_code == 413 and "more than 3 parts" in response.json()["error"], response.text
    assert [p.name for p in (tmp_path / "spool").glob("*/*.dcm")] == [f"{ds.SOPInstanceUID}.dcm"]


def test_a_body_that_would_fill_the_spool_disk_is_413(tmp_path):
    import shutil

    data, _ = _dx_bytes()
    # more than the whole disk: never met, whatever other processes free meanwhile
    with _serving(tmp_path, min_free_bytes=shutil.disk_usage(tmp_path).total + 1) as url:
        response = _post(url, _multipart(data))
    assert response.status_code == 413 and "dicom.storage.min_free_bytes" in response.json()["error"], response.text


def test_ten_thousand_bad_parts_log_a_handful_of_warnings(client, caplog):
    c, _ = client
    caplog.set_level(logging.WARNING, logger="medgate.dicom")
    response = _post(c, _multipart(*[b"not dicom %d" % i for i in range(10_000)]))
    assert response.status_code == 409
    assert len(response.json()["00081198"]["Value"]) == 10_000
    warnings = [r for r in caplog.records if r.name == "medgate.dicom" and r.levelno == logging.WARNING]
    assert len(warnings) == stow.LOGGED_WARNINGS + 1, [r.getMessage() for r in warnings][:10]
    assert "9995 more warnings not logged" in warnings[-1].getMessage()
