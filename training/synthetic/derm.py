"""Seeded generator of dermoscopy-like RGB photographs of skin lesions in the 7 HAM10000 classes.

No real patient data is used anywhere in medgate's training: this module paints a crude, fully
synthetic dermoscopy image so that the ``derm`` model, the serving path and the tests have
something with the right shape, colour statistics and class structure to work on.

Every image has a skin background (tone from fair to brown, redness, low-frequency shading and
fine texture), a lesion, sometimes hair strands, a colour cast, a dermoscope vignette and, half of
the time, the black circular field stop of a contact dermoscope.  The lesion is a star-shaped
region whose radius varies with angle: low-order harmonics give asymmetry, high-order ones give an
irregular border.  Colour palette, size, border sharpness, opacity and internal structures depend
on the class (dermoscopic textbook features, drawn crudely):

=======  =====================================================================================
akiec    pink-red, ill-defined, white-yellow scale, dotted/glomerular vessels
bcc      pink and pearly, translucent, arborising vessels, blue-grey ovoid nests, ulceration
bkl      tan to brown, sharp "stuck-on" border, milia-like cysts and comedo-like openings
df       small, light brown, delicate peripheral network, central white scar-like patch
mel      large, asymmetric, irregular, 2-4 colours, atypical network, blue-white veil, dots
nv       round, symmetric, one brown, regular network or globules
vasc     small, well demarcated, red/purple/blue lacunae separated by pale septa
=======  =====================================================================================

Each feature is drawn with a class-dependent *probability* and parameters come from overlapping
ranges (an atypical naevus may carry a veil, a melanoma may be small and symmetric), so the task
is learnable but not trivial.  The class prior is configurable; :data:`HAM10000_PRIOR` (``nv``
about two thirds of the images) is the default for :func:`make_dataset`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
#: Images per class in HAM10000 (Tschandl et al. 2018), used as the default class prior.
HAM10000_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}
HAM10000_PRIOR = tuple(HAM10000_COUNTS[c] / sum(HAM10000_COUNTS.values()) for c in CLASSES)
BALANCED_PRIOR = tuple(1.0 / len(CLASSES) for _ in CLASSES)


@dataclass(frozen=True)
class DermSample:
    """One generated dermoscopy image.

    Attributes
    ----------
    pixels
        ``uint8`` array (size_px, size_px, 3), RGB.
    label
        Index of the class in :data:`CLASSES`.
    label_name
        The class code, e.g. ``"mel"``.
    lesion_mask
        Boolean (size_px, size_px) mask of the lesion.
    centre_px
        ``(column, row)`` of the lesion centre in pixels.
    """

    pixels: np.ndarray
    label: int
    label_name: str
    lesion_mask: np.ndarray
    centre_px: tuple[float, float]


@dataclass(frozen=True)
class _Style:
    radius: tuple[float, float]        # lesion radius as a fraction of the image side
    asymmetry: tuple[float, float]     # amplitude of harmonics 1..3 (relative radius)
    irregular: tuple[float, float]     # amplitude of harmonics 5..13
    edge_px: tuple[float, float]       # border softness at 128 px
    opacity: tuple[float, float]
    palette: tuple[tuple[float, float, float], ...]
    n_colours: tuple[int, int]         # inclusive range of palette colours mixed in
    p: dict                            # probability of each structure


_BROWN, _LIGHT_BROWN, _DARK_BROWN = (0.55, 0.36, 0.22), (0.68, 0.50, 0.36), (0.36, 0.22, 0.14)
_BLACK, _BLUE_GREY, _RED = (0.16, 0.11, 0.10), (0.42, 0.47, 0.58), (0.70, 0.30, 0.30)
_PINK, _PEARL, _TAN = (0.86, 0.60, 0.58), (0.90, 0.76, 0.72), (0.72, 0.57, 0.42)

STYLES = {
    "akiec": _Style((0.14, 0.30), (0.05, 0.20), (0.04, 0.12), (3.0, 7.0), (0.45, 0.75),
                    ((0.82, 0.48, 0.44), (0.78, 0.44, 0.40), _PINK, _LIGHT_BROWN), (1, 2),
                    {"scale": 0.75, "dotted_vessels": 0.5, "network": 0.05, "dots": 0.15, "ulcer": 0.15}),
    "bcc": _Style((0.13, 0.28), (0.04, 0.18), (0.02, 0.08), (1.0, 3.0), (0.45, 0.75),
                  (_PINK, _PEARL, (0.80, 0.62, 0.60)), (1, 2),
                  {"arborising": 0.75, "nests": 0.45, "ulcer": 0.3, "white_patch": 0.15, "veil": 0.08,
                   "scale": 0.05}),
    "bkl": _Style((0.15, 0.30), (0.03, 0.15), (0.02, 0.08), (0.5, 1.5), (0.7, 0.92),
                  (_TAN, (0.58, 0.42, 0.30), (0.72, 0.62, 0.44), _BROWN), (1, 2),
                  {"milia": 0.5, "comedo": 0.45, "scale": 0.3, "network": 0.15, "veil": 0.04}),
    "df": _Style((0.08, 0.17), (0.00, 0.08), (0.00, 0.04), (3.0, 6.0), (0.55, 0.85),
                 ((0.66, 0.48, 0.36), _LIGHT_BROWN, (0.60, 0.42, 0.34)), (1, 1),
                 {"white_patch": 0.85, "network": 0.5, "dots": 0.1}),
    "mel": _Style((0.17, 0.34), (0.08, 0.30), (0.03, 0.10), (1.0, 4.0), (0.8, 0.97),
                  (_DARK_BROWN, _BLACK, _BROWN, _BLUE_GREY, _RED, _LIGHT_BROWN), (2, 4),
                  {"network": 0.5, "atypical": 1.0, "dots": 0.6, "veil": 0.55, "white_patch": 0.15,
                   "dotted_vessels": 0.15, "ulcer": 0.1}),
    "nv": _Style((0.11, 0.24), (0.00, 0.09), (0.00, 0.04), (0.8, 2.0), (0.75, 0.95),
                 (_BROWN, _LIGHT_BROWN, _DARK_BROWN, (0.62, 0.44, 0.30)), (1, 2),
                 {"network": 0.6, "atypical": 0.1, "dots": 0.4, "veil": 0.04, "white_patch": 0.03}),
    "vasc": _Style((0.08, 0.20), (0.00, 0.10), (0.00, 0.04), (0.6, 1.5), (0.8, 0.97),
                   ((0.72, 0.16, 0.22), (0.52, 0.16, 0.36), (0.36, 0.10, 0.22), (0.80, 0.32, 0.36)), (1, 3),
                   {"lacunae": 0.95, "white_patch": 0.05}),
}


def _smooth_noise(rng: np.random.Generator, size_px: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = rng.standard_normal((cells + 1, cells + 1))
    pos = np.linspace(0, cells, size_px, endpoint=False)
    i0 = pos.astype(int)
    f = pos - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return (rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _blend(img: np.ndarray, colour, alpha: np.ndarray) -> None:
    """In place: ``img = img * (1 - alpha) + colour * alpha`` (colour RGB or an (H, W, 3) map)."""
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, dtype=np.float32)


def _splat(size_px: int, points: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-blurred map of points ((n, 2) column, row), scaled so an isolated point peaks near 1."""
    canvas = np.zeros((size_px, size_px), dtype=np.float32)
    if len(points):
        ij = np.rint(points).astype(int)
        keep = (ij >= 0).all(axis=1) & (ij < size_px).all(axis=1)
        np.add.at(canvas, (ij[keep, 1], ij[keep, 0]), 1.0)
    sigma = max(float(sigma_px), 0.4)
    return gaussian_filter(canvas, sigma) * (2.0 * math.pi * sigma * sigma)


