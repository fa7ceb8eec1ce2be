"""The peers of the imaging benchmarks: DCMTK ``storescp`` as the PACS that receives the results,
an optional recording FHIR server, and ``medgate serve`` configured to deliver to them.

>>> with imaging_server(root, fhir=True) as rig:          # doctest: +SKIP
...     known = rig.pacs.names()
...     send_files(rig.dicom_port, files)
...     rig.pacs.wait_for(("SR",), known)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "tests")) if p not in sys.path]

from benchmarks.report import free_port  # noqa: E402
from peers import DCMTK_ENV, FhirRecorder, find_peer, stop_process, wait_for_port  # noqa: E402
from server_process import ServerProcess  # noqa: E402

#: Bearer token of the benchmark server's admin (loopback only, thrown away with the run).
TOKEN = "benchmark-token-not-a-secret"


def missing_peers(*names: str) -> list[str]:
    """The programs among ``names`` that are not installed."""
    return [name for name in names if find_peer(name) is None]


def result_kind(filename: str) -> str:
    """``SR``, ``SEG`` or ``SC`` for a file written by storescp, whose name is DCMTK's abbreviation
    of the SOP Class and the SOP Instance UID (``SRc.1.2...``, ``SR3.1.2...``, ``SG.1.2...``)."""
    prefix = filename.split(".", 1)[0]
    if prefix.startswith("SR"):
        return "SR"
    return {"SG": "SEG", "SEG": "SEG"}.get(prefix, prefix)


class Pacs:
    """DCMTK ``storescp`` writing every object it receives into ``folder``."""

    def __init__(self, folder: Path, ae_title: str = "PACS") -> None:
        self.folder, self.ae_title, self.port = Path(folder), ae_title, free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([find_peer("storescp"), "-aet", ae_title, "-od", str(self.folder),
                                      str(self.port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def names(self) -> set[str]:
        return {entry.name for entry in os.scandir(self.folder)}

    def wait_for(self, kinds: tuple[str, ...], known: set[str], timeout_s: float = 60.0,
                 poll_s: float = 0.002, check: Callable[[], None] | None = None) -> dict[str, float]:
        """``time.perf_counter()`` at which a file not in ``known`` first appeared, per result kind
        (:func:`result_kind`). ``check`` is called about once a second and may raise to stop
        waiting (a failed study).

        Raises
        ------
        TimeoutError
            When some kind has no new file within ``timeout_s``; the message names them.
        """
        arrived: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s
        next_check = time.monotonic() + 1.0
        while len(arrived) < len(kinds):
            if time.monotonic() > deadline:
                missing = [k for k in kinds if k not in arrived]
                raise TimeoutError(f"no new {missing} object arrived in {self.folder} within {timeout_s} s")
            if check is not None and time.monotonic() > next_check:
                check()
                next_check = time.monotonic() + 1.0
            for entry in os.scandir(self.folder):
                if entry.name in known:
                    continue
                kind = result_kind(entry.name)
                if kind in kinds and kind not in arrived:
                    arrived[kind] = time.perf_counter()
            time.sleep(poll_s)
        return arrived

    def stop(self) -> None:
        stop_process(self.proc)


def send_files(port: int, files: list[Path], timeout_s: float = 600.0) -> float:
    """DCMTK ``storescu``: ``files`` in one association to MEDGATE on 127.0.0.1:``port``, as a
    modality sends a study. Returns the seconds it took."""
    start = time.perf_counter()
    result = subprocess.run([find_peer("storescu"), "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1",
                             str(port), *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True,
                            timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"storescu exited with {result.returncode}: {result.stderr[-2000:]}")
    return time.perf_counter() - start


@dataclass
class Rig:
    """A running server with its PACS and, when asked for, its FHIR server."""

    server: ServerProcess
    pacs: Pacs
    fhir: FhirRecorder | None

    @property
    def dicom_port(self) -> int:
        return self.server.config["dicom"]["port"]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.config['http']['port']}"

    def study(self, study_uid: str) -> dict[str, Any] | None:
        """The worklist entry of a study (``status``: receiving, complete, done, failed...)."""
        status, body = self.server.http_get("/v1/worklist")
        return next((s for s in body.get("studies", []) if s["study_uid"] == study_uid), None) if status == 200 else None

    def raise_if_failed(self, study_uid: str, expected: tuple[str, ...] = ("sr",)) -> None:
        """RuntimeError with the server's reason when the study's processing failed, or when it is
        done without writing the ``expected`` result kinds (a volume with no finding gets none)."""
        entry = self.study(study_uid)
        if entry is None:
            return
        if entry["status"] == "failed":
            raise RuntimeError(f"the server failed the study: {entry['detail']}")
        if entry["status"] == "done":
            written = {kind for r in entry.get("results", []) for kind in ("sr", "seg", "overlays") if r.get(kind)}
            if not set(expected) <= written:
                raise RuntimeError(f"the study is done without {sorted(set(expected) - written)} "
                                   f"(results: {entry['detail'] or 'none'})")


@contextmanager
def imaging_server(root: Path, *, fhir: bool = False, config: dict[str, Any] | None = None,
                   pacs_objects: list[str] | None = None) -> Iterator[Rig]:
    """``medgate serve`` under ``root`` with a storescp PACS (and a recording FHIR server when
    ``fhir``); ``config`` sections are merged over the defaults; ``pacs_objects`` (e.g. ``["sr"]``):
    what the PACS is sent, every result object when None. Everything stops on exit."""
    root = Path(root)
    pacs = Pacs(root / "pacs")
    recorder = FhirRecorder(free_port()) if fhir else None
    settings: dict[str, Any] = {
        "state_dir": str(root / "var"), "dicom": {"port": free_port()},
        "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port,
                                  **({"objects": pacs_objects} if pacs_objects is not None else {})}},
        "http": {"port": free_port()}, "mqtt": {"embedded_port": free_port()}, "log_level": "WARNING",
        "auth": {"tokens": [{"token": TOKEN, "role": "admin", "name": "benchmark"}]}}
    if recorder is not None:
        recorder.start()
        settings["fhir"] = {"base_url": f"http://127.0.0.1:{recorder.port}/fhir"}
    for key, value in (config or {}).items():
        settings[key] = {**settings[key], **value} if isinstance(settings.get(key), dict) else value
    # The server runs in a process group of its own: on SIGTERM (e.g. `timeout`) stop it cleanly too.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        with ServerProcess(settings, root) as server:
            yield Rig(server, pacs, recorder)
    finally:
        pacs.stop()
        if recorder is not None:
            recorder.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
