"""From a nodule probability map to detection candidates.

The map is thresholded at ``component_threshold`` and split into 26-connected components; each
component becomes one candidate with its probability-weighted centre, the diameter of the sphere
of equal volume (voxel count times voxel volume) and a probability (the peak probability in the
component).  Components smaller than ``min_volume_mm3`` are dropped.  The candidate probability
is what the operating ``threshold`` (chosen on validation data) is applied to.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

COMPONENT_THRESHOLD = 0.5
MIN_VOLUME_MM3 = 4.0


@dataclass(frozen=True)
class Candidate:
    """One detected nodule candidate.

    Attributes
    ----------
    centre_vox
        ``(z, y, x)`` probability-weighted centre in voxel indices of the map.
    centre_mm
        ``centre_vox`` times the spacing, in millimetres.
    diameter_mm
        Equivalent-sphere diameter of the component.
    probability
        Peak probability inside the component.
    volume_mm3
        Component volume.
    """

    centre_vox: tuple[float, float, float]
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float
    volume_mm3: float


def equivalent_diameter_mm(volume_mm3: float | np.ndarray) -> float | np.ndarray:
    """Diameter of the sphere with volume ``volume_mm3``."""
    return np.cbrt(6.0 * np.asarray(volume_mm3, dtype=np.float64) / np.pi)


def extract_candidates(probability: np.ndarray, spacing_mm, component_threshold: float = COMPONENT_THRESHOLD,
                       min_volume_mm3: float = MIN_VOLUME_MM3) -> tuple[list[Candidate], np.ndarray]:
    """Connected components of a thresholded probability map as candidates.

    Parameters
    ----------
    probability
        (z, y, x) probability map in [0, 1].
    spacing_mm
        ``(z, y, x)`` voxel spacing in millimetres of the map.
    component_threshold
        Voxels with probability >= this form the components, within (0, 1).
    min_volume_mm3
        Smaller components are dropped.

    Returns
    -------
    candidates
        Sorted by decreasing probability.
    mask
        ``int32`` (z, y, x) label map: 0 background, ``i + 1`` for ``candidates[i]``.
    """
    prob = np.asarray(probability, dtype=np.float32)
    if prob.ndim != 3:
        raise ValueError(f"`probability` must be a 3D (z, y, x) map, shape {prob.shape} is given.")
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if spacing.size != 3 or not np.all(spacing > 0):
        raise ValueError(f"`spacing_mm` must be three positive numbers, {spacing_mm!r} is given.")
    if not 0.0 < component_threshold < 1.0:
        raise ValueError(f"`component_threshold` must be within (0, 1), {component_threshold!r} is given.")
    if min_volume_mm3 < 0:
        raise ValueError(f"`min_volume_mm3` must be non-negative, {min_volume_mm3!r} is given.")
    labels, count = ndimage.label(prob >= component_threshold, structure=np.ones((3, 3, 3), dtype=bool))
    out_mask = np.zeros(prob.shape, dtype=np.int32)
    if count == 0:
        return [], out_mask
    index = np.arange(1, count + 1)
    voxels = ndimage.sum_labels(np.ones_like(prob), labels, index)
    peaks = ndimage.maximum(prob, labels, index)
    centres = np.asarray(ndimage.center_of_mass(prob, labels, index), dtype=np.float64).reshape(-1, 3)
    volumes = voxels * float(np.prod(spacing))
    keep = np.flatnonzero(volumes >= min_volume_mm3)
    keep = keep[np.argsort(-peaks[keep], kind="stable")]
    remap = np.zeros(count + 1, dtype=np.int32)
    remap[keep + 1] = np.arange(1, keep.size + 1, dtype=np.int32)
    out_mask = remap[labels]
    candidates = [
        Candidate(centre_vox=tuple(float(v) for v in centres[i]),
                  centre_mm=tuple(float(v) for v in centres[i] * spacing),
                  diameter_mm=float(equivalent_diameter_mm(volumes[i])),
                  probability=float(peaks[i]), volume_mm3=float(volumes[i]))
        for i in keep
    ]
    return candidates, out_mask


def candidates_array(candidates: list[Candidate], max_candidates: int) -> np.ndarray:
    """Pack candidates into a fixed ``float32`` (max_candidates, 6) array for batching.

    Columns: ``z, y, x`` (voxels), ``diameter_mm``, ``probability``, ``valid`` (1 or 0); rows
    beyond the candidates (or the ``max_candidates`` most probable) are zero.
    """
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, (int, np.integer)) or max_candidates < 1:
        raise ValueError(f"`max_candidates` must be a positive integer, {max_candidates!r} is given.")
    out = np.zeros((int(max_candidates), 6), dtype=np.float32)
    for i, c in enumerate(candidates[:max_candidates]):
        out[i] = (*c.centre_vox, c.diameter_mm, c.probability, 1.0)
    return out