def _curve(rng, start, angle, length_px, bend, step_px=0.5) -> np.ndarray:
    """Points along a smoothly bending path (a random walk in heading)."""
    n = max(int(length_px / step_px), 2)
    heading = angle + np.cumsum(rng.normal(0.0, bend, n))
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * step_px
    return np.asarray(start, dtype=np.float64) + np.cumsum(steps, axis=0)


def _lines(rng, size_px, curves, width_px) -> np.ndarray:
    """Map in [0, 1] of anti-aliased lines along ``curves`` (list of point arrays)."""
    if not curves:
        return np.zeros((size_px, size_px), dtype=np.float32)
    density = _splat(size_px, np.concatenate(curves), width_px * 0.5)
    return np.clip(density * 0.5 / max(width_px * 0.5, 0.4) * 0.8, 0.0, 1.0)


def _lesion_shape(rng, xx, yy, cx, cy, radius_px, style, s):
    """Normalised radius (1 on the border) of a star-shaped lesion with asymmetric, irregular border.

    The border radius is ``1 + sum_k a_k cos(k theta + phi_k)``: harmonics 1..3 make the shape
    asymmetric, a few of 5..13 make the border irregular.  ``cos(k theta)`` comes from powers of
    the unit complex number ``exp(i theta)``, which avoids trigonometry over the whole image.
    """
    dx, dy = xx - cx, yy - cy
    aspect = rng.uniform(0.8, 1.0) if rng.random() < 0.7 else rng.uniform(0.6, 0.8)
    rot = rng.uniform(0, np.pi)
    c, si = math.cos(rot), math.sin(rot)
    u, v = c * dx + si * dy, (-si * dx + c * dy) / aspect
    r = np.sqrt(u * u + v * v)
    unit = (dx + 1j * dy).astype(np.complex64) / np.maximum(np.hypot(dx, dy), 1e-6)
    amp_low, amp_high = rng.uniform(*style.asymmetry), rng.uniform(*style.irregular)
    coeff = np.zeros(14, dtype=np.complex64)
    for k in (1, 2, 3):
        coeff[k] = amp_low * rng.uniform(0.3, 1.0) / k ** 0.5 * np.exp(1j * rng.uniform(0, 2 * np.pi))
    for k in rng.choice(np.arange(5, 14), size=3, replace=False):
        coeff[k] = amp_high * rng.uniform(0.3, 1.0) * (7.0 / k) ** 0.5 * np.exp(1j * rng.uniform(0, 2 * np.pi))
    total = np.zeros_like(unit)
    power = np.ones_like(unit)
    for k in range(1, 14):
        power *= unit
        if coeff[k] != 0:
            total += coeff[k] * power
    boundary = 1.0 + total.real + 0.5 * amp_high * _smooth_noise(rng, s, 10)
    return r / (radius_px * np.clip(boundary, 0.35, None))


