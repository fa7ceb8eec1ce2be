"""Array-level preprocessing of CT volumes for the ``nodule`` model, shared by training and serving.

A CT volume in Hounsfield units is windowed to [0, 1] (``-1000..400`` HU by default: lung to
soft tissue, bone saturates) and resampled to the model spacing with trilinear interpolation.
All functions take and return ``(z, y, x)`` arrays; nothing here knows about DICOM.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

WINDOW_HU = (-1000.0, 400.0)
MODEL_SPACING_MM = (1.25, 0.7, 0.7)


def _spacing(name: str, value: object) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a (z, y, x) triple of positive numbers, {value!r} is given.") from None
    if len(triple) != 3 or not all(np.isfinite(v) and v > 0 for v in triple):
        raise ValueError(f"`{name}` must be a (z, y, x) triple of positive numbers, {value!r} is given.")
    return triple  # type: ignore[return-value]


def window_hu(volume_hu: np.ndarray, window_hu: tuple[float, float] = WINDOW_HU) -> np.ndarray:
    """Clip ``volume_hu`` to ``window_hu`` and scale it linearly to [0, 1].

    Parameters
    ----------
    volume_hu
        3D numeric array in Hounsfield units.
    window_hu
        ``(low, high)`` HU mapped to 0 and 1.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape in [0, 1].
    """
    arr = np.asarray(volume_hu)
    if arr.ndim != 3 or arr.size == 0:
        raise ValueError(f"`volume_hu` must be a non-empty 3D (z, y, x) array, shape {arr.shape} is given.")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"`volume_hu` must be numeric, dtype {arr.dtype} is given.")
    low, high = (float(v) for v in window_hu)
    if not high > low:
        raise ValueError(f"`window_hu` must be (low, high) with high > low, {window_hu!r} is given.")
    out = (arr.astype(np.float32) - low) / (high - low)
    if not np.isfinite(out).all():
        raise ValueError("`volume_hu` must be finite, NaN or infinity is given.")
    return np.clip(out, 0.0, 1.0)


def resampled_shape(shape_vox: tuple[int, ...], spacing_mm, target_spacing_mm) -> tuple[int, int, int]:
    """Shape of a ``shape_vox`` volume at ``spacing_mm`` once resampled to ``target_spacing_mm``."""
    src = _spacing("spacing_mm", spacing_mm)
    dst = _spacing("target_spacing_mm", target_spacing_mm)
    if len(shape_vox) != 3:
        raise ValueError(f"`shape_vox` must have 3 axes, {shape_vox!r} is given.")
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape_vox, src, dst))  # type: ignore[return-value]


def resample(volume: np.ndarray, spacing_mm, target_spacing_mm=MODEL_SPACING_MM, *,
             mode: str = "trilinear") -> np.ndarray:
    """Resample a (z, y, x) volume from ``spacing_mm`` to ``target_spacing_mm``.

    Both grids cover the same physical extent (``align_corners=False``); use
    :func:`to_source_vox` to map output voxel coordinates back.

    Parameters
    ----------
    volume
        3D array (any float-convertible dtype).
    spacing_mm, target_spacing_mm
        ``(z, y, x)`` spacings in millimetres.
    mode
        ``"trilinear"`` for images, ``"nearest"`` for masks.

    Returns
    -------
    numpy.ndarray
        ``float32`` resampled volume (the input, as float32, when the spacings already match).
    """
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"`volume` must be a 3D (z, y, x) array, shape {arr.shape} is given.")
    if mode not in ("trilinear", "nearest"):
        raise ValueError(f"`mode` must be 'trilinear' or 'nearest', {mode!r} is given.")
    shape = resampled_shape(arr.shape, spacing_mm, target_spacing_mm)
    if shape == arr.shape:
        return arr.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(tensor, size=shape, mode=mode, **kwargs)[0, 0].numpy()


def to_source_vox(points_vox: np.ndarray, source_shape, target_shape) -> np.ndarray:
    """Map (k, 3) voxel coordinates of a resampled volume back to the source voxel grid."""
    pts = np.asarray(points_vox, dtype=np.float64).reshape(-1, 3)
    scale = np.asarray(source_shape, dtype=np.float64) / np.asarray(target_shape, dtype=np.float64)
    return (pts + 0.5) * scale - 0.5


def prepare_volume(volume_hu: np.ndarray, spacing_mm, target_spacing_mm=MODEL_SPACING_MM,
                   window: tuple[float, float] = WINDOW_HU) -> np.ndarray:
    """Window then resample: the model input for a whole CT volume, ``float32`` (z, y, x) in [0, 1]."""
    return resample(window_hu(volume_hu, window), spacing_mm, target_spacing_mm)
