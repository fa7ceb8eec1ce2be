"""Helpers for tests that talk to real peers: find them, free ports, wait, stop by pid; DCMTK
storescu/storescp, a recording FHIR server, a restartable Mosquitto."""
from __future__ import annotations

import getpass
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SBIN = ("/usr/sbin", "/usr/local/sbin")
#: Debian's DCMTK keeps Nagle's algorithm on unless told otherwise (~40 ms stall per C-STORE).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def find_peer(name: str) -> str | None:
    """Path of a peer program, also looking in sbin directories that a non-root PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def require_peer(name: str, package: str) -> str:
    path = find_peer(name)
    if path is None:
        pytest.skip(reason=f"{name} not installed (Debian package {package}; `make test` installs it as root)")
    return path


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port free now, taken below the kernel's ephemeral range: a port the kernel handed out
    (bind to 0) is also what it gives the next outgoing connection (Ray's, a peer's), which took
    it before the test's server could bind it."""
    low = _ephemeral_range()[0]
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


def wait_until(predicate, timeout_s: float = 30.0, interval_s: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; returns that value or fails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


#: Every object checked with :func:`dciodvfy_errors` in this test run: (path, kind, error lines).
DCIODVFY_CHECKED: list[tuple[str, str, list[str]]] = []


def dciodvfy_errors(path: str | Path) -> list[str]:
    """``Error`` lines that dicom3tools ``dciodvfy`` prints for ``path`` (skips without it).

    Each call is recorded in :data:`DCIODVFY_CHECKED`; conftest prints the summary at the end.
    """
    binary = require_peer("dciodvfy", "dicom3tools")
    check = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    lines = (check.stdout + check.stderr).splitlines()
    errors = [line for line in lines if "Error" in line]
    iod = next((line.strip() for line in lines if line.strip() and not line.startswith(("Warning", "Error"))), "?")
    DCIODVFY_CHECKED.append((str(path), iod, errors))
    return errors


def association_rejection(port: int, calling: str = "MODALITY", called: str = "MEDGATE") -> str:
    """The A-ASSOCIATE-RJ that DCMTK ``echoscu`` reports (its ``F:`` lines), e.g. ``Result: Rejected
    Permanent, Source: Service User\nF: Reason: Calling AE Title Not Recognized``; fails the test
    when the association was not rejected."""
    check = subprocess.run([require_peer("echoscu", "dcmtk"), "-aet", calling, "-aec", called, "127.0.0.1",
                            str(port)], capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and "Association Rejected" in check.stderr, check.stderr
    return check.stderr


def storescu(port: int, *files, calling: str = "MODALITY", called: str = "MEDGATE", extra=(),
             timeout_s: float = 120) -> subprocess.CompletedProcess:
    """DCMTK ``storescu``: ``files`` in one association to ``called`` on 127.0.0.1:``port``."""
    return subprocess.run([find_peer("storescu"), "-aet", calling, "-aec", called, *extra, "127.0.0.1",
                           str(port), *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True,
                          timeout=timeout_s)


def start_storescp(port: int, out: Path, ae_title: str = "PACS") -> subprocess.Popen:
    """DCMTK ``storescp`` as a PACS writing every received object to ``out``; with
    ``--unique-filenames`` an object received twice is kept twice."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([require_peer("storescp", "dcmtk"), "-aet", ae_title, "--unique-filenames",
                             "-od", str(out), str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc)
    return proc


class FhirRecorder:
    """A FHIR server on 127.0.0.1:``port`` that records each POSTed transaction Bundle and answers a
    transaction-response. :meth:`stop` then :meth:`start` is an outage; the records are kept."""

    def __init__(self, port: int) -> None:
        self.port, self.requests = port, []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.requests.append((self.path, body))
                reply = {"resourceType": "Bundle", "type": "transaction-response",
                         "entry": [{"response": {"status": "200 OK"}} for _ in body.get("entry", [])]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def resources(self, resource_type: str) -> list[dict]:
        """Every resource of ``resource_type`` in the recorded Bundles, in arrival order."""
        return [e["resource"] for _, body in list(self.requests) for e in body.get("entry", [])
                if e.get("resource", {}).get("resourceType") == resource_type]


@dataclass
class Broker:
    """A Mosquitto process that can be restarted on the same port with the same config."""

    config: Path
    port: int
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = require_peer("mosquitto", "mosquitto")
        self.proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # SIGTERM: mosquitto writes its persistence file on exit

    def restart(self) -> None:
        self.stop()
        self.start()


def broker(tmp_path: Path, *lines: str) -> Broker:
    """A started :class:`Broker` on a free port; ``lines`` are added to its config."""
    port = free_port()
    config = tmp_path / f"mosquitto-{port}.conf"
    # `user`: a broker started as root would switch to `mosquitto` and then fail to read tmp files.
    config.write_text("\n".join([f"listener {port} 127.0.0.1", f"user {getpass.getuser()}",
                                 "max_queued_messages 100000",
                                 "max_inflight_messages 1000", *lines]) + "\n")
    b = Broker(config, port)
    b.start()
    return b
