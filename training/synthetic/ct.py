"""Seeded generator of chest-CT-like volumes in Hounsfield units, with lung nodules.

No real patient data is used anywhere in medgate's training: this module draws a crude, fully
synthetic axial chest CT block so that the ``nodule`` model, the serving path and the tests have
something realistic enough in shape and intensity statistics to work on.

Volumes are ``int16`` arrays in Hounsfield units (HU), axis order ``(z, y, x)`` with ``y``
running anterior to posterior, sampled at an anisotropic ``spacing_mm`` (default 1.25 mm slices,
0.7 mm in plane).  The field of view is a small block of a chest (the anatomy is scaled to the
volume): air outside, a body ellipse of soft tissue (~40 HU) under a fat layer (~-100 HU), a
spine (bone), a mediastinum, and two lungs (~-850 HU, with texture and a dependent-density
gradient).  Branching tubular vessels (~40 HU) run through the lungs, so "any bright voxel in the
lung" is not a sufficient rule: their cross-sections look like small nodules on a single slice.

Each volume carries 0-4 nodules of 3-30 mm diameter (log-uniform; capped where a lung is too
small to hold one), spherical, lobulated (union of spheres) or irregular (noise-perturbed
radius), solid (~30 HU) or part-solid (ground-glass halo around a solid core).  Every nodule lies
inside a lung; centres are recorded in voxels and millimetres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DEFAULT_SHAPE_VOX = (64, 96, 96)
DEFAULT_SPACING_MM = (1.25, 0.7, 0.7)
MIN_DIAMETER_MM = 3.0
MAX_DIAMETER_MM = 30.0
MAX_NODULES = 4
KINDS = ("solid", "part_solid")
SHAPES = ("spherical", "lobulated", "irregular")


@dataclass(frozen=True)
class Nodule:
    """One drawn nodule.

    Attributes
    ----------
    centre_vox
        ``(z, y, x)`` centre in (fractional) voxel indices.
    centre_mm
        ``(z, y, x)`` centre in millimetres from the centre of voxel ``(0, 0, 0)``.
    diameter_mm
        Nominal diameter (of the base sphere) in millimetres, within 3..30.
    kind
        ``"solid"`` or ``"part_solid"``.
    shape
        ``"spherical"``, ``"lobulated"`` or ``"irregular"``.
    """

    centre_vox: tuple[float, float, float]
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str
    shape: str = "spherical"


@dataclass(frozen=True)
class CtSample:
    """One generated CT volume.

    Attributes
    ----------
    volume_hu
        ``int16`` (z, y, x) array in Hounsfield units.
    spacing_mm
        ``(z, y, x)`` voxel spacing in millimetres.
    nodules
        The drawn nodules (possibly none).
    lung_mask
        Boolean (z, y, x) mask of both lungs.
    nodule_mask
        Boolean (z, y, x) mask of all nodules (solid and ground-glass parts).
    """

    volume_hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    nodules: list[Nodule]
    lung_mask: np.ndarray
    nodule_mask: np.ndarray


def _check_triple(name: str, value: object, minimum: float) -> tuple:
    try:
        triple = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"`{name}` must be a (z, y, x) triple, {value!r} is given.") from None
    if len(triple) != 3 or any(isinstance(v, bool) or not np.isfinite(v) or v < minimum for v in triple):
        raise ValueError(f"`{name}` must be a (z, y, x) triple of numbers >= {minimum}, {value!r} is given.")
    return triple


def _soft(sdf_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (positive inside)."""
    return np.clip(sdf_mm / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma_vox: tuple) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return noise / (noise.std() + 1e-6)


def _bbox(centre_mm, radius_mm, spacing, shape):
    """Slices of the voxel box that holds a sphere, clipped to the volume."""
    out = []
    for c, s, n in zip(centre_mm, spacing, shape):
        lo = max(int(np.floor((c - radius_mm) / s)), 0)
        hi = min(int(np.ceil((c + radius_mm) / s)) + 1, n)
        out.append(slice(lo, max(hi, lo)))
    return tuple(out)


def _coords_mm(box, spacing):
    """Open grids (z, y, x) of voxel-centre coordinates in mm for a box of slices."""
    zz, yy, xx = np.ogrid[box[0], box[1], box[2]]
    return zz * spacing[0], yy * spacing[1], xx * spacing[2]


