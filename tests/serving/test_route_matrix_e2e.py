"""Every route, SOP class, photometric and transfer syntax the gateway accepts, end to end.

One ``medgate serve`` (Ray Serve, the real models) and one DCMTK ``storescp`` PACS for the whole
matrix; small images.  Each route's representative instance (tb: DX; nodule: a 6-slice CT series;
derm: a VL Photographic RGB photo) is sent once in every transfer syntax
:func:`dicom_testdata.transcode` writes (every one the gateway decodes but High-Throughput JPEG 2000,
which no installed encoder writes); the derm route also in every SOP class and photometric a camera or
dermatoscope sends; SOP classes the gateway stores but routes to no model, too.  Each cell is one study
sent by DCMTK ``storescu`` (``-R``: proposing the file's own SOP class, which its default list lacks
for Video Photographic; :data:`PROPOSE`: the file's own transfer syntax, which the gateway must have
received, as its spool file shows; ``-d``: each response status printed, without which storescu says
nothing of a refusal) or by STOW-RS (JPEG Lossless Process 14, which storescu cannot propose without a
configuration file, and a syntax the gateway negotiates but cannot decode), and must end in one of:

* ``result``: the sender was answered success (C-STORE 0x0000; STOW-RS 200, no Failed SOP Sequence),
  the worklist shows the study ``done`` and the SR (and, for 2D models, the overlay SC) of that study
  reach the PACS, ``dciodvfy`` clean (no Error line);
* ``unrouted``: success told, the study ``unrouted`` on the worklist with all its instances, nothing
  sent to the PACS;
* ``refused``: the sender was answered the named refusal (C-STORE 0xC001 NOT_READABLE_BY_MODEL or
  0xC000 CANNOT_UNDERSTAND, with the reason in Error Comment (0000,0902); STOW-RS 409 with that Failure
  Reason), the gateway's log names the instance and the reason, the worklist shows the study
  ``refused`` with the reason and the sender, and nothing was stored: the study has no instance and the
  PACS received nothing.

The matrix is printed (``-s``), cell by cell, with its outcome.
"""
from __future__ import annotations

import json
import re
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
from dicom_testdata import TRANSCODED_SYNTAXES, make_ct_series, make_photo_dataset, transcode
from peers import (dciodvfy_errors, free_port, require_peer, start_storescp, stop_process, storescu,
                   wait_until)
from server_process import ServerProcess
from serving.http.stow import STOW_CALLING_AE
from training.synthetic.dicom import make_dx_dataset

#: storescu option proposing a file's transfer syntax (PS3.5 Annex A): without one storescu proposes
#: the native syntaxes, Explicit VR Little Endian first, and converts native files to it.
PROPOSE = {"1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.2": "-xb",
           "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
           "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
           "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr"}
#: JPEG XL (PS3.5 A.4.12): negotiated (pynetdicom's full list), decoded by no installed plugin.
JPEG_XL = "1.2.840.10008.1.2.4.112"
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
    outcome: str  # "result" | "unrouted" | "refused"
    reason: str = ""  # the start of the refusal's reason the gateway logs
    status: int = StoreStatus.NOT_READABLE_BY_MODEL  # of a refusal
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


def _retyped(datasets: list, sop_class: str, modality: str, **attributes) -> list:
    """``datasets`` as one new study of another SOP class and Modality (the same pixels)."""
    study = pydicom.uid.generate_uid()
    for ds in datasets:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.StudyInstanceUID, ds.Modality = study, modality
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return datasets


def _jpeg_xl(ds):
    """``ds`` with its Pixel Data encapsulated as JPEG XL (a codestream signature, PS3.5 A.4.12):
    a syntax the gateway negotiates and no installed decoder reads."""
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x0a" + bytes(62)])
    ds.file_meta.TransferSyntaxUID = JPEG_XL
    return ds


