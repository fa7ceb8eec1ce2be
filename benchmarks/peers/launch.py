"""Starting and stopping the peer servers of :mod:`benchmarks.peers` for a benchmark run.

Each peer is a subprocess of its own virtual environment's Python, with ``PYTHONPATH`` = the
repository (for :mod:`benchmarks.peers.tb_model`), bound to 127.0.0.1 on a port the caller chose, in
its own process group (LitServe and BentoML start worker processes), and stopped by that group.

>>> peer = PEERS["litserve"]
>>> with serving(peer, port=free_port(), log_path=Path("litserve.log")) as url:   # doctest: +SKIP
...     requests.post(url + ROUTE, files={"file": ("x.png", png)}).json()
{'probability': 0.31...}
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from benchmarks.peers import BENTOML_BATCHING, LITSERVE_BATCHING, VERSION_ENV

ROOT = Path(__file__).resolve().parents[2]
#: Where ``setup.sh`` makes the peers' virtual environments (git-ignored).
VENVS = ROOT / ".bench-venvs"
SETUP_COMMAND = "bash benchmarks/peers/setup.sh"
#: How long a peer may take to load and answer its readiness check (imports torch, onnxruntime).
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Peer:
    """A model server of the comparison: how to start it, where it says it is ready, what it batches."""

    name: str
    #: The command after the venv's ``bin/`` folder, ``{port}`` filled in.
    command: tuple[str, ...]
    #: The path that answers 200 once the model is loaded.
    ready_path: str
    batching: dict[str, Any]
    #: The distributions whose versions a run records.
    packages: tuple[str, ...] = field(default=("numpy", "pillow", "onnxruntime", "torch"))

    @property
    def venv(self) -> Path:
        return VENVS / self.name

    def missing(self) -> str | None:
        """Why the peer cannot run here (its virtual environment is not made), or None."""
        if (self.venv / "bin" / "python").exists():
            return None
        return f"{self.name}: no virtual environment at {self.venv}; make it with `{SETUP_COMMAND} {self.name}`"

    def argv(self, port: int) -> list[str]:
        first, *rest = self.command
        return [str(self.venv / "bin" / first), *(a.format(port=port) for a in rest)]

    def versions(self) -> dict[str, str]:
        """The peer's and the shared packages' versions in its virtual environment."""
        script = ("import importlib.metadata as m, json, sys; "
                  "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
        out = subprocess.run([str(self.venv / "bin" / "python"), "-c", script, self.name, *self.packages],
                             check=True, capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout)


PEERS: dict[str, Peer] = {
    "litserve": Peer("litserve", ("python", "benchmarks/peers/litserve_tb.py", "--port", "{port}"),
                     "/health", LITSERVE_BATCHING),
    "bentoml": Peer("bentoml", ("bentoml", "serve", "benchmarks.peers.bentoml_tb:TbService",
                                "--host", "127.0.0.1", "--port", "{port}"),
                    "/readyz", BENTOML_BATCHING),
}


def peer_names(text: str) -> list[str]:
    """``"litserve,bentoml"`` -> the names, each checked against :data:`PEERS`; ``""`` -> none."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise ValueError(f"`--peers` takes names from {sorted(PEERS)}, {unknown} is given.")
    return names


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``url`` until it answers 200; :class:`RuntimeError` naming the log when the server exits
    or does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before it was ready; see {log_path}")
        if _ready(url):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s; see {log_path}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group ``proc`` leads (the server and the workers it started), SIGKILL what
    is left of it after ``timeout_s``; returns once no process of the group is left (the workers may
    outlive the leader, holding the port), or ``timeout_s`` after the SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc.poll()  # reaps the leader
            if not _group_alive(proc.pid):
                return
            time.sleep(0.1)
    proc.poll()


@contextmanager
def serving(peer: Peer, port: int, log_path: Path, version: str | None = None) -> Iterator[str]:
    """Run ``peer`` on 127.0.0.1:``port`` serving tb ``version`` (else the latest), output to
    ``log_path``; yields its base URL once it is ready, and stops it on exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "BENTOML_DO_NOT_TRACK": "True", **({VERSION_ENV: version} if version else {})}
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(peer.argv(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_ready(base + peer.ready_path, proc, log_path)
        yield base
    finally:
        stop_group(proc)
