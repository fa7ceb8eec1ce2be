"""The numpy MetaImage and NIfTI-1 readers and their world/voxel geometry."""
from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest

from training.loaders.volumes import VolumeHeader, read_mhd, read_nifti


def test_local_compressed_big_endian_mhd(tmp_path):
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    header = ("NDims = 3\nDimSize = 4 3 2\nElementType = MET_FLOAT\nBinaryDataByteOrderMSB = True\n"
              "CompressedData = True\nElementSpacing = 1 1 1\nOffset = 0 0 0\nElementDataFile = LOCAL\n")
    (tmp_path / "v.mhd").write_bytes(header.encode() + zlib.compress(volume.astype(">f4").tobytes()))
    array, geometry = read_mhd(tmp_path / "v.mhd")
    assert np.array_equal(array, volume) and array.dtype == np.float32


def test_world_voxel_round_trip_with_a_flipped_axis():
    geometry = VolumeHeader(np.array([0.5, 0.5, 2.0]), np.array([10.0, 20.0, 30.0]),
                            np.array([[-1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    # voxel (z=3, y=4, x=6): world x = 10 - 6 * 0.5 = 7, y = 20 + 4 * 0.5 = 22, z = 30 + 3 * 2 = 36
    assert geometry.voxel_to_world([3, 4, 6]).tolist() == pytest.approx([7.0, 22.0, 36.0])
    assert geometry.world_to_voxel([7.0, 22.0, 36.0]).tolist() == pytest.approx([3.0, 4.0, 6.0])


def test_mhd_errors_name_the_problem(tmp_path):
    (tmp_path / "v.mhd").write_text("NDims = 2\nDimSize = 4 3\nElementType = MET_SHORT\nElementDataFile = v.raw\n")
    with pytest.raises(ValueError, match="3D"):
        read_mhd(tmp_path / "v.mhd")
    with pytest.raises(FileNotFoundError, match="missing.mhd"):
        read_mhd(tmp_path / "missing.mhd")


def test_nifti_gz_with_scaling(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(4, 3, 2, order="F")  # stored (x, y, z)
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, 4, 3, 2, 1, 1, 1, 1)
    struct.pack_into("<2h", hdr, 70, 4, 16)
    struct.pack_into("<8f", hdr, 76, 1, 0.5, 0.6, 3.0, 0, 0, 0, 0)
    struct.pack_into("<3f", hdr, 108, 352, 2.0, 1.0)
    (tmp_path / "v.nii.gz").write_bytes(gzip.compress(bytes(hdr) + data.tobytes(order="F")))
    array, geometry = read_nifti(tmp_path / "v.nii.gz")
    assert array.shape == (2, 3, 4)  # (z, y, x)
    assert array[1, 2, 3] == 2.0 * data[3, 2, 1] + 1.0
    assert geometry.spacing_mm.tolist() == pytest.approx([0.5, 0.6, 3.0])
