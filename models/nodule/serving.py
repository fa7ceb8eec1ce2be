"""Serving entry for the nodule model: one whole CT volume in, candidates and a label mask out.

Used by :class:`serving.inference.runners.VolumeRunner`; ``run_patches`` runs the exported patch network on a
batch of ``(N, 1, 64, 64, 64)`` patches (onnxruntime or torch engine). All parameters come from the
registry metadata (``postprocessing``; the constants of :mod:`models.nodule.postprocess` where a
version's metadata predates them), and the path is :func:`models.nodule.inference.segment_volume`,
the one the training evaluation measures: candidates only inside the lung mask, bounded by density,
vessel-shaped segments dropped (``max_elongation``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.nodule.inference import CONTEXT_VOX, segment_volume
from models.nodule.postprocess import COMPONENT_THRESHOLD, MAX_ELONGATION, MIN_VOLUME_MM3, SOLID_HU
from models.nodule.preprocess import prepare_volume, to_source_vox

PatchBatchRunner = Callable[[np.ndarray], np.ndarray]
#: Sliding windows per engine call when serving (the results do not depend on it; fewer calls cost less
#: Python and MONAI bookkeeping, and onnxruntime's CPU time per patch is the same at 1, 2 or 4).
SERVING_SW_BATCH = 4


def _patch_runner(run_patches: PatchBatchRunner) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda patches: torch.from_numpy(run_patches(patches.cpu().numpy()))


def _segment(run_patches, volume01, model_spacing, window, roi_size, post: dict[str, Any]):
    solid_hu = post.get("solid_hu", SOLID_HU)
    max_elongation = post.get("max_elongation", MAX_ELONGATION)
    result = segment_volume(_patch_runner(run_patches), volume01, model_spacing, window=window, roi_size=roi_size,
                            overlap=float(post.get("sliding_window_overlap", 0.25)),
                            component_threshold=float(post.get("component_threshold", COMPONENT_THRESHOLD)),
                            min_volume_mm3=float(post.get("min_volume_mm3", MIN_VOLUME_MM3)),
                            lung_search=post.get("search_region", "lung_mask") == "lung_mask",
                            solid_hu=None if solid_hu is None else float(solid_hu),
                            context_vox=int(post.get("context_vox", CONTEXT_VOX)),
                            max_elongation=None if max_elongation is None else float(max_elongation),
                            sw_batch_size=int(post.get("sw_batch_size", SERVING_SW_BATCH)))
    return result.candidates, result.labels


def serve_volume(run_patches: PatchBatchRunner, volume_hu: np.ndarray, spacing_mm, metadata: dict[str, Any]
                 ) -> dict[str, Any]:
    """Candidates at or above the operating threshold, and their labels in the source voxel grid.

    Returns ``{"mask": int32 (Z, Y, X) labels 1..k in the source grid, "candidates": [{"label",
    "probability", "centre_vox", "centre_mm", "diameter_mm", "volume_mm3"}, ...], "max_probability":
    the highest probability of any component, kept or not (0 when there is none)}``.
    """
    image = metadata["network_data_format"]["inputs"]["image"]
    model_spacing, window = image["spacing_mm"], tuple(image["window_hu"])
    post = metadata.get("postprocessing", {})
    threshold = float(metadata["operating_point"]["threshold"])
    source = np.asarray(volume_hu, dtype=np.float32)
    spacing = np.asarray(spacing_mm if spacing_mm is not None else model_spacing, dtype=np.float64)
    volume01 = prepare_volume(source, spacing, model_spacing, window)
    found, labels = _segment(run_patches, volume01, model_spacing, window, image["spatial_shape"], post)
    kept = [(i + 1, c) for i, c in enumerate(found) if c.probability >= threshold]
    relabel = np.zeros(len(found) + 1, np.int32)
    for new, (old, _) in enumerate(kept, start=1):
        relabel[old] = new
    labels = relabel[labels]
    if labels.shape != source.shape and not kept:  # no candidate: nothing to resize
        labels = np.zeros(source.shape, np.int32)
    elif labels.shape != source.shape:  # nearest-neighbour back to the source grid
        labels = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=source.shape,
                               mode="nearest")[0, 0].numpy().astype(np.int32)
    candidates = []
    for new, (_, cand) in enumerate(kept, start=1):
        centre = to_source_vox(np.asarray(cand.centre_vox), source.shape, volume01.shape)[0]
        candidates.append({"label": new, "probability": float(cand.probability),
                           "centre_vox": [float(v) for v in centre],
                           "centre_mm": [float(v) for v in centre * spacing],
                           "diameter_mm": float(cand.diameter_mm), "volume_mm3": float(cand.volume_mm3)})
    return {"mask": labels, "candidates": candidates,
            "max_probability": max((float(c.probability) for c in found), default=0.0)}
