"""How a model deployment turns a batch of request items into engine calls and per-item replies.

A runner is chosen by the model's serving spec (``runner`` in its folder's ``serving.json``,
:mod:`models.spec`).  Items arrive already preprocessed by the gateway or the HTTP
ingress (decoded, resampled, windowed): the batched hot path only stacks arrays, runs the engine
once per batch and splits the outputs, with no per-pixel Python work.  A version that carries an
out-of-distribution statistic has its features scored per batch (:mod:`serving.inference.ood`):
each reply gets ``ood`` in place of ``features``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from models.registry import ModelManifest
from models.spec import RunnerKind
from serving.inference.engine_base import Engine
from serving.inference.ood import OodGuard


class StackRunner:
    """Fixed-shape items: one sample (an image ``(C,S,S)``, a vitals window ``(T,F)``) or a whole batch
    of samples (``(N,T,F)``: many beds in one request). Items are joined along the batch axis, run in
    as few engine calls as the engine's maximum batch allows, and the outputs split back per item."""

    def __init__(self, engine: Engine, manifest: ModelManifest) -> None:
        self.engine, self.manifest = engine, manifest
        self.input_name = engine.input_names[0]
        self.rank = len(engine.input_shapes[0])
        self.max_batch = engine.buckets[-1] if getattr(engine, "device", "cpu") == "cuda" else None
        self.ood = OodGuard.of(manifest, list(engine.output_names))

    def run(self, items: list[np.ndarray]) -> list[dict[str, Any]]:
        arrays = [np.asarray(item, dtype=np.float32) for item in items]
        if any(a.ndim not in (self.rank - 1, self.rank) for a in arrays):
            raise ValueError(f"items must have {self.rank - 1} dims (one sample) or {self.rank} (a batch), "
                             f"shapes {[a.shape for a in arrays]} are given.")
        batches = [a if a.ndim == self.rank else a[None] for a in arrays]
        shapes = {b.shape[1:] for b in batches}
        if len(shapes) != 1:
            raise ValueError(f"items in one batch must share a shape, {sorted(shapes)} are given.")
        joined = np.concatenate(batches)
        step = self.max_batch or len(joined)
        parts = [self.engine.run({self.input_name: joined[i:i + step]}) for i in range(0, len(joined), step)]
        outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        verdicts = self.ood.verdicts(outputs) if self.ood is not None else None
        replies, start = [], 0
        for array, batch in zip(arrays, batches):
            end = start + len(batch)
            single = array.ndim == self.rank - 1
            reply = {name: out[start] if single else out[start:end] for name, out in outputs.items()}
            if self.ood is not None:
                reply["ood"] = None if verdicts is None else verdicts[start] if single else verdicts[start:end]
            replies.append(reply)
            start = end
        return replies


class VolumeRunner:
    """Whole volumes (``{"volume": (Z,Y,X) HU, "spacing_mm": ...}``), one at a time: the model package's
    ``serve_volume`` does sliding-window inference with the engine running batches of fixed-size
    patches, then post-processing (shared with training evaluation).  A version with an
    out-of-distribution statistic has the features of the patches run scored, and its reply gets
    one ``ood`` verdict for the volume (:meth:`serving.inference.ood.OodGuard.volume_verdict`).

    On the CPU, torch (resampling, sliding-window blending) gets the engine's threads: a Ray actor
    with ``num_cpus: 1`` starts with one (``OMP_NUM_THREADS=1``)."""

    def __init__(self, engine: Engine, manifest: ModelManifest, serve_volume: Callable[..., dict]) -> None:
        self.engine, self.manifest, self.serve_volume = engine, manifest, serve_volume
        threads = getattr(engine, "intra_op_threads", None)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.input_name, self.output_name = engine.input_names[0], engine.output_names[0]
        self.max_batch = engine.buckets[-1] if getattr(engine, "device", "cpu") == "cuda" else None
        self.ood = OodGuard.of(manifest, list(engine.output_names))
        self._features: list[np.ndarray] | None = None

    def _run_patches(self, patches: np.ndarray) -> np.ndarray:
        patches = patches.astype(np.float32, copy=False)
        step = self.max_batch or len(patches)
        outputs = [self.engine.run({self.input_name: patches[i:i + step]}) for i in range(0, len(patches), step)]
        if self._features is not None:
            self._features.extend(out[self.ood.output] for out in outputs)
        return np.concatenate([out[self.output_name] for out in outputs])

    def _serve(self, item: dict[str, Any]) -> dict[str, Any]:
        guarded = self.ood is not None and self.ood.available
        self._features = [] if guarded else None
        try:
            reply = self.serve_volume(self._run_patches, item["volume"], item.get("spacing_mm"), self.manifest.raw)
            if self.ood is not None:
                reply["ood"] = self.ood.volume_verdict(self._features)
        finally:
            self._features = None
        return reply

    def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._serve(item) for item in items]


def make_runner(engine: Engine, manifest: ModelManifest) -> StackRunner | VolumeRunner:
    """The runner the model's serving spec names (``manifest.serving.runner``): ``stack``, or
    ``volume`` calling the spec's ``entry``; :class:`ValueError` naming the model when the spec is bad."""
    try:
        spec = manifest.serving
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{manifest.name} {manifest.version} cannot be served: {exc}") from None
    if spec.runner is RunnerKind.VOLUME:
        return VolumeRunner(engine, manifest, spec.function("entry"))
    return StackRunner(engine, manifest)
