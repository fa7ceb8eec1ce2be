"""A second, independent generator of chest CT volumes, for testing the ``nodule`` model off its training data.

:mod:`training.synthetic.ct` (the training generator) scales a chest to fill a small block.  This one
draws a whole axial chest section the way a scanner reconstructs it, with everything that generator
lacks, so that a model that learnt its quirks is caught out here, not on the first real study:

* a field of view wider than the patient (``body_fraction`` of its width, 0.5-0.8 by default:
  lots of air), a reconstruction circle padded with -1024 HU outside it, and a hollow patient
  table (dense shell, air inside) under the body;
* a super-elliptic body with a flattened back, subcutaneous fat, pectoral muscle, a mediastinum
  (heart and aorta) and a vertebral body with a cortical rim;
* ribs (dense cortical ovals in the chest wall whose angle drifts from slice to slice);
* vessels as random walks of spheres (no branching tree), and white, non-stationary noise (more
  in the body than in the air) with faint radial streaks, instead of smoothed noise;
* ``n_nodules`` 0 or 1: one spherical nodule of a given diameter and density inside a lung.

Volumes are ``int16`` (z, y, x) in Hounsfield units with ``y`` anterior to posterior, returned as
:class:`training.synthetic.ct.CtSample` so that tests and evaluation treat both generators alike.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.synthetic.ct import CtSample, Nodule

DEFAULT_SHAPE_VOX = (80, 512, 512)
DEFAULT_SPACING_MM = (1.25, 0.7, 0.7)
#: Hounsfield values of the drawn tissues (typical CT numbers: air -1000, fat about -100, soft
#: tissue 20-60, cancellous bone 300-400, cortical bone above 700).
AIR_HU = -1000.0
PADDING_HU = -1024.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
BLOOD_HU = 40.0
CANCELLOUS_HU = 300.0
CORTICAL_HU = 900.0
TABLE_HU = 250.0
MAX_NODULES = 1


def _check_triple(name: str, value, minimum: float) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a (z, y, x) triple of numbers >= {minimum}, {value!r} is given.") from None
    if len(triple) != 3 or not all(np.isfinite(v) and v >= minimum for v in triple):
        raise ValueError(f"`{name}` must be a (z, y, x) triple of numbers >= {minimum}, {value!r} is given.")
    return triple  # type: ignore[return-value]


def _inside(sdf_mm: np.ndarray, edge_mm: float = 0.8) -> np.ndarray:
    """Partial-volume fraction from a signed distance in mm (positive inside)."""
    return np.clip(sdf_mm / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)


def _paint(image: np.ndarray, fraction: np.ndarray, hu) -> None:
    image += fraction * (hu - image)


def _superellipse_sdf(y, x, cy, cx, ay, ax, power):
    """Approximate signed distance (mm, positive inside) of a super-ellipse."""
    r = (np.abs((y - cy) / ay) ** power + np.abs((x - cx) / ax) ** power) ** (1.0 / power)
    return (1.0 - r) * min(ay, ax)


def _chest_slice(rng, params, y, x, z_frac):
    """One axial slice (float32 HU) without lungs' contents, and its lung fraction map."""
    p = params
    taper = 1.0 - 0.12 * (1.0 - z_frac)  # narrower towards the apex (z = 0)
    ay, ax = p["ay"] * taper, p["ax"] * taper
    image = np.full(np.broadcast_shapes(y.shape, x.shape), AIR_HU, dtype=np.float32)
    back_y = p["cy"] + 0.85 * p["ay"]  # the back lies flat on the table
    body = np.minimum(_superellipse_sdf(y, x, p["cy"], p["cx"], ay, ax, p["power"]), back_y - y)
    _paint(image, _inside(body), FAT_HU)
    _paint(image, _inside(body - p["fat_mm"]), MUSCLE_HU)
    # Lungs: two ellipses either side of the mediastinum.
    lung = np.zeros_like(image)
    for side in (-1.0, 1.0):
        ly, lx = p["cy"] - 0.1 * ay, p["cx"] + side * 0.45 * ax
        sdf = (1.0 - np.sqrt(((y - ly) / (0.62 * ay * p["lung"])) ** 2
                             + ((x - lx) / (0.36 * ax * p["lung"] * taper)) ** 2)) * 0.36 * ax
        lung = np.maximum(lung, _inside(sdf))
    heart = (1.0 - np.sqrt(((y - p["cy"] + 0.15 * ay) / (0.42 * ay)) ** 2 + ((x - p["cx"] - 0.08 * ax) / (0.2 * ax))
                           ** 2)) * 0.2 * ax
    lung *= 1.0 - _inside(heart)
    _paint(image, lung, p["lung_hu"] + 80.0 * (y - p["cy"]) / ay)  # dependent density posteriorly
    _paint(image, _inside(heart), BLOOD_HU)
    aorta = p["aorta_r"] - np.sqrt((y - p["cy"] - 0.25 * ay) ** 2 + (x - p["cx"] + 0.12 * ax) ** 2)
    _paint(image, _inside(aorta), BLOOD_HU + 10.0)
    # Spine: vertebral body with a cortical rim, posterior to the mediastinum.
    spine = p["spine_r"] - np.sqrt((y - p["cy"] - 0.52 * ay) ** 2 + (x - p["cx"]) ** 2)
    _paint(image, _inside(spine), CORTICAL_HU)
    _paint(image, _inside(spine - 2.0), CANCELLOUS_HU)
    # Ribs: small cortical ovals in the chest wall, their angles drifting along z.
    for k in range(p["n_ribs"]):
        angle = p["rib_phase"] + 2 * np.pi * k / p["n_ribs"] + p["rib_drift"] * z_frac
        if abs(np.cos(angle)) < 0.2 and np.sin(angle) < 0:  # none over the sternum
            continue
        ry = p["cy"] + 0.9 * ay * np.sin(angle) * 0.95
        rx = p["cx"] + 0.9 * ax * np.cos(angle)
        rib = 1.0 - np.sqrt(((y - ry) / p["rib_r"]) ** 2 + ((x - rx) / (1.6 * p["rib_r"])) ** 2)
        rib = _inside(rib * p["rib_r"], 0.5) * (lung < 0.5)  # in the chest wall, outside the pleura
        _paint(image, rib, CORTICAL_HU * rng.uniform(0.6, 1.0))
    # Patient table: a hollow curved shell under the back, air inside it.
    table_y = back_y + p["table_gap"] + 6.0 - 0.0008 * (x - p["cx"]) ** 2  # centre line, curving up at the sides
    half_width = 0.7 * p["ax"] - np.abs(x - p["cx"])
    _paint(image, _inside(np.minimum(6.0 - np.abs(y - table_y), half_width)), TABLE_HU)
    _paint(image, _inside(np.minimum(4.5 - np.abs(y - table_y), half_width - 1.5)), AIR_HU)
    return image, lung


