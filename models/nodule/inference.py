"""Sliding-window inference of the ``nodule`` patch model over whole CT volumes.

The exported model has a fixed patch input (``image`` (N, 1, 64, 64, 64)) and a dynamic batch;
:func:`infer_volume` tiles any (z, y, x) volume with overlapping patches (padding where the volume
is smaller than a patch) through :func:`monai.inferers.sliding_window_inference` and blends the
patch probabilities with Gaussian weights into a map of the volume's own shape.  ``run_patch`` is
any callable mapping a float32 tensor (B, 1, *roi_size) to probabilities of the same shape:
:func:`torch_runner` wraps a network, :func:`onnx_runner` an ONNX Runtime session.

:func:`segment_volume` is the one path from a preprocessed volume to candidates that serving
(:mod:`models.nodule.serving`), :func:`detect` and the training evaluation share: the lung mask of
the CT (:func:`models.nodule.lung.lung_mask`), sliding windows over the lungs' bounding box only
(plus ``context_vox`` of surroundings; the rest of the map is 0), then candidates inside the lung
mask bounded by density, tube-shaped segments (vessels) dropped by their elongation
(:func:`models.nodule.postprocess.extract_candidates`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from monai.inferers import sliding_window_inference

from models.nodule.lung import lung_mask
from models.nodule.postprocess import (COMPONENT_THRESHOLD, MAX_ELONGATION, MIN_VOLUME_MM3, SOLID_HU, Candidate,
                                       extract_candidates)
from models.nodule.preprocess import MODEL_SPACING_MM, WINDOW_HU, prepare_volume, to_source_vox

PATCH_SIZE_VOX = (64, 64, 64)
#: Voxels of surroundings kept on each side of the lungs' bounding box for sliding-window inference.
CONTEXT_VOX = 16
PatchRunner = Callable[[torch.Tensor], torch.Tensor]


def torch_runner(network: torch.nn.Module, *, sigmoid: bool = True) -> PatchRunner:
    """Wrap a network returning logits (``sigmoid=True``) or probabilities as a patch runner."""

    def run(patch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = network(patch)
        return torch.sigmoid(out) if sigmoid else out

    return run


def onnx_runner(session, input_name: str = "image", output_name: str = "probability") -> PatchRunner:
    """Wrap an ``onnxruntime.InferenceSession`` of the exported patch model as a patch runner."""

    def run(patch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(patch.detach().cpu().numpy(), dtype=np.float32)
        (out,) = session.run([output_name], {input_name: array})
        return torch.from_numpy(out)

    return run


def infer_volume(run_patch: PatchRunner, volume01: np.ndarray, roi_size: Sequence[int] = PATCH_SIZE_VOX,
                 overlap: float = 0.25, sw_batch_size: int = 2, region: np.ndarray | None = None) -> np.ndarray:
    """Probability map of a whole preprocessed volume by overlapping patches.

    With a ``region``, a patch that holds none of its voxels is not run: its output is 0, which
    the Gaussian blending gives only to voxels outside the region (every voxel of a skipped patch
    is), so the map inside the region is the same as without skipping.

    Parameters
    ----------
    run_patch
        Callable (B, 1, *roi_size) float32 tensor -> probabilities of the same shape.
    volume01
        (z, y, x) preprocessed volume (see :func:`models.nodule.preprocess.prepare_volume`).
    roi_size
        Patch size in voxels; must match the model's fixed input for ONNX.
    overlap
        Fraction of overlap between neighbouring patches, within [0, 1).
    sw_batch_size
        Patches per call of ``run_patch``.
    region
        Boolean (z, y, x) map of the voxels whose probability is wanted (the lung mask), or None
        for every voxel.

    Returns
    -------
    numpy.ndarray
        ``float32`` (z, y, x) probability map with the shape of ``volume01``.
    """
    if not callable(run_patch):
        raise TypeError(f"`run_patch` must be callable, {type(run_patch).__name__} is given.")
    arr = np.asarray(volume01, dtype=np.float32)
    if arr.ndim != 3 or arr.size == 0:
        raise ValueError(f"`volume01` must be a non-empty 3D (z, y, x) array, shape {arr.shape} is given.")
    roi = tuple(int(v) for v in roi_size)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"`roi_size` must be three positive integers, {roi_size!r} is given.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"`overlap` must be within [0, 1), {overlap!r} is given.")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"`sw_batch_size` must be a positive integer, {sw_batch_size!r} is given.")
    if region is not None and np.shape(region) != arr.shape:
        raise ValueError(f"`region` must have the volume's shape {arr.shape}, {np.shape(region)} is given.")
    # Padded here (as MONAI would, constant 0) so that window coordinates index ``region`` too.
    pads = [((r - n) // 2, r - n - (r - n) // 2) if n < r else (0, 0) for n, r in zip(arr.shape, roi)]
    inputs = torch.from_numpy(np.ascontiguousarray(np.pad(arr, pads)))[None, None]
    predictor, with_coord = run_patch, False
    if region is not None:
        predictor, with_coord = _region_runner(run_patch, np.pad(np.asarray(region, dtype=bool), pads)), True
    with torch.no_grad():
        out = sliding_window_inference(inputs, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian",
                                       padding_mode="constant", cval=0.0, with_coord=with_coord)
    inner = tuple(slice(before, before + n) for (before, _), n in zip(pads, arr.shape))
    return np.clip(torch.as_tensor(out)[0, 0].numpy()[inner].astype(np.float32), 0.0, 1.0)


def _region_runner(run_patch: PatchRunner, region: np.ndarray):
    """A MONAI ``with_coord`` predictor that runs ``run_patch`` only on the windows holding a voxel of
    ``region`` and answers 0 for the others."""

    def run(windows: torch.Tensor, coords) -> torch.Tensor:
        wanted = [i for i, c in enumerate(coords) if region[tuple(c[2:])].any()]
        out = torch.zeros_like(windows)
        if wanted:
            out[wanted] = torch.as_tensor(run_patch(windows[wanted])).to(out.dtype)
        return out

    return run


@dataclass(frozen=True)
class VolumeSegmentation:
    """What :func:`segment_volume` found, on the model grid.

    Attributes
    ----------
    candidates
        Every candidate (no operating threshold applied), most probable first.
    labels
        ``int32`` (z, y, x) map: 0 background, ``i + 1`` for ``candidates[i]``.
    lung
        The search region (``bool``); all ``True`` when the search is not restricted.
    """

    candidates: list[Candidate]
    labels: np.ndarray
    lung: np.ndarray


def segment_volume(run_patch: PatchRunner, volume01: np.ndarray, spacing_mm, *,
                   window: tuple[float, float] = WINDOW_HU, roi_size: Sequence[int] = PATCH_SIZE_VOX,
                   overlap: float = 0.25, component_threshold: float = COMPONENT_THRESHOLD,
                   min_volume_mm3: float = MIN_VOLUME_MM3, lung_search: bool = True,
                   solid_hu: float | None = SOLID_HU, context_vox: int = CONTEXT_VOX,
                   max_elongation: float | None = MAX_ELONGATION, sw_batch_size: int = 2) -> VolumeSegmentation:
    """Candidates of one preprocessed volume (``volume01``, windowed by ``window``, at ``spacing_mm``).

    ``sw_batch_size``: patches per call of ``run_patch`` (at most; the result does not depend on it).

    ``lung_search=False``, ``solid_hu=None`` and ``max_elongation=None`` give the unbounded
    components of the whole map, of any shape (the behaviour before the lung mask, the density
    bound and the shape bound; kept to measure them).
    """
    arr = np.asarray(volume01, dtype=np.float32)
    low, high = (float(v) for v in window)
    hu = low + arr * (high - low)  # exact inside the window; both HU thresholds lie inside it
    if lung_search:
        lung = lung_mask(hu, spacing_mm)
        probability = np.zeros(arr.shape, np.float32)
        if lung.any():
            box = tuple(slice(max(s.start - context_vox, 0), min(s.stop + context_vox, n))
                        for s, n in zip(ndimage.find_objects(lung.astype(np.uint8))[0], arr.shape))
            probability[box] = infer_volume(run_patch, arr[box], roi_size, overlap, sw_batch_size, region=lung[box])
    else:
        lung = np.ones(arr.shape, dtype=bool)
        probability = infer_volume(run_patch, arr, roi_size, overlap, sw_batch_size)
    found, labels = extract_candidates(probability, spacing_mm, component_threshold, min_volume_mm3,
                                       region=lung if lung_search else None,
                                       volume_hu=hu if solid_hu is not None else None,
                                       solid_hu=SOLID_HU if solid_hu is None else float(solid_hu),
                                       max_elongation=max_elongation)
    return VolumeSegmentation(candidates=found, labels=labels, lung=lung)


def detect(run_patch: PatchRunner, volume_hu: np.ndarray, spacing_mm, *, threshold: float,
           model_spacing_mm=MODEL_SPACING_MM, window: tuple[float, float] = WINDOW_HU,
           roi_size: Sequence[int] = PATCH_SIZE_VOX, overlap: float = 0.25,
           component_threshold: float = COMPONENT_THRESHOLD,
           min_volume_mm3: float = MIN_VOLUME_MM3, solid_hu: float | None = SOLID_HU,
           max_elongation: float | None = MAX_ELONGATION) -> list[Candidate]:
    """Nodule candidates of a CT volume in Hounsfield units, at or above ``threshold``.

    The volume is windowed and resampled to ``model_spacing_mm``, and segmented by
    :func:`segment_volume`; candidate centres are returned in the voxel grid (and millimetres)
    of the input volume, diameters in millimetres.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"`threshold` must be within (0, 1), {threshold!r} is given.")
    source = np.asarray(volume_hu)
    volume01 = prepare_volume(source, spacing_mm, model_spacing_mm, window)
    found = segment_volume(run_patch, volume01, model_spacing_mm, window=window, roi_size=roi_size,
                           overlap=overlap, component_threshold=component_threshold,
                           min_volume_mm3=min_volume_mm3, solid_hu=solid_hu,
                           max_elongation=max_elongation).candidates
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    out = []
    for cand in found:
        if cand.probability < threshold:
            continue
        centre = to_source_vox(np.asarray(cand.centre_vox), source.shape, volume01.shape)[0]
        out.append(Candidate(centre_vox=tuple(float(v) for v in centre),
                             centre_mm=tuple(float(v) for v in centre * spacing),
                             diameter_mm=cand.diameter_mm, probability=cand.probability,
                             volume_mm3=cand.volume_mm3))
    return out
