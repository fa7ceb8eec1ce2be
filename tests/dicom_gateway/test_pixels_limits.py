"""A compressed instance whose header claims a huge image is refused before any decoder allocates it."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from dicom_gateway.pixels import MAX_DECODED_PIXELS, PixelDataError, check_decodable, decoded_pixels


def _rle_header_of(rows: int, columns: int, frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)  # one RLE segment
    ds.PixelData = encapsulate([header + b"\x81\x00" * 16] * frames)  # a few runs of zeros
    ds["PixelData"].VR = "OB"
    return ds


@pytest.mark.parametrize("rows, columns, frames", [(65535, 65535, 1), (4096, 4096, 33)])
def test_a_bomb_is_refused_from_its_header(rows, columns, frames):
    ds = _rle_header_of(rows, columns, frames)
    assert rows * columns * frames > MAX_DECODED_PIXELS
    for decode in (decoded_pixels, check_decodable):
        with pytest.raises(PixelDataError, match="nothing was decoded"):
            decode(ds)
