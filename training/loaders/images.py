"""Read PNG/JPEG files with Pillow and prepare them as model inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def read_gray(path: Path) -> np.ndarray:
    """A 2D grayscale array (8- or 16-bit values kept) from a PNG/JPEG; colour is averaged."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` must be an existing image file, {path} is given.")
    with Image.open(path) as img:
        arr = np.asarray(img.convert("I") if img.mode in ("I;16", "I;16B", "I") else img)
    return arr.mean(axis=2) if arr.ndim == 3 else arr


def read_rgb(path: Path) -> np.ndarray:
    """An (H, W, 3) ``uint8`` array from a PNG/JPEG."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` must be an existing image file, {path} is given.")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def rgb_to_model_input(rgb: np.ndarray, size_px: int) -> np.ndarray:
    """(H, W, 3) ``uint8`` -> ``float32`` (3, S, S) in [0, 1], bilinear resize (antialiased when shrinking)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"`rgb` must have shape (H, W, 3), {arr.shape} is given.")
    x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    shrink = size_px < max(arr.shape[:2])
    x = F.interpolate(x, size=(size_px, size_px), mode="bilinear", align_corners=False, antialias=shrink)
    return x[0].clamp_(0.0, 1.0).numpy()
