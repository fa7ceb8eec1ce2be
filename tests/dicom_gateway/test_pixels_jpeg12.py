"""12-bit JPEG Extended (Process 2 and 4) radiographs decode through DCMTK ``dcmdjpeg``.

pydicom's plugins here (Pillow, GDCM) refuse 12-bit JPEG Extended, so the gateway refused such a
DX with 0xC000 "cannot be decoded".  The file is made by DCMTK ``dcmcjpeg +ee`` from a 12-bit DX.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_gateway import dcmtk_decoder
from dicom_gateway.pixels import PixelDataError, check_decodable, decoded_pixels, grayscale_image, model_input
from peers import DCMTK_ENV, require_peer
from training.synthetic.dicom import make_dx_dataset

JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"


def _jpeg12_dx(folder: Path) -> tuple[np.ndarray, Path]:
    y, x = np.mgrid[0:96, 0:128]
    pixels = (2048 + 1500 * np.sin(x / 9.0) * np.cos(y / 13.0)).astype(np.uint16)  # 12 bits, smooth
    source, target = folder / "dx.dcm", folder / "dx-jpeg12.dcm"
    make_dx_dataset(pixels).save_as(source, enforce_file_format=True)
    subprocess.run([require_peer("dcmcjpeg", "dcmtk"), "+ee", "+q", "95", str(source), str(target)],
                   env=DCMTK_ENV, check=True, capture_output=True, timeout=60)
    return pixels, target


def test_pydicom_alone_refuses_and_dcmdjpeg_decodes(tmp_path, monkeypatch):
    require_peer("dcmdjpeg", "dcmtk")
    pixels, path = _jpeg12_dx(tmp_path)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEG_EXTENDED_12BIT and ds.BitsStored == 12
    with pytest.raises(Exception):
        ds.pixel_array  # noqa: B018 - the gap: no Python plugin decodes it
    decoded = decoded_pixels(ds)
    assert decoded.shape == pixels.shape
    # lossy, 12-bit; dcmcjpeg shifts the stored range to start at 0 (and moves the window with it)
    shift = np.median(pixels.astype(int) - decoded.astype(int))
    assert np.abs(decoded.astype(int) + shift - pixels.astype(int)).mean() < 8
    check_decodable(ds)  # what the gateway asks at C-STORE: no longer 0xC000
    assert model_input(ds, 64).shape == (1, 64, 64)
    assert not list(Path(dcmtk_decoder.tempfile.gettempdir()).glob("medgate-dcmdjpeg-*"))  # cleaned up

    monkeypatch.setattr(dcmtk_decoder, "dcmdjpeg_path", lambda: None)
    with pytest.raises(PixelDataError, match="cannot be decoded: .*12-bit"):
        grayscale_image(ds)


def test_dcmdjpeg_failure_is_named(tmp_path, monkeypatch):
    require_peer("dcmdjpeg", "dcmtk")
    _, path = _jpeg12_dx(tmp_path)
    ds = pydicom.dcmread(path)
    monkeypatch.setattr(dcmtk_decoder, "DCMDJPEG_TIMEOUT_S", 1e-6)
    monkeypatch.setattr(dcmtk_decoder.decode_jpeg, "__defaults__", (1e-6,))
    with pytest.raises(PixelDataError, match="dcmdjpeg did not finish within"):
        grayscale_image(ds)
    with pytest.raises(dcmtk_decoder.DecoderError, match="dcmdjpeg decodes the JPEG syntaxes"):
        dcmtk_decoder.decode_jpeg(make_dx_dataset(np.zeros((8, 8), np.uint16)))
