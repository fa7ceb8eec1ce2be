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

One shape bound applies to every segment (``max_elongation``): a nodule is compact, a vessel is a
tube.  :func:`segment_elongation` is the square root of the largest over the smallest eigenvalue of
the covariance of the segment's voxels in millimetres (each voxel a solid box, so that the value is
defined for thin segments): 1 for a sphere, about ``L / (r * sqrt(3))`` for a straight tube of
length ``L`` and radius ``r``.  A segment more elongated than ``max_elongation`` is a vessel and is
dropped.  A nodule touching a vessel keeps its candidate: its dense segment is the nodule plus the
short stubs of vessel inside the probability component, whose covariance the nodule dominates.
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
#: Largest elongation (square root of the covariance eigenvalue ratio, dimensionless) of a nodule
#: segment.  Chosen on the training generator's validation split, never on the test split: the most
#: elongated true-positive segment there is 2.37 (a 6.5 mm nodule touching a vessel; the others,
#: lobulated and irregular ones included, 1.02-1.67), the vessel false positives at the operating
#: point 1.7-4.6; 2.5 is 2.37 with a 5 % margin (``models/nodule/card_notes.md`` has the numbers).
MAX_ELONGATION = 2.5


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
                       volume_hu: np.ndarray | None = None, solid_hu: float = SOLID_HU,
                       max_elongation: float | None = MAX_ELONGATION) -> tuple[list[Candidate], np.ndarray]:
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
    max_elongation
        Segments whose :func:`segment_elongation` exceeds this ratio (>= 1) are dropped as
        vessels; ``None`` keeps every shape.

    Returns
    -------
    candidates
        Sorted by decreasing probability.
    mask
        ``int32`` (z, y, x) label map: 0 background, ``i + 1`` for ``candidates[i]``.

    Raises
    ------
    ValueError
        A map that is not 3D, a bad spacing, threshold or ``max_elongation``, or a ``region`` /
        ``volume_hu`` whose shape differs from the map's.
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
    if max_elongation is not None and not max_elongation >= 1.0:
        raise ValueError(f"`max_elongation` must be a ratio >= 1 or None, {max_elongation!r} is given.")
    for name, value in (("region", region), ("volume_hu", volume_hu)):
        if value is not None and np.shape(value) != prob.shape:
            raise ValueError(f"`{name}` must have the map's shape {prob.shape}, {np.shape(value)} is given.")
    foreground = prob >= component_threshold
    if region is not None:
        foreground &= np.asarray(region, dtype=bool)
    out_mask = np.zeros(prob.shape, dtype=np.int32)
    # Everything below runs on the foreground's bounding box (a few per cent of a chest CT): labels
    # are numbered in raster order, which a box holding every foreground voxel keeps, and voxel
    # indices are shifted back to the map before any arithmetic, so the result is the same.
    box = _bounding_box(foreground)
    if box is None:
        return [], out_mask
    origin = [s.start for s in box]
    prob, foreground = prob[box], foreground[box]
    connectivity = np.ones((3, 3, 3), dtype=bool)
    labels, count = ndimage.label(foreground, structure=connectivity)
    if count and volume_hu is not None:
        dense = np.asarray(volume_hu)[box] >= solid_hu
        labels, count = _densest_segments(prob, labels, count, dense, connectivity)
    if count == 0:
        return [], out_mask
    local = np.nonzero(labels)  # the foreground only: scipy's per-label statistics sort the whole map
    ids = labels[local]
    weights = prob[local].astype(np.float64)
    where = tuple(w + o for w, o in zip(local, origin))  # indices in the map
    voxels = np.bincount(ids, minlength=count + 1)[1:].astype(np.float64)
    peaks = label_maximum(weights, ids, count)
    mass = np.bincount(ids, weights, count + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):  # centre of mass, weighted by probability
        centres = np.stack([np.bincount(ids, w * weights, count + 1)[1:] / mass for w in where], axis=1)
    volumes = voxels * float(np.prod(spacing))
    wanted = volumes >= min_volume_mm3
    if max_elongation is not None:
        wanted &= segment_elongation(labels, spacing, count, origin=origin) <= max_elongation
    keep = np.flatnonzero(wanted)
    keep = keep[np.argsort(-peaks[keep], kind="stable")]
    remap = np.zeros(count + 1, dtype=np.int32)
    remap[keep + 1] = np.arange(1, keep.size + 1, dtype=np.int32)
    out_mask[box] = remap[labels]
    candidates = [
        Candidate(centre_vox=tuple(float(v) for v in centres[i]),
                  centre_mm=tuple(float(v) for v in centres[i] * spacing),
                  diameter_mm=float(equivalent_diameter_mm(volumes[i])),
                  probability=float(peaks[i]), volume_mm3=float(volumes[i]))
        for i in keep
    ]
    return candidates, out_mask


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every ``True`` of ``mask``, or None when there is none."""
    spans = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        spans.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(spans)


def label_maximum(values: np.ndarray, ids: np.ndarray, count: int) -> np.ndarray:
    """Per label ``1..count``, the largest of ``values`` whose entry of ``ids`` is that label (flat
    arrays of the labelled voxels only; ``-inf`` for a label with none).  Equal to
    ``scipy.ndimage.maximum(values_map, labels, range(1, count + 1))``, which argsorts the whole map,
    background included (tens of seconds on a chest CT)."""
    out = np.full(int(count) + 1, -np.inf)
    np.maximum.at(out, np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float64))
    return out[1:]


def segment_elongation(labels: np.ndarray, spacing_mm, count: int | None = None, *, origin=(0, 0, 0)) -> np.ndarray:
    """Elongation of each labelled segment: ``sqrt(largest / smallest eigenvalue)`` of its covariance in mm.

    The covariance is that of the voxel centres' coordinates in millimetres plus each voxel's own
    extent (``spacing ** 2 / 12`` per axis, a solid box), so that a one-voxel-thick segment has a
    finite value.  1 for a sphere (any size), ``sqrt(12 * ((L/2)**2 / 3) / r**2)`` =
    ``L / (r * sqrt(3))`` for a straight tube of length ``L`` >> radius ``r``.

    Parameters
    ----------
    labels
        Integer (z, y, x) label map, 0 background, segments ``1..count``.
    spacing_mm
        ``(z, y, x)`` voxel spacing in millimetres.
    count
        Number of segments; ``labels.max()`` when ``None``.
    origin
        Index of ``labels[0, 0, 0]`` in the map it was cut from (the voxel coordinates are the map's).

    Returns
    -------
    numpy.ndarray
        ``float64`` (count,) elongations (``nan`` for an empty label).
    """
    lab = np.asarray(labels)
    if lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"`labels` must be a 3D integer label map, shape {lab.shape} and dtype {lab.dtype} are given.")
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if spacing.size != 3 or not np.all(spacing > 0):
        raise ValueError(f"`spacing_mm` must be three positive numbers, {spacing_mm!r} is given.")
    n = int(lab.max(initial=0)) if count is None else int(count)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    where = np.nonzero(lab)
    ids = lab[where].astype(np.int64)
    coords = [(w + int(o)).astype(np.float64) * s for w, o, s in zip(where, origin, spacing)]
    voxels = np.bincount(ids, minlength=n + 1)[1:].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = [np.bincount(ids, c, n + 1)[1:] / voxels for c in coords]
        cov = np.empty((n, 3, 3), dtype=np.float64)
        for a in range(3):
            for b in range(a, 3):
                cov[:, a, b] = cov[:, b, a] = np.bincount(ids, coords[a] * coords[b], n + 1)[1:] / voxels \
                    - mean[a] * mean[b]
    cov += np.diag(spacing ** 2 / 12.0)
    out = np.full(n, np.nan)
    full = voxels > 0
    eig = np.linalg.eigvalsh(cov[full])  # ascending
    out[full] = np.sqrt(eig[:, 2] / np.maximum(eig[:, 0], 1e-12))
    return out


def _densest_segments(prob: np.ndarray, labels: np.ndarray, count: int, dense: np.ndarray,
                      connectivity: np.ndarray) -> tuple[np.ndarray, int]:
    """Per component of ``labels``, its dense piece with the highest probability, relabelled 1..k."""
    pieces, n_pieces = ndimage.label((labels > 0) & dense, structure=connectivity)
    if n_pieces == 0:
        return np.zeros_like(labels), 0
    where = np.nonzero(pieces)
    ids = pieces[where]
    parent = label_maximum(labels[where], ids, n_pieces).astype(np.int64)  # one component holds each piece
    peak = label_maximum(prob[where], ids, n_pieces)
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
