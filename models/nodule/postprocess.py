"""From a nodule probability map to detection candidates.

The map is thresholded at ``component_threshold`` and split into 26-connected components; each
component becomes one candidate with its probability-weighted centre, the diameter of the sphere
of equal volume (voxel count times voxel volume) and a probability (the peak probability in the
component).  Components smaller than ``min_volume_mm3`` are dropped.  The candidate probability
is what the operating ``threshold`` (chosen on validation data) is applied to.

Two anatomical bounds apply when the CT is given (as the serving path and the evaluation do):

* **search region** (``region``, the lung mask of :func:`models.nodule.lung.lung_mask`): the
  probability outside it is ignored, so nothing in the air around the patient, in bone or in the
  mediastinum becomes a candidate;
* **density** (``volume_hu`` and ``solid_hu``): a candidate's segment is the part of its component
  at or above ``solid_hu`` (-500 HU: a solid or part-solid nodule's core, well above lung
  parenchyma), and of those dense pieces only the one holding the highest probability (the one
  connected to the peak the model saw).  A component with no dense piece of at least
  ``min_volume_mm3`` is no nodule and is dropped; the diameter, the centre and the probability
  are those of the segment, so a probability halo in the surrounding lung does not inflate them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

COMPONENT_THRESHOLD = 0.5
MIN_VOLUME_MM3 = 4.0
#: Lowest density of a nodule segment in HU: above lung parenchyma (about -900..-700 HU) and below
#: ground glass of a part-solid nodule's solid core; -500 HU is the usual solid/air boundary of
#: threshold-based nodule volumetry (half-way between parenchyma and soft tissue).
SOLID_HU = -500.0


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
                       min_volume_mm3: float = MIN_VOLUME_MM3, *, region: np.ndarray | None = None,
                       volume_hu: np.ndarray | None = None, solid_hu: float = SOLID_HU
                       ) -> tuple[list[Candidate], np.ndarray]:
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
        Smaller components (or dense segments) are dropped.
    region
        Boolean search region of the map's shape (the lung mask); everywhere when ``None``.
    volume_hu
        The CT in Hounsfield units on the map's grid; when given, each segment is bounded by
        ``solid_hu`` as the module says.
    solid_hu
        Lowest density of a segment voxel, in HU.

    Returns
    -------
    candidates
        Sorted by decreasing probability.
    mask
        ``int32`` (z, y, x) label map: 0 background, ``i + 1`` for ``candidates[i]``.

    Raises
    ------
    ValueError
        A map that is not 3D, a bad spacing or threshold, or a ``region`` / ``volume_hu`` whose
        shape differs from the map's.
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
    for name, value in (("region", region), ("volume_hu", volume_hu)):
        if value is not None and np.shape(value) != prob.shape:
            raise ValueError(f"`{name}` must have the map's shape {prob.shape}, {np.shape(value)} is given.")
    foreground = prob >= component_threshold
    if region is not None:
        foreground &= np.asarray(region, dtype=bool)
    connectivity = np.ones((3, 3, 3), dtype=bool)
    labels, count = ndimage.label(foreground, structure=connectivity)
    if count and volume_hu is not None:
        labels, count = _densest_segments(prob, labels, count, np.asarray(volume_hu) >= solid_hu, connectivity)
    out_mask = np.zeros(prob.shape, dtype=np.int32)
    if count == 0:
        return [], out_mask
    index = np.arange(1, count + 1)
    voxels = np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.float64)
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


def _densest_segments(prob: np.ndarray, labels: np.ndarray, count: int, dense: np.ndarray,
                      connectivity: np.ndarray) -> tuple[np.ndarray, int]:
    """Per component of ``labels``, its dense piece with the highest probability, relabelled 1..k."""
    pieces, n_pieces = ndimage.label((labels > 0) & dense, structure=connectivity)
    if n_pieces == 0:
        return np.zeros_like(labels), 0
    index = np.arange(1, n_pieces + 1)
    parent = ndimage.maximum(labels, pieces, index).astype(np.int64)  # one component holds each piece
    peak = ndimage.maximum(prob, pieces, index)
    order = np.lexsort((-peak, parent))  # by component, most probable piece first
    first = order[np.r_[True, parent[order][1:] != parent[order][:-1]]]
    remap = np.zeros(n_pieces + 1, dtype=np.int32)
    remap[first + 1] = np.arange(1, first.size + 1, dtype=np.int32)
    return remap[pieces], int(first.size)


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
