"""RGB photograph -> ``derm`` model input, shared by training and serving.

The photo (any size, ``uint8`` RGB, or RGBA whose alpha is dropped) is optionally cropped to its
central square and resized with antialiased bilinear interpolation to ``size_px``; values are
scaled to [0, 1].  This matches :func:`training.loaders.images.rgb_to_model_input` (used for
HAM10000 / ISIC) when ``centre_crop`` is off.  Per-channel standardisation happens inside the
network (:class:`models.derm.network.DermClassifier`), so the ONNX input is plain [0, 1] RGB.
The array operations are :mod:`models.transforms`' RGB ones (the DICOM gateway calls those for any
3-channel model); this module fixes the derm model's defaults.  No per-pixel Python loops.
"""
from __future__ import annotations

import numpy as np

from models.transforms import check_rgb, rgb_batch_to_model_input, to_rgb_model_input


def _check_size(size_px) -> int:
    if isinstance(size_px, bool) or not isinstance(size_px, (int, np.integer)) or size_px < 8:
        raise ValueError(f"`size_px` must be an integer of at least 8, {size_px!r} is given.")
    return int(size_px)


def to_derm_input(rgb: np.ndarray, size_px: int = 128, *, centre_crop: bool = False) -> np.ndarray:
    """Prepare one RGB photograph for the ``derm`` model.

    Parameters
    ----------
    rgb
        ``uint8`` array (H, W, 3) RGB (or (H, W, 4) RGBA; alpha is ignored).
    size_px
        Side of the square model input.
    centre_crop
        Crop the central square before resizing (keeps the aspect ratio); otherwise non-square
        photos are stretched.

    Returns
    -------
    numpy.ndarray
        ``float32`` (3, size_px, size_px) in [0, 1].
    """
    return to_rgb_model_input(rgb, _check_size(size_px), centre_crop=centre_crop)


def to_derm_input_batch(images, size_px: int = 128, *, centre_crop: bool = False) -> np.ndarray:
    """:func:`to_derm_input` over a list of photos or an (N, H, W, 3) ``uint8`` array -> (N, 3, S, S)."""
    if len(images) == 0:
        raise ValueError("`images` must hold at least one image, an empty sequence is given.")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        check_rgb(images[0])
        size = _check_size(size_px)
        n, h, w = images.shape[:3]
        side = min(h, w) if centre_crop else None
        batch = images[:, (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side] \
            if side else images
        return rgb_batch_to_model_input(batch[..., :3], size)
    return np.stack([to_derm_input(image, size_px, centre_crop=centre_crop) for image in images])


def from_derm_input(x: np.ndarray) -> np.ndarray:
    """(3, S, S) model input in [0, 1] -> (S, S, 3) ``uint8`` RGB (for plots and checks)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"`x` must have shape (3, S, S), {arr.shape} is given.")
    return np.clip(np.rint(arr.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
