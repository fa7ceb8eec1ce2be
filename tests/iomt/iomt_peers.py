"""Mosquitto variants for the IoMT tests: TLS with a throw-away CA, password file, persistence."""
from __future__ import annotations

import getpass
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from peers import find_peer, free_port, require_peer, stop_process, wait_for_port

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


@dataclass
class Broker:
    """A Mosquitto process that can be restarted on the same port with the same config."""

    config: Path
    port: int
    proc: subprocess.Popen | None = None
    log: list[bytes] = field(default_factory=list)

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
    port = free_port()
    config = tmp_path / f"mosquitto-{port}.conf"
    # `user`: a broker started as root would switch to `mosquitto` and then fail to read tmp files.
    config.write_text("\n".join([f"listener {port} 127.0.0.1", f"user {getpass.getuser()}",
                                 "max_queued_messages 100000",
                                 "max_inflight_messages 1000", *lines]) + "\n")
    b = Broker(config, port)
    b.start()
    return b
