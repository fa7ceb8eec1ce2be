"""Uploads refused before they are decoded: nested JSON, decompression bombs, images over the pixel limit."""
from __future__ import annotations

import io
import json
import time
import zlib

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from serving.config import HttpConfig
from serving.http.uploads import UploadError, decode as decode_with_limit, vitals_window

MAX_PIXELS = HttpConfig().max_image_pixels  # the default: above a radiograph (18.5 MP) or a 48 MP photo


def decode(data: bytes, max_pixels: int = MAX_PIXELS):
    return decode_with_limit(data, max_pixels)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def bilevel_png(width: int, height: int) -> bytes:
    """A 1-bit PNG of zeros, compressed to a few kilobytes whatever its size."""
    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def dicom_file(rows: int, columns: int, frames: int = 1, syntax=ExplicitVRLittleEndian,
               pixel_data: bytes | None = None) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "OT", "P1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixel_data if pixel_data is not None else bytes(rows * columns * frames)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_vitals_json_is_422(depth):
    body = json.dumps({"window": 1})[:-2].encode() + b"[" * depth + b"1" + b"]" * depth + b"}"
    with pytest.raises(UploadError) as refused:
        vitals_window(body)
    assert refused.value.status == 422 and "window" in refused.value.reason


@pytest.mark.parametrize("side", [20_000, 9_500])
def test_png_bomb_is_refused_before_it_is_decoded(side):
    data = bilevel_png(side, side)
    assert len(data) < 64 * 1024
    start = time.perf_counter()
    with pytest.raises(UploadError) as refused:
        decode(data)
    assert time.perf_counter() - start < 2.0
    assert refused.value.status == 422
    assert str(side) in refused.value.reason or "too large" in refused.value.reason


def test_png_under_the_limit_decodes_and_the_limit_is_configurable():
    assert decode(bilevel_png(64, 48)).pixels.shape == (48, 64, 3)
    with pytest.raises(UploadError) as refused:
        decode(bilevel_png(64, 48), max_pixels=1000)
    assert refused.value.status == 422 and "64 x 48" in refused.value.reason and "1000" in refused.value.reason


def test_dicom_over_the_pixel_limit_is_refused_from_its_header():
    # RLE Lossless whose header claims 60000 x 60000: the decoder would allocate 3.6 GB first
    data = dicom_file(60_000, 60_000, syntax=RLELossless, pixel_data=b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * 2)
    with pytest.raises(UploadError) as refused:
        decode(data)
    assert refused.value.status == 422 and "60000 x 60000" in refused.value.reason
    frames = dicom_file(1000, 1000, frames=60)
    with pytest.raises(UploadError) as refused:
        decode(frames)
    assert "x 60 frames" in refused.value.reason and str(MAX_PIXELS) in refused.value.reason


def test_dicom_under_the_limit_decodes():
    decoded = decode(dicom_file(64, 32, pixel_data=np.arange(64 * 32, dtype=np.uint8).tobytes()))
    assert decoded.kind == "dicom" and decoded.pixels.shape == (64, 32)
