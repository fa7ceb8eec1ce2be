"""Helpers shared by the gateway tests: a running SCP on free ports, CT series files, storescu."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np

from dicom_gateway.scp import StorageScp
from dicom_gateway.store import open_gateway_store
from dicom_testdata import make_ct_series
from peers import free_port, storescu  # noqa: F401 - storescu is used from here

#: The C-STORE response status as DCMTK ``storescu -d`` prints it ("DIMSE Status : 0xc001: Error: ...").
_DIMSE_STATUS = re.compile(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})")


class Running:
    """A started :class:`StorageScp` with its store and the ``(study, model)`` hand-offs it made."""

    def __init__(self, root: Path, **options) -> None:
        self.completed: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.store = open_gateway_store(root / "db.sqlite3")
        options.setdefault("quiet_period_s", 0.5)
        options.setdefault("poll_interval_s", 0.05)
        self.scp = StorageScp("MEDGATE", "127.0.0.1", free_port(), self.store, root / "spool",
                              self._done, **options)
        self.scp.start()

    def _done(self, study: str, model: str) -> None:
        with self._lock:
            self.completed.append((study, model))

    def stop(self) -> None:
        self.scp.stop()
        self.store.close()


def write_ct_series(folder: Path, slices: int, size_px: int = 64, seed: int = 0, **kwargs) -> list[Path]:
    """A generated CT series as files (slice order shuffled on disk names)."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.random.default_rng(seed).integers(0, 3000, (slices, size_px, size_px)).astype(np.uint16)
    paths = []
    for index, ds in enumerate(make_ct_series(volume, **kwargs)):
        path = folder / f"ct{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths



def store_statuses(port: int, *files, extra=()) -> list[int]:
    """The C-STORE status DCMTK ``storescu`` was answered for each of ``files``, in one association.

    ``-R`` proposes each file's own SOP class (its default list lacks some, Video Photographic among
    them), ``-nh`` goes on after a refusal, ``-d`` prints each status: without it storescu (3.6.7)
    says nothing of a refusal and exits 0."""
    result = storescu(port, *files, extra=("-d", "-R", "-nh", *extra))
    return [int(code, 16) for code in _DIMSE_STATUS.findall(result.stdout + result.stderr)]
