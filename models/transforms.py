"""Array-level preprocessing and postprocessing shared by training and serving.

Both the training script and the inference server call exactly these functions, so a model
always sees inputs prepared the same way it was trained on.  Nothing here knows about DICOM:
callers hand in a plain 2D pixel array already in MONOCHROME2 orientation (high = dense) for the
single-channel models (:func:`to_model_input`), or an ``uint8`` (H, W, 3) RGB photograph for the
colour models (:func:`to_rgb_model_input`).  A model's metadata says which: ``num_channels`` of
its image input (:func:`input_channels`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.0


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, {value!r} is given.")
    return int(value)


def window(pixels: np.ndarray) -> np.ndarray:
    """Robust intensity window: map the 1st..99th percentile of ``pixels`` to [0, 1], clipped.

    Parameters
    ----------
    pixels
        2D grayscale array of any numeric dtype, MONOCHROME2 orientation.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape in [0, 1]; all zeros for a constant image.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"`pixels` must be a 2D grayscale array, shape {arr.shape} is given.")
    if arr.size == 0:
        raise ValueError(f"`pixels` must not be empty, shape {arr.shape} is given.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"`pixels` must be numeric, dtype {arr.dtype} is given.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("`pixels` must be finite, NaN or infinity is given.")
    lo, hi = np.percentile(arr, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def to_model_input(pixels: np.ndarray, size_px: int) -> np.ndarray:
    """Prepare one grayscale image for a model.

    Percentile windowing (1st..99th to [0, 1]) followed by a bilinear resize to
    ``size_px`` x ``size_px`` (antialiased when shrinking).  Non-square images are stretched, not
    padded, which is how the models are trained.

    Parameters
    ----------
    pixels
        2D array (rows, columns), ``uint8``/``uint16``/signed/float, MONOCHROME2 orientation.
    size_px
        Side of the square model input.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape (1, size_px, size_px) in [0, 1].
    """
    size = _check_size("size_px", size_px)
    windowed = window(pixels)
    if windowed.shape == (size, size):
        return windowed[None].copy()
    tensor = torch.from_numpy(np.ascontiguousarray(windowed))[None, None]
    shrinking = windowed.shape[0] > size or windowed.shape[1] > size
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
    return resized[0].clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)


def input_channels(spec: dict) -> int:
    """The channels of an image input described by a model's metadata (``network_data_format.inputs``
    entry): ``num_channels``, else the channel axis of ``shape`` ``[N, C, ...]``.

    Raises
    ------
    ValueError
        Neither is given, or the count is not 1 (grayscale) or 3 (RGB).
    """
    channels = spec.get("num_channels")
    if channels is None and isinstance(spec.get("shape"), (list, tuple)) and len(spec["shape"]) >= 4:
        channels = spec["shape"][1]
    if channels not in (1, 3):
        raise ValueError(f"an image input must have `num_channels` 1 or 3, {channels!r} is given.")
    return int(channels)


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as an (H, W, 3) ``uint8`` view (the alpha of RGBA dropped); ValueError otherwise."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"`rgb` must be an (H, W, 3) RGB or (H, W, 4) RGBA array, shape {arr.shape} is given.")
    if arr.dtype != np.uint8:
        raise ValueError(f"`rgb` must have dtype uint8 (0..255), {arr.dtype} is given.")
    return arr[..., :3]


def centre_square(rgb: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W, C) array (a view, no copy)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top:top + side, left:left + side]


def rgb_batch_to_model_input(nhwc: np.ndarray, size_px: int) -> np.ndarray:
    """(N, H, W, 3) ``uint8`` -> (N, 3, size_px, size_px) ``float32`` in [0, 1]: scaled by 1/255 and
    resized bilinearly (antialiased when shrinking)."""
    size = _check_size("size_px", size_px)
    x = torch.from_numpy(np.ascontiguousarray(nhwc)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        shrinking = x.shape[-2] > size or x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
        x = x.clamp_(0.0, 1.0)
    return x.numpy().astype(np.float32, copy=False)


def to_rgb_model_input(rgb: np.ndarray, size_px: int, *, centre_crop: bool = False) -> np.ndarray:
    """Prepare one ``uint8`` (H, W, 3) RGB photograph for a colour model: optionally its central
    square, then :func:`rgb_batch_to_model_input`; ``float32`` (3, size_px, size_px) in [0, 1]."""
    arr = check_rgb(rgb)
    if centre_crop:
        arr = centre_square(arr)
    return rgb_batch_to_model_input(arr[None], size_px)[0]


def to_model_input_batch(images: list[np.ndarray], size_px: int) -> np.ndarray:
    """:func:`to_model_input` over a list of images, stacked to ``float32`` (N, 1, S, S)."""
    if len(images) == 0:
        raise ValueError("`images` must hold at least one image, an empty sequence is given.")
    return np.stack([to_model_input(image, size_px) for image in images]).astype(np.float32, copy=False)


def heatmap_peaks(heatmaps: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Source-image ``(column, row)`` of the hottest cell of each heatmap.

    Parameters
    ----------
    heatmaps
        (N, h, w) or (N, 1, h, w) model heatmaps.
    rows, columns
        Size of the source image the heatmaps refer to.

    Returns
    -------
    numpy.ndarray
        ``float64`` (N, 2) array of ``(column, row)``: the centre of the argmax cell, scaled to the
        source image, so always strictly inside it.
    """
    n_rows = _check_size("rows", rows)
    n_cols = _check_size("columns", columns)
    maps = np.asarray(heatmaps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"`heatmaps` must have shape (N, h, w) or (N, 1, h, w), {np.shape(heatmaps)} is given.")
    n, h, w = maps.shape
    flat = np.nan_to_num(maps.reshape(n, h * w).astype(np.float64), nan=-np.inf)
    idx = flat.argmax(axis=1)
    cell_row, cell_col = np.divmod(idx, w)
    col = (cell_col + 0.5) * (n_cols / w)
    row = (cell_row + 0.5) * (n_rows / h)
    return np.stack([col, row], axis=1)


def heatmap_peak(heatmap: np.ndarray, rows: int, columns: int) -> tuple[float, float]:
    """Source-image ``(column, row)`` of the hottest cell of one (h, w) heatmap.

    See :func:`heatmap_peaks`; a (1, h, w) heatmap is accepted too.
    """
    arr = np.asarray(heatmap)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"`heatmap` must have shape (h, w), {np.shape(heatmap)} is given.")
    col, row = heatmap_peaks(arr[None], rows, columns)[0]
    return float(col), float(row)