def _vessels(rng, volume, lung, spacing, n_vessels):
    """Random walks of blood-density spheres inside the lungs (partial volume, no branching)."""
    shape = volume.shape
    idx = np.argwhere(lung >= 0.99)
    if idx.size == 0:
        return
    sp = np.asarray(spacing)
    for _ in range(n_vessels):
        pos = idx[rng.integers(len(idx))] * sp
        direction = rng.normal(size=3)
        radius = rng.uniform(1.0, 2.6)
        for _ in range(int(rng.integers(20, 60))):
            direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.25, 3)
            pos = pos + 1.2 * direction / np.linalg.norm(direction)
            radius *= 0.985
            lo = np.maximum(np.floor((pos - radius - 1) / sp).astype(int), 0)
            hi = np.minimum(np.ceil((pos + radius + 1) / sp).astype(int) + 1, shape)
            if np.any(hi <= lo):
                break
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            zz, yy, xx = np.ogrid[box]
            dist = np.sqrt((zz * sp[0] - pos[0]) ** 2 + (yy * sp[1] - pos[1]) ** 2 + (xx * sp[2] - pos[2]) ** 2)
            frac = _inside(radius - dist, 0.6) * (lung[box] >= 0.5)
            volume[box] = np.maximum(volume[box], volume[box] + frac * (BLOOD_HU - volume[box]))


