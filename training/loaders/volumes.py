"""Minimal numpy readers for MetaImage (``.mhd`` + ``.raw``) and NIfTI-1 (``.nii``/``.nii.gz``) volumes.

Only what the public datasets use: uncompressed or zlib-compressed MetaImage with a detached
or local data file, and single-file NIfTI-1 with scaling.  Volumes come back as numpy arrays
indexed ``[z, y, x]`` together with a header giving the spacing and origin in millimetres.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_MET_TYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
              "MET_INT": "i4", "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                1280: "u8"}


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of a volume: ``spacing_mm`` and ``origin_mm`` in (x, y, z) order; ``direction`` rows are
    the world directions of the x, y and z voxel axes."""

    spacing_mm: np.ndarray
    origin_mm: np.ndarray
    direction: np.ndarray

    def world_to_voxel(self, world_mm: np.ndarray) -> np.ndarray:
        """World (x, y, z) mm -> fractional voxel index (z, y, x); rows of a (N, 3) array or one point."""
        world = np.atleast_2d(np.asarray(world_mm, dtype=np.float64))
        index_xyz = (world - self.origin_mm) @ np.linalg.inv(self.direction) / self.spacing_mm
        out = index_xyz[:, ::-1]
        return out[0] if np.ndim(world_mm) == 1 else out

    def voxel_to_world(self, voxel_zyx: np.ndarray) -> np.ndarray:
        """Fractional voxel index (z, y, x) -> world (x, y, z) mm."""
        voxel = np.atleast_2d(np.asarray(voxel_zyx, dtype=np.float64))
        out = self.origin_mm + (voxel[:, ::-1] * self.spacing_mm) @ self.direction
        return out[0] if np.ndim(voxel_zyx) == 1 else out


def read_mhd_header(path: Path) -> dict[str, str]:
    """``key = value`` lines of a MetaImage header, up to and including ``ElementDataFile``."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        for raw in fh:
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                continue
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    return fields


def read_mhd(path: Path) -> tuple[np.ndarray, VolumeHeader]:
    """Read a 3D MetaImage: array ``[z, y, x]`` in its stored dtype, and its geometry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` must be an existing .mhd file, {path} is given.")
    h = read_mhd_header(path)
    dims = [int(v) for v in h.get("DimSize", "").split()]
    if int(h.get("NDims", len(dims))) != 3 or len(dims) != 3:
        raise ValueError(f"{path} must describe a 3D image, NDims {h.get('NDims')} DimSize {dims} is given.")
    if h.get("ElementType") not in _MET_TYPES:
        raise ValueError(f"{path} has unsupported ElementType {h.get('ElementType')!r}.")
    msb = h.get("BinaryDataByteOrderMSB", h.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(_MET_TYPES[h["ElementType"]]).newbyteorder(">" if msb else "<")
    data_file = h.get("ElementDataFile", "")
    if data_file == "LOCAL":
        blob = path.read_bytes()
        blob = blob[blob.index(b"ElementDataFile") :].split(b"\n", 1)[1]
    else:
        blob = (path.parent / data_file).read_bytes()
    if h.get("CompressedData", "False").lower() == "true":
        blob = zlib.decompress(blob)
    count = int(np.prod(dims))
    if len(blob) < count * dtype.itemsize:
        raise ValueError(f"{path}: data holds {len(blob)} bytes, {count * dtype.itemsize} are needed for {dims}.")
    array = np.frombuffer(blob, dtype=dtype, count=count).reshape(dims[::-1]).astype(dtype.newbyteorder("="))
    spacing = np.array([float(v) for v in h.get("ElementSpacing", "1 1 1").split()])
    origin = np.array([float(v) for v in h.get("Offset", h.get("Origin", "0 0 0")).split()])
    direction = np.array([float(v) for v in h.get("TransformMatrix", "1 0 0 0 1 0 0 0 1").split()]).reshape(3, 3)
    return array, VolumeHeader(spacing, origin, direction)


def read_nifti(path: Path) -> tuple[np.ndarray, VolumeHeader]:
    """Read a NIfTI-1 file (optionally gzipped): array ``[z, y, x, ...]`` as float32 after scaling.

    The geometry uses ``pixdim`` and the ``qoffset`` origin only (no rotation).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` must be an existing NIfTI file, {path} is given.")
    blob = path.read_bytes()
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    for order in "<>":
        if struct.unpack(order + "i", blob[:4])[0] == 348:
            break
    else:
        raise ValueError(f"{path} is not a NIfTI-1 file (sizeof_hdr is not 348).")
    dim = struct.unpack(order + "8h", blob[40:56])
    datatype = struct.unpack(order + "h", blob[70:72])[0]
    pixdim = struct.unpack(order + "8f", blob[76:108])
    vox_offset = int(struct.unpack(order + "f", blob[108:112])[0])
    slope, inter = struct.unpack(order + "2f", blob[112:120])
    qoffset = struct.unpack(order + "3f", blob[268:280])
    if datatype not in _NIFTI_TYPES:
        raise ValueError(f"{path} has unsupported NIfTI datatype {datatype}.")
    shape = dim[1 : dim[0] + 1]
    dtype = np.dtype(_NIFTI_TYPES[datatype]).newbyteorder(order)
    data = np.frombuffer(blob, dtype=dtype, count=int(np.prod(shape)), offset=max(vox_offset, 352))
    array = data.reshape(shape, order="F").astype(np.float32)
    if slope not in (0.0, 1.0) or inter != 0.0:
        array = array * (slope or 1.0) + inter
    array = np.ascontiguousarray(np.moveaxis(array, [0, 1, 2], [2, 1, 0]) if array.ndim >= 3 else array.T)
    spacing = np.array((list(pixdim[1:4]) + [1.0, 1.0])[:3], dtype=np.float64)
    return array, VolumeHeader(spacing, np.array(qoffset, dtype=np.float64), np.eye(3))