def _cells(folder: Path) -> list[Cell]:
    rng = np.random.default_rng(19)
    chest = rng.integers(500, 3500, (96, 96)).astype(np.uint16)
    frames = np.stack([_skin()] * 3)

    def volume():
        return rng.integers(0, 1400, (6, 32, 32)).astype(np.uint16)

    colour = ("routed to derm, which cannot read it: a colour (RGB) image is required, Photometric "
              "Interpretation MONOCHROME2")
    single = "routed to derm, which cannot read it: a 2D image model reads single-frame images, Number of Frames 3"
    representative = {"tb": lambda: [make_dx_dataset(chest)], "nodule": lambda: make_ct_series(volume()),
                      "derm": lambda: [make_photo_dataset(_skin())]}
    cells = [
        Cell("tb", "DX", [make_dx_dataset(chest)], "result"),
        Cell("tb", "DX", [make_dx_dataset(chest)], "result", via="stow-rs"),
        Cell("tb", "CR", [make_dx_dataset(chest, sop_class="CR")], "result"),
        Cell("nodule", "CT", make_ct_series(volume()), "result"),
    ]
    for syntax in TRANSCODED_SYNTAXES:
        via = "c-store" if syntax in PROPOSE else "stow-rs"
        cells += [Cell(route, syntax, [transcode(ds, syntax, folder) for ds in make()], "result", via=via)
                  for route, make in representative.items()]
    cells += [
        Cell("tb", "DX JPEG XL", [_jpeg_xl(make_dx_dataset(chest))], "refused", "pixel data cannot be decoded",
             StoreStatus.CANNOT_UNDERSTAND, via="stow-rs"),
        Cell("-", "MR", _retyped(make_ct_series(volume()), pydicom.uid.MRImageStorage, "MR",
                                 ScanningSequence="GR", SequenceVariant="NONE", ScanOptions="",
                                 MRAcquisitionType="2D", EchoTime=5, RepetitionTime=20, EchoTrainLength=1,
                                 MagneticFieldStrength=1.5, ImagedNucleus="1H", ImageType=["ORIGINAL", "PRIMARY", "M"]),
             "unrouted"),
        Cell("-", "CT abdomen", _retyped(make_ct_series(volume()), pydicom.uid.CTImageStorage, "CT",
                                         BodyPartExamined="ABDOMEN"), "unrouted"),
        Cell("-", "DX abdomen", [make_dx_dataset(chest, body_part="ABDOMEN")], "unrouted"),
        Cell("-", "DX abdomen", [make_dx_dataset(chest, body_part="ABDOMEN")], "unrouted", via="stow-rs"),
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


def _part10(ds, folder: Path) -> Path:
    """The Part 10 file of ``ds``: the one it was read from (pydicom does not write every syntax it
    reads, Big Endian among them), else written to ``folder``."""
    if isinstance(getattr(ds, "filename", None), str) and Path(ds.filename).is_file():
        return Path(ds.filename)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _stow(running, paths: list[Path]) -> tuple[int, dict]:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
                    + b"\r\n" for path in paths) + f"--{BOUNDARY}--\r\n".encode()
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
    paths = [_part10(ds, folder) for ds in cell.datasets]
    if cell.via == "stow-rs":
        code, reply = _stow(running, paths)
        stored = [StoreStatus.SUCCESS] * len(reply.get("00081199", {}).get("Value", []))
        failed = [item["00081197"]["Value"][0] for item in reply.get("00081198", {}).get("Value", [])]
        assert code == (200 if not failed else 409), (code, reply)  # PS3.18 10.5.3
        return stored + failed
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
    server, pacs, spool = running["server"], running["root"] / "pacs", running["root"] / "var" / "spool"
    results = [c for c in cells if c.outcome == "result"]
    final = {"result": ("done", "failed"), "unrouted": ("unrouted",), "refused": ("refused",)}

    last: dict = {}

    def settled():
        status, body = server.http_get("/v1/worklist")
        last.update({s["study_uid"]: s for s in body.get("studies", [])} if status == 200 else {})
        done = all(last.get(c.study, {}).get("status") in final[c.outcome] for c in cells)
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
            received_in = {str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                           for path in (spool / cell.study).glob("*.dcm")}
            if received_in != {str(ds.file_meta.TransferSyntaxUID) for ds in cell.datasets}:
                failures.append(f"{line}: the gateway received it in {received_in}")
            for modality, path in received.get(cell.study, []):
                errors = dciodvfy_errors(path)
                if errors:
                    failures.append(f"{line}: {modality} {errors}")
        elif cell.outcome == "unrouted":
            if (told[cell.study] != [StoreStatus.SUCCESS] * len(cell.datasets) or study is None
                    or study["status"] != "unrouted" or study["instances"] != len(cell.datasets) or objects):
                failures.append(f"{line}: expected success told, the study unrouted with all its instances, "
                                "nothing sent")
        elif (told[cell.study] != [cell.status] * len(cell.datasets) or study is None
              or study["status"] != "refused" or study["instances"] != 0
              or f"{StoreStatus(cell.status).name} from {SENDER[cell.via]}: {cell.reason}" not in study["detail"]
              or (cell.via == "c-store" and cell.comments != [error_comment(cell.reason)] * len(cell.datasets))
              or objects or not any(str(ds.SOPInstanceUID) in entry and cell.reason in entry
                                    for ds in cell.datasets for entry in log.splitlines())):
            failures.append(f"{line}: expected the refusal {cell.reason!r} told (Error Comment {cell.comments}), "
                            "logged and on the worklist with its sender, nothing stored")
    print("\n".join(report))
    print(f"{len(cells)} cells in {time.monotonic() - start:.1f} s")
    assert not failures, "\n".join(failures)