def _draw_vessels(rng, volume, lung, spacing, hilum_mm, direction, n_trees):
    """Branching capsules of decreasing radius blended into ``volume`` inside the lungs."""
    shape = volume.shape
    stack = []
    for _ in range(n_trees):
        d = direction + rng.normal(0, [0.8, 0.6, 0.3])
        stack.append((np.asarray(hilum_mm, float) + rng.normal(0, 2.0, 3), d / np.linalg.norm(d),
                      rng.uniform(1.1, 1.8), 0))
    while stack:
        start, d, radius_mm, depth = stack.pop()
        length_mm = rng.uniform(8.0, 16.0) * (0.85 ** depth)
        end = start + d * length_mm
        box = _bbox((start + end) / 2, length_mm / 2 + radius_mm + 1.5, spacing, shape)
        if all(b.stop > b.start for b in box):
            z, y, x = _coords_mm(box, spacing)
            seg = end - start
            t = ((z - start[0]) * seg[0] + (y - start[1]) * seg[1] + (x - start[2]) * seg[2]) / (seg @ seg)
            t = np.clip(t, 0.0, 1.0)
            dist = np.sqrt((z - start[0] - t * seg[0]) ** 2 + (y - start[1] - t * seg[1]) ** 2
                           + (x - start[2] - t * seg[2]) ** 2)
            frac = _soft(radius_mm - dist, 0.6) * lung[box]
            volume[box] += frac * (rng.uniform(20.0, 60.0) - volume[box])
        if depth < 3 and radius_mm > 0.4:
            for _ in range(2):
                nd = d + rng.normal(0, 0.5, 3)
                stack.append((end, nd / np.linalg.norm(nd), radius_mm * rng.uniform(0.65, 0.8), depth + 1))


def _nodule_sdf(rng, z, y, x, centre, radius_mm, shape_kind):
    """Signed distance (mm, positive inside) of a spherical, lobulated or irregular nodule."""
    dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
    dist = np.sqrt(dz * dz + dy * dy + dx * dx)
    if shape_kind == "spherical":
        return radius_mm - dist
    if shape_kind == "lobulated":
        sdf = radius_mm * 0.85 - dist
        for _ in range(rng.integers(2, 5)):
            u = rng.normal(size=3)
            u *= radius_mm * 0.55 / np.linalg.norm(u)
            r_lobe = radius_mm * rng.uniform(0.35, 0.5)
            lobe = r_lobe - np.sqrt((dz - u[0]) ** 2 + (dy - u[1]) ** 2 + (dx - u[2]) ** 2)
            sdf = np.maximum(sdf, lobe)
        return sdf
    # irregular: radius modulated by a few random low-frequency directional waves
    safe = np.maximum(dist, 1e-6)
    modulation = np.zeros_like(dist)
    for _ in range(4):
        k = rng.normal(size=3)
        k *= rng.uniform(1.5, 3.5) / np.linalg.norm(k)
        modulation += rng.uniform(0.04, 0.1) * np.cos((k[0] * dz + k[1] * dy + k[2] * dx) / safe
                                                      * np.pi + rng.uniform(0, 2 * np.pi))
    return radius_mm * (1.0 + modulation) - dist


def _place_nodules(rng, volume, lung, spacing, n_nodules):
    """Draw nodules fully inside the lungs; return them with their union mask."""
    shape = volume.shape
    # Depth inside the lung on a grid subsampled 2x in plane (cheap; 1.5 mm safety margin below).
    inner_mm = np.zeros(shape, dtype=np.float64)
    inner_mm[:, ::2, ::2] = ndimage.distance_transform_edt(lung[:, ::2, ::2] >= 0.5,
                                                           sampling=(spacing[0], 2 * spacing[1], 2 * spacing[2]))
    nodule_mask = np.zeros(shape, dtype=bool)
    nodules: list[Nodule] = []
    for _ in range(4 * n_nodules):
        if len(nodules) == n_nodules:
            break
        diameter = float(np.exp(rng.uniform(np.log(MIN_DIAMETER_MM), np.log(MAX_DIAMETER_MM))))
        diameter = min(diameter, 2.0 * (float(inner_mm.max()) - 2.5))
        if diameter < MIN_DIAMETER_MM:
            continue
        radius = diameter / 2.0
        allowed = np.flatnonzero(inner_mm >= radius + 2.0)
        if allowed.size == 0:
            continue
        centre_vox = np.array(np.unravel_index(allowed[rng.integers(allowed.size)], shape), dtype=float)
        centre_vox += rng.uniform(-0.3, 0.3, 3)
        centre = centre_vox * np.asarray(spacing)
        if any(np.linalg.norm(centre - np.asarray(n.centre_mm)) < radius + n.diameter_mm / 2 + 2 for n in nodules):
            continue
        shape_kind = str(rng.choice(SHAPES, p=[0.4, 0.3, 0.3]))
        kind = "part_solid" if rng.random() < 0.25 else "solid"
        box = _bbox(centre, radius * 1.5 + 1.0, spacing, shape)
        z, y, x = _coords_mm(box, spacing)
        sdf = _nodule_sdf(rng, z, y, x, centre, radius, shape_kind)
        frac = _soft(sdf, 0.7) * lung[box]
        hu = rng.uniform(10.0, 60.0) if kind == "solid" else rng.uniform(-650.0, -450.0)
        volume[box] += frac * (hu - volume[box])
        if kind == "part_solid":
            core = _soft(sdf - radius * rng.uniform(0.4, 0.7), 0.7) * lung[box]
            volume[box] += core * (rng.uniform(10.0, 50.0) - volume[box])
        nodule_mask[box] |= frac >= 0.5
        nodules.append(Nodule(centre_vox=tuple(float(v) for v in centre_vox),
                              centre_mm=tuple(float(v) for v in centre), diameter_mm=round(diameter, 3),
                              kind=kind, shape=shape_kind))
    return nodules, nodule_mask