def _network(rng, xx, yy, s, atypical: bool) -> np.ndarray:
    """Pigment network: a warped grid of dark lines in [0, 1]; atypical = thick, broken, uneven."""
    period = s * rng.uniform(0.05, 0.08) * (rng.uniform(0.8, 1.4) if atypical else 1.0)
    warp = (3.0 if atypical else 1.2) * _smooth_noise(rng, s, 6)
    a = rng.uniform(0, np.pi)
    u = (math.cos(a) * xx + math.sin(a) * yy) / period * np.pi + warp
    v = (-math.sin(a) * xx + math.cos(a) * yy) / period * np.pi - warp
    width = 0.12 if not atypical else np.clip(0.12 + 0.1 * (1 + _smooth_noise(rng, s, 5)), 0.06, 0.4)
    net = np.maximum(np.exp(-np.sin(u) ** 2 / width), np.exp(-np.sin(v) ** 2 / width))
    if atypical:
        net *= _sigmoid(4.0 * (_smooth_noise(rng, s, 8) + 0.3))
    return net


def _points_in_lesion(rng, n, cx, cy, radius_px, r_range=(0.0, 0.85)) -> np.ndarray:
    rho = radius_px * np.sqrt(rng.uniform(r_range[0] ** 2, r_range[1] ** 2, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    return np.stack([cx + rho * np.cos(phi), cy + rho * np.sin(phi)], axis=1)


def _draw_structures(rng, img, xx, yy, s, cx, cy, radius_px, inside, style) -> None:
    """Class-dependent internal structures, each with its probability."""
    p, k = style.p, s / 128.0

    def has(name: str) -> bool:
        return rng.random() < p.get(name, 0.0)

    if has("network"):
        atypical = has("atypical")
        fade = inside * (np.clip(1.2 - 0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) ** 0.5 / radius_px, 0, 1)
                         if not atypical else 1.0)
        _blend(img, _DARK_BROWN if rng.random() < 0.7 else _BLACK,
               rng.uniform(0.35, 0.7) * _network(rng, xx, yy, s, atypical) * fade)
    if has("veil"):
        blob = _sigmoid(6.0 * (_smooth_noise(rng, s, 5) + rng.uniform(-0.3, 0.5)))
        _blend(img, (0.55, 0.62, 0.76), rng.uniform(0.45, 0.8) * blob * inside)
    if has("white_patch"):
        off = rng.normal(0, 0.12 * radius_px, 2)
        rr = np.hypot(xx - cx - off[0], yy - cy - off[1]) / (radius_px * rng.uniform(0.3, 0.55))
        _blend(img, (0.93, 0.90, 0.87), rng.uniform(0.6, 0.9) * _sigmoid(5 * (1 - rr + 0.2 * _smooth_noise(rng, s, 8))))
    if has("dots"):
        atypical_dots = p.get("atypical", 0) > 0.5
        n = rng.integers(6, 30)
        pts = _points_in_lesion(rng, n, cx, cy, radius_px, (0.5, 1.05) if atypical_dots else (0.0, 0.7))
        _blend(img, _BLACK if atypical_dots else _DARK_BROWN,
               np.clip(_splat(s, pts, rng.uniform(0.8, 1.8) * k), 0, 1) * rng.uniform(0.6, 0.95))
    if has("milia"):
        pts = _points_in_lesion(rng, rng.integers(3, 12), cx, cy, radius_px)
        _blend(img, (0.96, 0.95, 0.86), np.clip(_splat(s, pts, rng.uniform(0.9, 1.6) * k), 0, 1) * 0.85)
    if has("comedo"):
        pts = _points_in_lesion(rng, rng.integers(3, 12), cx, cy, radius_px)
        _blend(img, (0.25, 0.17, 0.12), np.clip(_splat(s, pts, rng.uniform(0.9, 1.8) * k), 0, 1) * 0.8)
    if has("nests"):
        pts = _points_in_lesion(rng, rng.integers(2, 7), cx, cy, radius_px)
        _blend(img, _BLUE_GREY, np.clip(_splat(s, pts, rng.uniform(2.0, 4.0) * k) * 1.5, 0, 1) * 0.8)
    if has("scale"):
        speckle = _smooth_noise(rng, s, int(s / rng.uniform(2.5, 4.0)))
        _blend(img, (0.94, 0.91, 0.80), rng.uniform(0.5, 0.85) * _sigmoid(6 * (speckle - 0.6)) * inside)
    if has("ulcer"):
        off = rng.normal(0, 0.25 * radius_px, 2)
        rr = np.hypot(xx - cx - off[0], yy - cy - off[1]) / (radius_px * rng.uniform(0.15, 0.35))
        _blend(img, (0.45, 0.12, 0.10), 0.85 * _sigmoid(6 * (1 - rr + 0.3 * _smooth_noise(rng, s, 10))))
    if has("arborising"):
        curves = []
        for _ in range(rng.integers(2, 5)):
            trunk = _curve(rng, _points_in_lesion(rng, 1, cx, cy, radius_px)[0], rng.uniform(0, 2 * np.pi),
                           radius_px * rng.uniform(0.8, 1.5), 0.15)
            curves.append(trunk)
            for j in rng.integers(0, len(trunk), rng.integers(2, 5)):
                curves.append(_curve(rng, trunk[j], rng.uniform(0, 2 * np.pi), radius_px * rng.uniform(0.2, 0.5), 0.3))
        _blend(img, (0.75, 0.10, 0.14), rng.uniform(0.7, 0.95) * _lines(rng, s, curves, rng.uniform(1.0, 1.8) * k))
    if has("dotted_vessels"):
        pts = _points_in_lesion(rng, rng.integers(15, 50), cx, cy, radius_px, (0.0, 0.95))
        _blend(img, (0.78, 0.16, 0.18), np.clip(_splat(s, pts, rng.uniform(0.6, 1.1) * k), 0, 1) * 0.85)
    if has("lacunae"):
        n = rng.integers(4, 14)
        pts = _points_in_lesion(rng, n, cx, cy, radius_px, (0.0, 0.8))
        colours = np.asarray(style.palette, dtype=np.float32)[rng.integers(0, len(style.palette), n)]
        rad = radius_px * rng.uniform(0.18, 0.35, n)
        _blend(img, (0.86, 0.62, 0.64), 0.5 * inside)  # pale septa between the lagoons
        for (px, py), colour, r in zip(pts, colours, rad):
            rr = np.hypot(xx - px, yy - py) / r
            _blend(img, colour * rng.uniform(0.8, 1.1), 0.95 * _sigmoid(6 * (1 - rr)) * inside)


def _check_cls(cls) -> int:
    if isinstance(cls, str):
        if cls not in CLASSES:
            raise ValueError(f"`cls` must be one of {CLASSES} or an index 0..6, {cls!r} is given.")
        return CLASSES.index(cls)
    if isinstance(cls, (bool, np.bool_)) or not isinstance(cls, (int, np.integer)) or not 0 <= cls < len(CLASSES):
        raise ValueError(f"`cls` must be one of {CLASSES} or an index 0..6, {cls!r} is given.")
    return int(cls)


def generate_lesion(rng: np.random.Generator, cls: int | str, size_px: int = 128) -> DermSample:
    """Draw one synthetic dermoscopy image of a lesion of class ``cls``.

    Parameters
    ----------
    rng
        Source of randomness; the same generator state gives the same image.
    cls
        Class index into :data:`CLASSES` or its code (``"mel"``).
    size_px
        Width and height of the square image in pixels (at least 32).

    Returns
    -------
    DermSample
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator, {type(rng).__name__} is given.")
    label = _check_cls(cls)
    if isinstance(size_px, bool) or not isinstance(size_px, (int, np.integer)) or size_px < 32:
        raise ValueError(f"`size_px` must be an integer of at least 32, {size_px!r} is given.")
    s, name = int(size_px), CLASSES[label]
    style, k = STYLES[name], s / 128.0
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)

    # Skin: tone from fair to brown, redness, shading and fine texture.
    tone = rng.beta(1.6, 3.5)
    skin = np.array([0.94, 0.80, 0.72]) * (1 - tone) + np.array([0.58, 0.40, 0.30]) * tone
    img = np.empty((s, s, 3), dtype=np.float32)
    img[:] = skin
    img *= (1.0 + 0.05 * _smooth_noise(rng, s, 3))[..., None]
    red = np.clip(_smooth_noise(rng, s, 4), 0, None) * rng.uniform(0.0, 0.12 if name != "akiec" else 0.25)
    _blend(img, (0.85, 0.45, 0.45), red)
    img *= (1.0 + 0.03 * _smooth_noise(rng, s, int(s / 3)))[..., None]

    # Lesion body.
    cx, cy = s * 0.5 + rng.normal(0, 0.06 * s, 2)
    radius_px = s * rng.uniform(*style.radius)
    rn = _lesion_shape(rng, xx, yy, cx, cy, radius_px, style, s)
    soft = _sigmoid((1.0 - rn) * radius_px / (rng.uniform(*style.edge_px) * k))
    palette = np.asarray(style.palette, dtype=np.float32)
    chosen = palette[rng.choice(len(palette), rng.integers(style.n_colours[0], style.n_colours[1] + 1), replace=False)]
    chosen = np.clip(chosen * rng.uniform(0.85, 1.12, (len(chosen), 1)), 0, 1)
    colour = np.empty((s, s, 3), dtype=np.float32)
    colour[:] = chosen[0]
    for extra in chosen[1:]:  # blotches of further colours (variegation)
        _blend(colour, extra, _sigmoid(5.0 * (_smooth_noise(rng, s, 5) + rng.uniform(-0.4, 0.4))))
    shade = 1.0 + rng.uniform(-0.15, 0.15) * np.clip(1 - rn, 0, 1) + 0.08 * _smooth_noise(rng, s, 12)
    colour *= shade[..., None]
    _blend(img, colour, soft * rng.uniform(*style.opacity))
    _draw_structures(rng, img, xx, yy, s, cx, cy, radius_px, soft, style)

    # Hair, then acquisition: colour cast, vignette, field stop, blur and noise.
    if rng.random() < 0.35:
        curves = [_curve(rng, rng.uniform(0, s, 2), rng.uniform(0, 2 * np.pi), s * rng.uniform(0.4, 1.2), 0.03)
                  for _ in range(rng.integers(1, 7))]
        _blend(img, (0.12, 0.09, 0.07), 0.9 * _lines(rng, s, curves, rng.uniform(0.8, 1.6) * k))
    img *= rng.uniform(0.9, 1.08, 3).astype(np.float32)
    r_img = np.hypot(xx - s / 2, yy - s / 2) / (s / 2)
    img *= (1.0 - rng.uniform(0.05, 0.3) * r_img ** 2)[..., None]
    if rng.random() < 0.5:
        img *= _sigmoid((rng.uniform(0.9, 1.25) - r_img) * s / (2.0 * k))[..., None]
    if rng.random() < 0.3:
        img = gaussian_filter(img, sigma=(rng.uniform(0.4, 1.0) * k, rng.uniform(0.4, 1.0) * k, 0))
    img += rng.normal(0.0, rng.uniform(0.005, 0.025), img.shape).astype(np.float32)
    pixels = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return DermSample(pixels=pixels, label=label, label_name=name, lesion_mask=soft > 0.5,
                      centre_px=(float(cx), float(cy)))


def check_prior(prior) -> np.ndarray:
    """A validated class prior: 7 non-negative numbers summing to 1 (normalised if not)."""
    arr = np.asarray(prior, dtype=np.float64)
    if arr.shape != (len(CLASSES),) or not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
        raise ValueError(f"`prior` must be {len(CLASSES)} non-negative weights in the order {CLASSES}, "
                         f"{prior!r} is given.")
    return arr / arr.sum()


def sample_labels(rng: np.random.Generator, n: int, prior=HAM10000_PRIOR) -> np.ndarray:
    """``n`` class indices drawn with the largest-remainder rounding of ``n * prior``, shuffled.

    Deterministic counts (not multinomial draws) keep rare classes present in small splits.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive integer, {n!r} is given.")
    p = check_prior(prior)
    counts = np.floor(p * n).astype(int)
    rest = np.argsort(-(p * n - counts), kind="stable")[: n - counts.sum()]
    counts[rest] += 1
    labels = np.repeat(np.arange(len(CLASSES)), counts)
    rng.shuffle(labels)
    return labels


def make_dataset(n: int, seed: int, size_px: int = 128, prior=HAM10000_PRIOR) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` raw images with labels drawn from ``prior``.

    Returns
    -------
    images
        ``uint8`` (n, size_px, size_px, 3) RGB images.
    labels
        ``int64`` (n,) class indices into :data:`CLASSES`.
    """
    rng = np.random.default_rng(seed)
    labels = sample_labels(rng, n, prior)
    images = np.empty((n, size_px, size_px, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = generate_lesion(rng, int(label), size_px).pixels
    return images, labels.astype(np.int64)
