"""DCMTK ``dcmdjpeg`` as the fallback decoder for the JPEG transfer syntaxes pydicom's plugins refuse.

pydicom decodes Pixel Data with its plugins (Pillow, GDCM, pylibjpeg: see docs/dicom-gateway.md
for which syntax each covers); none of them installed here decodes JPEG Extended (Process 2 and 4)
with 12-bit samples (PS3.5 A.4.1, Transfer Syntax 1.2.840.10008.1.2.4.51), which CR/DX modalities
send.  DCMTK's ``dcmdjpeg`` (BSD licence) decodes every JPEG process of PS3.5 A.4.1; when it is on
``PATH`` (or in /usr/bin), :func:`decode_jpeg` runs it on the instance and returns the decoded,
natively encoded data set.

The instance is written into a private temporary directory (mode 0700, removed afterwards) and
``dcmdjpeg`` runs without a shell, with a timeout; its messages are returned in the error.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from pydicom import Dataset, dcmread, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

#: PS3.5 A.4.1 JPEG Image Compression transfer syntaxes (PS3.6 Annex A), the ones ``dcmdjpeg`` decodes.
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"  # Process 1
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"  # Process 2 and 4
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"  # Process 14
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"  # Process 14, Selection Value 1
DCMDJPEG_SYNTAXES = frozenset({JPEG_BASELINE_8BIT, JPEG_EXTENDED_12BIT, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1})
#: Wall-clock limit of one ``dcmdjpeg`` run; a 3000x3000 12-bit radiograph takes about 0.3 s.
DCMDJPEG_TIMEOUT_S = 30.0


class DecoderError(RuntimeError):
    """``dcmdjpeg`` is missing, does not take the syntax, failed or timed out; the message says which."""


@lru_cache(maxsize=1)
def dcmdjpeg_path() -> str | None:
    """Path of DCMTK ``dcmdjpeg``, or None when it is not installed."""
    found = shutil.which("dcmdjpeg")
    if found is None and Path("/usr/bin/dcmdjpeg").is_file():
        found = "/usr/bin/dcmdjpeg"
    return found


def _part10(ds: Dataset, transfer_syntax: str) -> Dataset:
    """A shallow copy of ``ds`` with complete File Meta Information (PS3.10 7.1), which ``dcmdjpeg
    +fo`` reads; ``ds`` itself is left as it is."""
    copy = Dataset(ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    copy.file_meta = meta
    copy.preamble = b"\x00" * 128
    return copy


def decode_jpeg(ds: Dataset, timeout_s: float = DCMDJPEG_TIMEOUT_S) -> Dataset:
    """The data set of ``ds`` with its JPEG Pixel Data decoded by ``dcmdjpeg`` (Explicit VR Little
    Endian; YCbCr converted to RGB, Photometric Interpretation set accordingly).

    Raises
    ------
    DecoderError
        ``dcmdjpeg`` is not installed, the transfer syntax is not one of :data:`DCMDJPEG_SYNTAXES`,
        or ``dcmdjpeg`` fails or runs longer than ``timeout_s``.
    """
    binary = dcmdjpeg_path()
    if binary is None:
        raise DecoderError("DCMTK dcmdjpeg is not installed (Debian package dcmtk)")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in DCMDJPEG_SYNTAXES:
        raise DecoderError(f"dcmdjpeg decodes the JPEG syntaxes {sorted(DCMDJPEG_SYNTAXES)}, {syntax or 'none'} "
                           "is given")
    with tempfile.TemporaryDirectory(prefix="medgate-dcmdjpeg-") as folder:  # mkdtemp: mode 0700
        source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        try:
            dcmwrite(source, _part10(ds, syntax), enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001 - a data set pydicom cannot write back
            raise DecoderError(f"the instance cannot be written for dcmdjpeg: {type(exc).__name__}: {exc}") from None
        try:
            run = subprocess.run([binary, "+fo", "+cp", str(source), str(target)], capture_output=True,
                                 text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise DecoderError(f"dcmdjpeg did not finish within {timeout_s:g} s") from None
        if run.returncode != 0 or not target.is_file():
            message = " ".join((run.stderr or run.stdout).split())[:300]
            raise DecoderError(f"dcmdjpeg exited with {run.returncode}: {message}")
        return dcmread(target)  # read whole (no deferred values): the file goes with the directory