def generate_ct(rng: np.random.Generator, shape_vox: tuple[int, int, int] = DEFAULT_SHAPE_VOX,
                spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
                n_nodules: int | None = None) -> CtSample:
    """Draw one synthetic chest CT volume.

    Parameters
    ----------
    rng
        Source of randomness; the same generator state gives the same volume.
    shape_vox
        ``(z, y, x)`` volume shape in voxels, each at least 16.
    spacing_mm
        ``(z, y, x)`` voxel spacing in millimetres, each within 0.2..5.
    n_nodules
        Number of nodules to draw (0..4); random (uniform over 0..4) when ``None``.  Fewer may be
        drawn where the lungs cannot hold them.

    Returns
    -------
    CtSample
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator, {type(rng).__name__} is given.")
    shape = tuple(int(v) for v in _check_triple("shape_vox", shape_vox, 16))
    if tuple(shape_vox) != shape:
        raise ValueError(f"`shape_vox` must hold integers, {shape_vox!r} is given.")
    spacing = tuple(float(v) for v in _check_triple("spacing_mm", spacing_mm, 0.2))
    if max(spacing) > 5.0:
        raise ValueError(f"`spacing_mm` must be at most 5 mm per axis, {spacing_mm!r} is given.")
    if n_nodules is None:
        n_nodules = int(rng.integers(0, MAX_NODULES + 1))
    if isinstance(n_nodules, bool) or not isinstance(n_nodules, (int, np.integer)) or not 0 <= n_nodules <= MAX_NODULES:
        raise ValueError(f"`n_nodules` must be an integer within 0..{MAX_NODULES} or None, {n_nodules!r} is given.")

    fov = np.asarray(shape) * np.asarray(spacing)
    z, y, x = _coords_mm((slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2])), spacing)
    cy, cx = fov[1] * rng.uniform(0.47, 0.53), fov[2] * rng.uniform(0.47, 0.53)
    scale = rng.uniform(0.92, 1.05)

    # Body: air outside, fat layer, soft tissue inside; spine posteriorly.
    ay, ax = 0.44 * fov[1] * scale, 0.48 * fov[2] * scale
    body_r = np.sqrt(((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2)
    fat = rng.uniform(0.05, 0.1)
    volume = np.full(shape, -1000.0, dtype=np.float32)
    volume += _soft((1.0 - body_r) * min(ay, ax), 1.0) * (-100.0 + 1000.0)
    volume += _soft((1.0 - fat - body_r) * min(ay, ax), 1.0) * (rng.uniform(30.0, 50.0) + 100.0)
    spine_r = 0.09 * fov[2] * scale
    spine_d = np.sqrt((y - (cy + 0.3 * fov[1] * scale)) ** 2 + (x - cx) ** 2)
    volume += _soft(spine_r - spine_d, 1.0) * rng.uniform(300.0, 600.0)

    # Lungs: two ellipsoids tapering towards the apex (z = 0), with texture and gravity gradient.
    lung = np.zeros(shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        lx = cx + side * 0.22 * fov[2] * scale * rng.uniform(0.95, 1.05)
        ly = cy - 0.03 * fov[1]
        taper = 0.75 + 0.25 * np.clip(z / fov[0], 0, 1)
        r = np.sqrt(((x - lx) / (0.185 * fov[2] * scale * taper)) ** 2
                    + ((y - ly) / (0.34 * fov[1] * scale * taper)) ** 2
                    + ((z - 0.55 * fov[0]) / (0.75 * fov[0])) ** 2)
        lung = np.maximum(lung, _soft((1.0 - r) * 0.185 * fov[2], 1.0))
    lung_hu = (rng.uniform(-880.0, -820.0) + 60.0 * (y - cy) / ay
               + 25.0 * _smooth_noise(rng, shape, (1.5, 3.0, 3.0)))
    volume += lung * (lung_hu - volume)
    lung_mask = lung >= 0.5

    # Vessels: trees from each hilum, pointing laterally and cranio-caudally.
    for side in (-1.0, 1.0):
        hilum = (0.55 * fov[0], cy, cx + side * 0.08 * fov[2])
        _draw_vessels(rng, volume, lung, spacing, hilum, np.array([0.0, 0.0, side]), int(rng.integers(7, 11)))

    nodules, nodule_mask = _place_nodules(rng, volume, lung, spacing, n_nodules)

    # Acquisition noise: slightly correlated, stronger than in real low-dose CT.
    sigma_hu = rng.uniform(15.0, 35.0)
    volume += sigma_hu * _smooth_noise(rng, shape, (0.3, 0.6, 0.6))
    volume_hu = np.clip(np.rint(volume), -1024, 3071).astype(np.int16)
    return CtSample(volume_hu=volume_hu, spacing_mm=spacing, nodules=nodules, lung_mask=lung_mask,
                    nodule_mask=nodule_mask)
