"""Seeded generator of chest-X-ray-like images, with and without tuberculosis-like lesions.

No real patient data is used anywhere in medgate's training: this module draws a crude, fully
synthetic frontal chest radiograph so that the ``tb`` model, the serving path and the tests have
something realistic enough in shape and statistics to work on.

The images are 12-bit (0..4095) ``uint16`` arrays in MONOCHROME2 orientation: high values are
dense (bone, mediastinum, consolidation) and appear bright; air is dark.

Anatomy drawn: a soft-tissue body on a dark background, two dark lung fields (soft-edged
ellipses), a bright mediastinum and heart, spine, rib arcs, clavicles, low-frequency density
variation and quantum-like noise, with random brightness, contrast, scale and small shifts.

TB-positive images carry one to three upper-zone opacities (soft, textured blobs); some of them
are cavities (a dense ring around a darker centre).  Negative images may carry benign
confounders (small calcified granulomas anywhere in the lungs, nipple shadows in the lower
zones) so that "any bright spot" is not a sufficient rule.  Lesion contrast ranges from subtle to
obvious, which keeps the task learnable but not trivial.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_VALUE = 4095  # 12-bit stored range


@dataclass(frozen=True)
class CxrSample:
    """One generated radiograph.

    Attributes
    ----------
    pixels
        ``uint16`` array (size_px, size_px) in 0..4095, MONOCHROME2 (high = dense/bright).
    label
        1 for TB-like findings present, 0 otherwise.
    lesion_centres_px
        ``(column, row)`` pixel centre of every TB-like lesion (empty for negatives).
    lung_mask
        Boolean (size_px, size_px) mask of the two lung fields.
    """

    pixels: np.ndarray
    label: int
    lesion_centres_px: list[tuple[float, float]]
    lung_mask: np.ndarray


def _smooth_noise(rng: np.random.Generator, size_px: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = rng.standard_normal((cells + 1, cells + 1))
    pos = np.linspace(0, cells, size_px, endpoint=False)
    i0 = pos.astype(int)
    f = pos - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    out = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return out.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ellipse_radius(xx, yy, cx, cy, ax, ay) -> np.ndarray:
    """Normalised elliptical radius: 1 on the ellipse border."""
    return np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)


def _lungs(xx, yy, size_px, scale, shift):
    """Both lung fields: soft mask in [0, 1] and the (cx, cy, ax, ay) of each ellipse."""
    s = size_px
    cy = s * 0.47 + shift[1]
    shapes = [
        (s * 0.5 - s * 0.175 * scale + shift[0], cy, s * 0.14 * scale, s * 0.29 * scale),  # right lung
        (s * 0.5 + s * 0.18 * scale + shift[0], cy, s * 0.13 * scale, s * 0.28 * scale),  # left lung
    ]
    edge = s * 0.012
    soft = np.zeros_like(xx)
    for cx, cyy, ax, ay in shapes:
        r = _ellipse_radius(xx, yy, cx, cyy, ax, ay)
        soft = np.maximum(soft, _sigmoid((1.0 - r) * ax / edge))
    return soft, shapes


def _sample_in_lung(rng, shape, y_range, r_max=0.8):
    """A point inside one lung ellipse with normalised vertical position in ``y_range``."""
    cx, cy, ax, ay = shape
    for _ in range(100):
        u = rng.uniform(-r_max, r_max)
        v = rng.uniform(*y_range)
        if u * u + v * v < r_max * r_max:
            return cx + u * ax, cy + v * ay
    return cx, cy + 0.5 * (y_range[0] + y_range[1]) * ay


def _blob(xx, yy, cx, cy, sigma_px, aspect=1.0, angle=0.0) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    u = (c * dx + s * dy) / sigma_px
    v = (-s * dx + c * dy) / (sigma_px * aspect)
    return np.exp(-0.5 * (u * u + v * v))


def _draw_lesion(rng, xx, yy, size_px, cx, cy, lung_contrast) -> np.ndarray:
    """A TB-like opacity (or cavity) of random size and contrast centred on (cx, cy)."""
    strength = lung_contrast * rng.uniform(0.12, 0.6)
    sigma = size_px * rng.uniform(0.018, 0.045)
    texture = 1.0 + 0.35 * _smooth_noise(rng, size_px, 24)
    if rng.random() < 0.35:  # cavity: dense wall, darker air-filled centre
        r = np.hypot(xx - cx, yy - cy)
        radius = sigma * rng.uniform(0.9, 1.4)
        wall = np.exp(-0.5 * ((r - radius) / (0.35 * sigma)) ** 2)
        centre = np.exp(-0.5 * (r / (0.6 * radius)) ** 2)
        return strength * (1.2 * wall * texture - 0.5 * centre)
    shape = _blob(xx, yy, cx, cy, sigma, rng.uniform(0.6, 1.6), rng.uniform(0, np.pi))
    satellites = sum(
        _blob(xx, yy, cx + rng.normal(0, 1.5 * sigma), cy + rng.normal(0, 1.5 * sigma), 0.5 * sigma)
        for _ in range(rng.integers(0, 4))
    )
    return strength * (shape + 0.6 * satellites) * texture


def _draw_confounder(rng, xx, yy, size_px, shapes, lung_contrast) -> np.ndarray:
    """A benign look-alike: calcified granuloma anywhere, or a nipple shadow in a lower zone."""
    shape = shapes[rng.integers(0, 2)]
    if rng.random() < 0.6:
        cx, cy = _sample_in_lung(rng, shape, (-0.8, 0.8))
        sigma = size_px * rng.uniform(0.005, 0.011)
        return lung_contrast * rng.uniform(0.5, 1.0) * _blob(xx, yy, cx, cy, sigma)
    cx, cy = _sample_in_lung(rng, shape, (0.35, 0.75))
    sigma = size_px * rng.uniform(0.014, 0.022)
    return lung_contrast * rng.uniform(0.15, 0.35) * _blob(xx, yy, cx, cy, sigma)


def generate_cxr(rng: np.random.Generator, size_px: int = 256, *, tb: bool) -> CxrSample:
    """Draw one synthetic frontal chest radiograph.

    Parameters
    ----------
    rng
        Source of randomness; the same generator state gives the same image.
    size_px
        Width and height of the square image in pixels (at least 32).
    tb
        Whether to draw TB-like lesions (label 1) or not (label 0).

    Returns
    -------
    CxrSample
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator, {type(rng).__name__} is given.")
    if not isinstance(size_px, (int, np.integer)) or size_px < 32:
        raise ValueError(f"`size_px` must be an integer of at least 32, {size_px!r} is given.")
    s = int(size_px)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    scale = rng.uniform(0.9, 1.08)
    shift = [float(v) for v in rng.normal(0.0, 0.02 * s, size=2)]
    midline = s * 0.5 + shift[0]

    # Body: soft tissue on a dark background (values here are in arbitrary density units).
    body_dx = (xx - midline) / (s * 0.46 * scale)
    body_dy = (yy - s * 0.62 - shift[1]) / (s * 0.56 * scale)
    body_r = np.sqrt(np.sqrt(body_dx**4 + body_dy**4))  # superellipse: square-ish shoulders
    img = 0.05 + 0.55 * _sigmoid((1.0 - body_r) * 40.0)
    lung_soft, shapes = _lungs(xx, yy, s, scale, shift)
    lung_contrast = rng.uniform(0.3, 0.42)
    img -= lung_contrast * lung_soft * (1.0 - 0.25 * (yy - shapes[0][1]) / (shapes[0][3]))  # darker apex

    # Mediastinum, spine and heart.
    img += 0.25 * _sigmoid((s * 0.07 * scale - np.abs(xx - midline)) / (s * 0.01))
    img += 0.12 * _sigmoid((s * 0.025 - np.abs(xx - midline)) / (s * 0.004))
    trachea = _sigmoid((s * 0.018 - np.abs(xx - midline)) / (s * 0.004)) * _sigmoid((s * 0.36 - yy) / (s * 0.02))
    img -= 0.12 * trachea
    heart = _ellipse_radius(xx, yy, midline + s * 0.05, s * 0.66 + shift[1], s * 0.16 * scale, s * 0.12 * scale)
    img += 0.3 * _sigmoid((1.0 - heart) * 12.0)
    diaphragm = s * 0.76 + shift[1] + 0.002 * (xx - midline) ** 2 / scale
    img += 0.35 * _sigmoid((yy - diaphragm) / (s * 0.01))

    # Ribs (posterior arcs, equally spaced: one periodic profile) and clavicles.
    lateral = np.abs(xx - midline)
    period = s * rng.uniform(0.058, 0.07) * scale
    arc = 1.8 * (lateral - s * 0.1) ** 2 / s - 0.1 * lateral  # posterior ribs: rise, then fall laterally
    phase = (yy - arc - (s * 0.2 * scale + shift[1])) / period
    offset = (phase - np.rint(phase)) * (period / (s * rng.uniform(0.007, 0.011)))
    bones = 0.08 * np.exp(-0.5 * offset * offset) * ((phase > -0.5) & (phase < 8.5))
    clav_row = s * 0.19 * scale + shift[1] - 0.18 * (lateral - s * 0.04)
    clav = np.exp(-0.5 * ((yy - clav_row) / (s * 0.012)) ** 2)
    bones += 0.16 * clav * _sigmoid((s * 0.3 - lateral) / (s * 0.01)) * _sigmoid((lateral - s * 0.04) / (s * 0.01))
    img += bones * (0.4 + 0.6 * lung_soft)

    # Findings.
    centres: list[tuple[float, float]] = []
    if tb:
        for _ in range(rng.integers(1, 4)):
            shape = shapes[rng.integers(0, 2)]
            cx, cy = _sample_in_lung(rng, shape, (-0.8, -0.15), r_max=0.75)
            img += lung_soft * _draw_lesion(rng, xx, yy, s, cx, cy, lung_contrast)
            centres.append((float(cx), float(cy)))
    for _ in range(rng.binomial(2, 0.45)):
        img += lung_soft * _draw_confounder(rng, xx, yy, s, shapes, lung_contrast)

    # Acquisition: density variation, exposure (brightness/contrast) and noise.
    img += 0.04 * _smooth_noise(rng, s, 6)
    img = img * rng.uniform(0.75, 1.2) + rng.uniform(-0.08, 0.08)
    img += rng.normal(0.0, rng.uniform(0.01, 0.03), size=img.shape).astype(np.float32)
    pixels = np.clip(np.rint(img * 3000.0 + 300.0), 0, MAX_VALUE).astype(np.uint16)
    return CxrSample(pixels=pixels, label=int(tb), lesion_centres_px=centres, lung_mask=lung_soft > 0.5)


def make_dataset(
    n: int, seed: int, size_px: int = 256, input_size_px: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[list[tuple[float, float]]]]:
    """Generate a balanced, shuffled set of ``n`` images, preprocessed for the model.

    Parameters
    ----------
    n
        Number of images (half positive, rounded down).
    seed
        Seed of the generator; the same seed gives the same data set.
    size_px
        Size of the generated (source) images.
    input_size_px
        Size after :func:`models.transforms.to_model_input`; ``size_px`` when ``None``.

    Returns
    -------
    images
        ``float32`` (n, 1, S, S) model inputs.
    labels
        ``int64`` (n,) labels.
    centres
        Per image, the lesion centres in source (``size_px``) pixel coordinates.
    """
    from models.transforms import to_model_input

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive integer, {n!r} is given.")
    out_px = size_px if input_size_px is None else input_size_px
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    rng.shuffle(labels)
    images = np.empty((n, 1, out_px, out_px), dtype=np.float32)
    centres: list[list[tuple[float, float]]] = []
    for i, label in enumerate(labels):
        sample = generate_cxr(rng, size_px, tb=bool(label))
        images[i] = to_model_input(sample.pixels, out_px)
        centres.append(sample.lesion_centres_px)
    return images, labels, centres
