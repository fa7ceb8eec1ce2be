"""Run ``medgate serve`` as a child process, for tests and benchmarks.

>>> with ServerProcess(config) as server:          # doctest: +SKIP
...     server.http_get("/readyz")
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from serving.cli.status import get_json

MEDGATE = [sys.executable, "-m", "serving.cli"]


class ServerProcess:
    """``medgate serve`` with ``config`` (a dict in the YAML file's shape), logging to ``root``.

    Entering starts it and waits until ``/readyz`` answers 200; leaving stops it with SIGINT (as
    Ctrl-C does) and waits for a clean exit.  The server runs in a process group of its own, so
    :meth:`kill` can crash the whole tree as a power cut would.  :meth:`start` again after
    :meth:`stop` or :meth:`kill` is a restart on the same state directory.
    """

    def __init__(self, config: dict[str, Any], root: Path, ready_timeout_s: float = 180.0) -> None:
        self.config, self.root = config, Path(root)
        self.ready_timeout_s = ready_timeout_s
        self.config_path = self.root / "medgate.yaml"
        self.log_path = self.root / "server.log"
        self.env = {**os.environ, "MEDGATE_CONFIG": str(self.config_path)}
        self.proc: subprocess.Popen | None = None

    @property
    def token(self) -> str | None:
        """The bearer token requests send: the config's first admin token (else its first), or the
        admin token ``medgate serve`` generated under state_dir."""
        tokens = sorted((self.config.get("auth") or {}).get("tokens") or [], key=lambda t: t["role"] != "admin")
        if tokens:
            return tokens[0]["token"]
        path = Path(self.config.get("state_dir", "./var")) / "auth" / "admin.token"
        return path.read_text().strip() if path.is_file() else None

    def http_get(self, path: str, token: str | None | bool = True) -> tuple[int, Any]:
        """(status, JSON body) of ``GET path`` on the server; status 0 when nothing answers.

        ``token``: True sends :attr:`token`, False or None sends none, a string sends that one.
        """
        url = f"http://127.0.0.1:{self.config['http']['port']}{path}"
        return get_json(url, self.token if token is True else (token or None))

    def ready(self) -> bool:
        """Whether the started server serves: ``/readyz`` answers 200 (a node without HTTP overrides this)."""
        return self.http_get("/readyz")[0] == 200

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(MEDGATE + ["serve"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, process_group=0)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"medgate serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"medgate serve not ready after {self.ready_timeout_s} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """SIGINT, then wait; kills after ``timeout_s``. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(2)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL the server, its process group and every process under it (Ray puts its workers
        in groups of their own): nothing is shut down cleanly. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        below = self.descendants()
        os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.wait(30)

    def descendants(self) -> dict[int, str]:
        """pid -> command line of every live process under the server (Linux ``/proc``); Ray
        workers show their process title, e.g. ``ray::ServeReplica:medgate:tb``."""
        children: dict[int, list[tuple[int, str]]] = {}
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                stat = (entry / "stat").read_text()
                state, ppid = stat.rsplit(")", 1)[1].split()[:2]
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError):
                continue
            if state != "Z":
                children.setdefault(int(ppid), []).append((int(entry.name), cmdline.strip()))
        found: dict[int, str] = {}
        todo = [self.proc.pid] if self.proc is not None else []
        while todo:
            for pid, cmdline in children.get(todo.pop(), []):
                found[pid] = cmdline
                todo.append(pid)
        return found

    def log_tail(self, n_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n_chars:] if self.log_path.exists() else ""

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
