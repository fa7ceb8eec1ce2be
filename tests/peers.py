"""Helpers for tests that talk to real peers: find them, free ports, wait, stop by pid."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
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


def free_port() -> int:
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
