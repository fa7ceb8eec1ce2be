"""Mosquitto variants for the IoMT tests: TLS with a throw-away CA, password file (the broker
itself: :class:`peers.Broker`)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers import Broker, broker, find_peer  # noqa: F401 - Broker and broker are used from here

USER, PASSWORD = "bridge", "s3cret-pw"


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> Pki:
    """A self-signed CA and a server (127.0.0.1) and client certificate signed by it."""
    if find_peer("openssl") is None:
        pytest.skip(reason="openssl not installed")
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=medgate-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *ext, cwd=folder)
    return Pki(folder / "ca.crt", folder / "server.crt", folder / "server.key",
               folder / "client.crt", folder / "client.key")


def password_file(folder: Path) -> Path:
    binary = find_peer("mosquitto_passwd")
    if binary is None:
        pytest.skip(reason="mosquitto_passwd not in this mosquitto package: password variant not testable")
    path = folder / "passwd"
    path.write_text("")
    subprocess.run([binary, "-b", str(path), USER, PASSWORD], check=True, capture_output=True, timeout=30)
    return path
