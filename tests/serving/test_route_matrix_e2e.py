"""Every route, SOP class, photometric and transfer syntax the gateway accepts, end to end.

One ``medgate serve`` (Ray Serve, the real models) and one DCMTK ``storescp`` PACS for the whole
matrix; small images.  Each cell is one study sent by DCMTK ``storescu`` (``-R``: proposing the file's
own SOP class, which its default list lacks for Video Photographic; the file's own transfer syntax;
``-d``: each response status printed, without which storescu says nothing of a refusal) or by
STOW-RS, and must end in one of:

* ``result``: the sender was answered success (C-STORE 0x0000; STOW-RS 200, no Failed SOP Sequence),
  the worklist shows the study ``done`` and the SR (and, for 2D models, the overlay SC) of that study
  reach the PACS, ``dciodvfy`` clean (no Error line);
* ``refused``: the sender was answered the named refusal (C-STORE 0xC001 NOT_READABLE_BY_MODEL, with the
  reason in Error Comment (0000,0902); STOW-RS 409, Failure Reason 0xC001), the gateway's log names the
  instance and the reason, the worklist shows the study ``refused`` with the reason and the sender, and
  nothing was stored: the study has no instance and the PACS received nothing.

The matrix is printed (``-s``), cell by cell, with its outcome.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_gateway.dimse import error_comment
from dicom_gateway.status import StoreStatus
from dicom_testdata import make_ct_series, make_photo_dataset
from peers import (DCMTK_ENV, dciodvfy_errors, find_peer, free_port, require_peer, start_storescp, stop_process, storescu,
                   wait_until)
from server_process import ServerProcess
from serving.http.stow import STOW_CALLING_AE
from training.synthetic.dicom import make_dx_dataset

#: storescu option proposing a compressed transfer syntax (PS3.5 Annex A) besides the native ones.
PROPOSE = {"1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx"}
#: The C-STORE response status as ``storescu -d`` prints it ("DIMSE Status : 0xc001: Error: ...").
DIMSE_STATUS = re.compile(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})")
#: The Error Comment of a C-STORE response as ``storescu -d`` prints it ("(0000,0902) LO [why] # ...").
ERROR_COMMENT = re.compile(r"\(0000,0902\) LO \[([^]]*)\]")
BOUNDARY = "medgate-matrix"
#: The calling AE title the gateway records for each way in (storescu's ``-aet`` in peers.storescu;
#: serving.http.stow.STOW_CALLING_AE).
SENDER = {"c-store": "MODALITY", "stow-rs": STOW_CALLING_AE}


@dataclass
class Cell:
    route: str
    name: str
    datasets: list
    outcome: str  # "result" | "refused"
    reason: str = ""  # part of the refusal the gateway logs
    via: str = "c-store"  # "c-store" | "stow-rs"
    comments: list = field(default_factory=list)  # the Error Comments storescu printed

    @property
    def study(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    def describe(self) -> str:
        ds = self.datasets[0]
        syntax = ds.file_meta.TransferSyntaxUID
        return (f"{self.route:6} {self.via:7} {ds.SOPClassUID.name[:38]:38} {ds.PhotometricInterpretation:13} "
                f"{syntax.name[:34]:34}")


def _skin(rows: int = 64, columns: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    lesion = np.exp(-(((y - rows / 2) / (rows / 5)) ** 2 + ((x - columns / 2) / (columns / 5)) ** 2))
    rgb = np.stack([215 - 120 * lesion, 170 - 110 * lesion, 150 - 100 * lesion], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _jpeg12(ds, folder: Path):
    source, target = folder / f"{ds.SOPInstanceUID}.dcm", folder / f"{ds.SOPInstanceUID}-jpeg12.dcm"
    ds.save_as(source, enforce_file_format=True)
    subprocess.run([find_peer("dcmcjpeg"), "+ee", str(source), str(target)], env=DCMTK_ENV, check=True,
                   capture_output=True, timeout=60)
    return pydicom.dcmread(target)


def _cells(folder: Path) -> list[Cell]:
    rng = np.random.default_rng(19)
    chest = rng.integers(500, 3500, (96, 96)).astype(np.uint16)
    frames = np.stack([_skin()] * 3)
    colour = "derm, which cannot read it: a colour (RGB) image is required, Photometric Interpretation MONOCHROME2"
    single = "derm, which cannot read it: a 2D image model reads single-frame images, Number of Frames 3"
    cells = [
        Cell("tb", "DX", [make_dx_dataset(chest)], "result"),
        Cell("tb", "CR", [make_dx_dataset(chest, sop_class="CR")], "result"),
        Cell("tb", "DX 12-bit JPEG", [_jpeg12(make_dx_dataset(chest), folder)], "result"),
        Cell("nodule", "CT", make_ct_series(rng.integers(0, 1400, (6, 32, 32)).astype(np.uint16)), "result"),
    ]
    for via in ("c-store", "stow-rs"):
        cells += [
            Cell("derm", "VL photo RGB", [make_photo_dataset(_skin())], "result", via=via),
            Cell("derm", "VL photo JPEG", [make_photo_dataset(_skin(), photometric="YBR_FULL_422")], "result",
                 via=via),
            Cell("derm", "dermoscopy", [make_photo_dataset(_skin(), kind="dermoscopy")], "result", via=via),
            Cell("derm", "VL microscopic", [make_photo_dataset(_skin(), kind="microscopic")], "result", via=via),
            Cell("derm", "SC palette", [make_photo_dataset(_skin(), kind="sc", photometric="PALETTE COLOR")],
                 "result", via=via),
            Cell("derm", "VL photo mono", [make_photo_dataset(_skin(), photometric="MONOCHROME2")], "refused",
                 colour, via=via),
            Cell("derm", "SC mono", [make_photo_dataset(_skin(), kind="sc", photometric="MONOCHROME2")],
                 "refused", colour, via=via),
            Cell("derm", "video", [make_photo_dataset(frames, kind="video")], "refused", single, via=via),
            Cell("derm", "multi-frame SC", [make_photo_dataset(frames, kind="multiframe")], "refused", single,
                 via=via),
        ]
    return cells


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    for name, package in (("storescp", "dcmtk"), ("dcmcjpeg", "dcmtk"), ("dciodvfy", "dicom3tools")):
        require_peer(name, package)
    root = tmp_path_factory.mktemp("matrix")
    pacs_port, dicom_port, http_port = free_port(), free_port(), free_port()
    pacs = start_storescp(pacs_port, root / "pacs")
    config = {
        "state_dir": str(root / "var"),
        "dicom": {"ae_title": "MEDGATE", "port": dicom_port, "completion": {"quiet_period_s": 0.5}},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port,
                                  "objects": ["sr", "seg", "sc"]}},
        "http": {"port": http_port},
        "mqtt": {"url": None, "embedded_port": free_port(), "topic_prefix": "medgate"},
    }
    server = ServerProcess(config, root)
    try:
        server.start()
        yield {"root": root, "server": server, "dicom_port": dicom_port, "http_port": http_port}
    finally:
        server.stop()
        stop_process(pacs)
        print(server.log_tail())


def _stow(running, ds) -> tuple[int, dict]:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
            + f"\r\n--{BOUNDARY}--\r\n".encode())
    request = urllib.request.Request(
        f"http://127.0.0.1:{running['http_port']}/dicomweb/studies", data=body, method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                 "Accept": "application/dicom+json", "Authorization": f"Bearer {running['server'].token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _send(running, cell: Cell, folder: Path) -> list[int]:
    """Send ``cell``; the status the sender was told for each instance (STOW-RS: 0x0000 for each
    Referenced SOP Sequence item, the Failure Reason of each Failed SOP Sequence item)."""
    if cell.via == "stow-rs":
        code, reply = _stow(running, cell.datasets[0])
        stored = [StoreStatus.SUCCESS] * len(reply.get("00081199", {}).get("Value", []))
        failed = [item["00081197"]["Value"][0] for item in reply.get("00081198", {}).get("Value", [])]
        assert code == (200 if not failed else 409), (code, reply)  # PS3.18 10.5.3
        return stored + failed
    paths = []
    for ds in cell.datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    syntax = str(cell.datasets[0].file_meta.TransferSyntaxUID)
    extra = ("-d", "-R", "-nh") + ((PROPOSE[syntax],) if syntax in PROPOSE else ())
    result = storescu(running["dicom_port"], *paths, extra=extra)
    cell.comments = ERROR_COMMENT.findall(result.stdout + result.stderr)
    return [int(code, 16) for code in DIMSE_STATUS.findall(result.stdout + result.stderr)]


def _received(pacs: Path) -> dict[str, list[tuple[str, Path]]]:
    """Study UID -> (Modality, path) of every object the PACS has."""
    out: dict[str, list[tuple[str, Path]]] = {}
    for path in pacs.iterdir():
        if path.is_file() and not path.name.endswith(".tmp"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            out.setdefault(str(ds.StudyInstanceUID), []).append((str(ds.Modality), path))
    return out


def test_route_matrix_end_to_end(running, tmp_path):
    start = time.monotonic()
    cells = _cells(tmp_path)
    told = {cell.study: _send(running, cell, tmp_path) for cell in cells}
    server, pacs = running["server"], running["root"] / "pacs"
    results = [c for c in cells if c.outcome == "result"]

    last: dict = {}

    def settled():
        status, body = server.http_get("/v1/worklist")
        last.update({s["study_uid"]: s for s in body.get("studies", [])} if status == 200 else {})
        done = all(last.get(c.study, {}).get("status") in ("done", "failed") for c in results)
        return dict(last) if done else None

    try:
        studies = wait_until(settled, timeout_s=150, interval_s=0.5)
    except AssertionError:
        pending = [f"{c.describe()}: {last.get(c.study, {}).get('status')} {last.get(c.study, {}).get('detail')}"
                   for c in cells]
        raise AssertionError("studies not settled:\n" + "\n".join(pending)) from None
    expected_objects = {c.study: ({"SR"} if c.route == "nodule" else {"SR", "OT"}) for c in results}

    def delivered():
        received = _received(pacs)
        return received if all(want <= {m for m, _ in received.get(study, [])}
                               for study, want in expected_objects.items()) else None

    received = wait_until(delivered, timeout_s=60, interval_s=0.5)
    log = server.log_path.read_text(errors="replace")
    report, failures = [], []
    for cell in cells:
        study = studies.get(cell.study)
        objects = sorted(m for m, _ in received.get(cell.study, []))
        shown = "no row" if study is None else f"{study['status']}: {study['detail']}"
        statuses = ", ".join(f"0x{code:04X}" for code in told[cell.study]) or "nothing"
        line = f"{cell.describe()} -> {cell.via} {statuses}; worklist {shown}; PACS {objects}"
        report.append(line)
        if cell.outcome == "result":
            if told[cell.study] != [StoreStatus.SUCCESS] * len(cell.datasets) or study is None \
                    or study["status"] != "done":
                failures.append(line)
            for modality, path in received.get(cell.study, []):
                errors = dciodvfy_errors(path)
                if errors:
                    failures.append(f"{line}: {modality} {errors}")
        elif (told[cell.study] != [StoreStatus.NOT_READABLE_BY_MODEL] * len(cell.datasets) or study is None
              or study["status"] != "refused" or study["instances"] != 0
              or f"NOT_READABLE_BY_MODEL from {SENDER[cell.via]}: routed to {cell.reason}" not in study["detail"]
              or (cell.via == "c-store" and cell.comments != [error_comment(f"routed to {cell.reason}")]
                                            * len(cell.datasets))
              or objects or not any(str(ds.SOPInstanceUID) in entry and cell.reason in entry
                                    for ds in cell.datasets for entry in log.splitlines())):
            failures.append(f"{line}: expected the refusal {cell.reason!r} told (Error Comment {cell.comments}), "
                            "logged and on the worklist with its sender, nothing stored")
    print("\n".join(report))
    print(f"{len(cells)} cells in {time.monotonic() - start:.1f} s")
    assert not failures, "\n".join(failures)
