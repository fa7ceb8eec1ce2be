"""DICOM pixel data to model input: decode, modality LUT, photometric handling, windowing.

The array-level transform shared with training lives in :mod:`models.transforms`; this module only
turns a dataset into a plain 2D array in MONOCHROME2 orientation (high value = dense).
"""
from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut

from models.transforms import to_model_input


class PixelDataError(ValueError):
    """The dataset's pixels cannot be decoded or are not a usable image; the message says why."""


def grayscale_image(ds: Dataset) -> np.ndarray:
    """Decode ``ds`` into a 2D float32 array, MONOCHROME2 orientation.

    Raises
    ------
    PixelDataError
        No Pixel Data, an undecodable transfer syntax or a corrupt stream, or an empty image.
    """
    if "PixelData" not in ds:
        raise PixelDataError("the dataset has no Pixel Data (7FE0,0010)")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder error is the same failure to us
        raise PixelDataError(f"pixel data cannot be decoded: {type(exc).__name__}: {exc}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or pixels.ndim == 3:
        pixels = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        pixels = apply_modality_lut(pixels, ds).astype(np.float32)
    if photometric == "MONOCHROME1":
        pixels = pixels.max() - pixels
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        raise PixelDataError(f"expected a 2D image of at least 8x8 pixels, shape {pixels.shape} is given")
    return pixels


def model_input(ds: Dataset, size_px: int) -> np.ndarray:
    """The float32 ``(1, size_px, size_px)`` input of a 2D image model for ``ds``."""
    return to_model_input(grayscale_image(ds), size_px)