def generate_phantom(rng: np.random.Generator, shape_vox=DEFAULT_SHAPE_VOX, spacing_mm=DEFAULT_SPACING_MM, *,
                     n_nodules: int | None = None, nodule_diameter_mm: float | None = None,
                     nodule_hu: float | None = None, body_fraction: float | None = None) -> CtSample:
    """Draw one chest CT volume of the second generator.

    Parameters
    ----------
    rng
        Source of randomness; the same generator state gives the same volume.
    shape_vox
        ``(z, y, x)`` shape in voxels, each at least 16.
    spacing_mm
        ``(z, y, x)`` spacing in millimetres, each within 0.2..5.
    n_nodules
        0 (lesion-free) or 1; random when ``None``.
    nodule_diameter_mm
        Diameter of the nodule, 4..30 mm (random 6..20 mm when ``None``); capped where the lung is
        too small to hold it.
    nodule_hu
        Density of the nodule, -300..400 HU (random solid 10..80 HU when ``None``).
    body_fraction
        Width of the body over the width of the field of view, 0.3..0.95 (random 0.5..0.8 when
        ``None``): small values give air-heavy volumes.

    Returns
    -------
    training.synthetic.ct.CtSample
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator, {type(rng).__name__} is given.")
    shape = _check_triple("shape_vox", shape_vox, 16)
    if any(v != int(v) for v in shape):
        raise ValueError(f"`shape_vox` must hold integers, {shape_vox!r} is given.")
    shape = tuple(int(v) for v in shape)
    spacing = _check_triple("spacing_mm", spacing_mm, 0.2)
    if max(spacing) > 5.0:
        raise ValueError(f"`spacing_mm` must be at most 5 mm per axis, {spacing_mm!r} is given.")
    if n_nodules is None:
        n_nodules = int(rng.integers(0, MAX_NODULES + 1))
    if isinstance(n_nodules, bool) or not isinstance(n_nodules, (int, np.integer)) or not 0 <= n_nodules <= 1:
        raise ValueError(f"`n_nodules` must be 0, 1 or None, {n_nodules!r} is given.")
    diameter = float(rng.uniform(6.0, 20.0) if nodule_diameter_mm is None else nodule_diameter_mm)
    if not 4.0 <= diameter <= 30.0:
        raise ValueError(f"`nodule_diameter_mm` must be within 4..30, {nodule_diameter_mm!r} is given.")
    density = float(rng.uniform(10.0, 80.0) if nodule_hu is None else nodule_hu)
    if not -300.0 <= density <= 400.0:
        raise ValueError(f"`nodule_hu` must be within -300..400, {nodule_hu!r} is given.")
    fraction = float(rng.uniform(0.5, 0.8) if body_fraction is None else body_fraction)
    if not 0.3 <= fraction <= 0.95:
        raise ValueError(f"`body_fraction` must be within 0.3..0.95, {body_fraction!r} is given.")

    fov_y, fov_x = shape[1] * spacing[1], shape[2] * spacing[2]
    ax = 0.5 * fraction * fov_x
    params = {"ax": ax, "ay": ax * rng.uniform(0.62, 0.75), "power": rng.uniform(2.3, 3.2),
              "cx": fov_x * rng.uniform(0.45, 0.55), "fat_mm": ax * rng.uniform(0.04, 0.09),
              "lung": rng.uniform(0.9, 1.0), "lung_hu": rng.uniform(-900.0, -800.0),
              "aorta_r": ax * rng.uniform(0.07, 0.09), "spine_r": ax * rng.uniform(0.1, 0.13),
              "n_ribs": int(rng.integers(9, 13)), "rib_phase": rng.uniform(0, 2 * np.pi),
              "rib_drift": rng.uniform(-1.5, 1.5), "rib_r": ax * rng.uniform(0.025, 0.035),
              "table_gap": rng.uniform(2.0, 15.0)}
    params["cy"] = min(fov_y * rng.uniform(0.42, 0.5), fov_y - 0.85 * params["ay"] - params["table_gap"] - 16.0)
    y = (np.arange(shape[1], dtype=np.float32) * spacing[1])[:, None]
    x = (np.arange(shape[2], dtype=np.float32) * spacing[2])[None, :]
    volume = np.empty(shape, dtype=np.float32)
    lung = np.empty(shape, dtype=np.float32)
    for k in range(shape[0]):  # anatomy drifts slowly along z; each slice drawn in 2D
        volume[k], lung[k] = _chest_slice(rng, params, y, x, k / max(shape[0] - 1, 1))
    _vessels(rng, volume, lung, spacing, int(rng.integers(10, 20)) * max(1, shape[1] * shape[2] // 192 ** 2))

    nodules: list[Nodule] = []
    nodule_mask = np.zeros(shape, dtype=bool)
    if n_nodules:
        # depth inside the lung on a grid subsampled 2x in plane (cheap; 3 mm margin below)
        depth = ndimage.distance_transform_edt(lung[:, ::2, ::2] >= 0.5,
                                               sampling=(spacing[0], 2 * spacing[1], 2 * spacing[2]))
        diameter = min(diameter, 2.0 * (float(depth.max()) - 3.0))
        allowed = np.argwhere(depth >= diameter / 2.0 + 3.0) * (1, 2, 2)
        if diameter >= 4.0 and len(allowed):
            centre_vox = allowed[rng.integers(len(allowed))].astype(float) + rng.uniform(-0.3, 0.3, 3)
            centre = centre_vox * np.asarray(spacing)
            zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
            dist = np.sqrt((zz * spacing[0] - centre[0]) ** 2 + (yy * spacing[1] - centre[1]) ** 2
                           + (xx * spacing[2] - centre[2]) ** 2)
            frac = _inside(diameter / 2.0 - dist, 0.7)
            _paint(volume, frac, density)
            nodule_mask = frac >= 0.5
            nodules.append(Nodule(centre_vox=tuple(float(v) for v in centre_vox),
                                  centre_mm=tuple(float(v) for v in centre), diameter_mm=round(diameter, 3),
                                  kind="solid", shape="spherical"))

    # Noise: white, stronger inside the body, with faint radial streaks from the body centre.
    body = volume > -500.0
    sigma_air, sigma_body = rng.uniform(8.0, 20.0), rng.uniform(25.0, 60.0)
    angle = np.arctan2(y - params["cy"], x - params["cx"])
    streaks = rng.uniform(5.0, 20.0) * np.sin(angle * int(rng.integers(20, 60)) + rng.uniform(0, 2 * np.pi))
    for k in range(shape[0]):
        sigma = np.where(body[k], sigma_body, sigma_air).astype(np.float32)
        volume[k] += sigma * rng.standard_normal(shape[1:]).astype(np.float32) + streaks * body[k]
    # Reconstruction circle: outside it the scanner writes its padding value.
    outside = (y - fov_y / 2) ** 2 + (x - fov_x / 2) ** 2 > (min(fov_y, fov_x) / 2) ** 2
    volume[:, outside] = PADDING_HU
    volume_hu = np.clip(np.rint(volume), -1024, 3071).astype(np.int16)
    return CtSample(volume_hu=volume_hu, spacing_mm=spacing, nodules=nodules, lung_mask=lung >= 0.5,
                    nodule_mask=nodule_mask)
