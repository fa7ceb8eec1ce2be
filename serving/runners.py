"""How a model deployment turns a batch of request items into engine calls and per-item replies.

A runner is chosen by model name.  Items arrive already preprocessed by the gateway or the HTTP
ingress (decoded, resampled, windowed): the batched hot path only stacks arrays, runs the engine
once per batch and splits the outputs, with no per-pixel Python work.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from models.registry import ModelManifest
from serving.engines import Engine


class StackRunner:
    """Fixed-shape items (an image ``(C,S,S)`` or a vitals window ``(T,F)``): one engine call per batch."""

    def __init__(self, engine: Engine, manifest: ModelManifest) -> None:
        self.engine, self.manifest = engine, manifest
        self.input_name = engine.input_names[0]

    def run(self, items: list[np.ndarray]) -> list[dict[str, Any]]:
        shapes = {np.shape(i) for i in items}
        if len(shapes) != 1:
            raise ValueError(f"items in one batch must share a shape, {sorted(shapes)} are given.")
        batch = np.stack(items).astype(np.float32, copy=False)
        outputs = self.engine.run({self.input_name: batch})
        return [{name: out[i] for name, out in outputs.items()} for i in range(len(items))]


class VolumeRunner:
    """Whole volumes (``(Z,Y,X)`` in [0, 1]): sliding-window inference per volume with the engine
    running batches of fixed-size patches, then connected-component post-processing.

    ``infer`` and ``postprocess`` come from the model's package (``models.<name>``) so that training
    evaluation and serving share them.
    """

    def __init__(self, engine: Engine, manifest: ModelManifest,
                 infer: Callable[..., np.ndarray], postprocess: Callable[..., Any]) -> None:
        self.engine, self.manifest = engine, manifest
        self.infer, self.postprocess = infer, postprocess
        self.input_name = engine.input_names[0]

    def _run_patches(self, patches: np.ndarray) -> np.ndarray:
        return self.engine.run({self.input_name: patches.astype(np.float32, copy=False)})[
            self.engine.output_names[0]]

    def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        replies = []
        for item in items:
            probability = self.infer(self._run_patches, item["volume"], self.manifest.raw)
            replies.append(self.postprocess(probability, item.get("spacing_mm"), self.manifest.raw))
        return replies


#: Model name -> runner kind. Unknown models default to ``stack``.
RUNNER_KINDS = {"tb": "stack", "derm": "stack", "vitals": "stack", "nodule": "volume"}


def make_runner(model: str, engine: Engine, manifest: ModelManifest):
    if RUNNER_KINDS.get(model, "stack") == "stack":
        return StackRunner(engine, manifest)
    from importlib import import_module

    package = import_module(f"models.{model}.serving")
    return VolumeRunner(engine, manifest, package.infer, package.postprocess)
