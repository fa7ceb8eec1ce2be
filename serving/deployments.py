"""Ray Serve model deployments. One class per model; requests carry whole images.

:class:`ImageClassifier` serves a registered 2D image model (``tb`` today) through an
:class:`~serving.engines.OnnxEngine`, batching concurrent requests with ``@serve.batch``.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from ray import serve

from models.registry import ModelRegistry
from serving.engines import OnnxEngine

log = logging.getLogger("medgate.serving")


@serve.deployment(name="tb", ray_actor_options={"num_cpus": 1})
class ImageClassifier:
    """A registered ONNX image model with dynamic batching.

    Each request is one preprocessed image ``(1, S, S)`` float32; the reply holds the probability
    and the class-activation heatmap of that image.
    """

    def __init__(self, model: str, version: str | None = None, *, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.01, device: str = "auto") -> None:
        self.manifest = ModelRegistry().get(model, version)
        self.manifest.verify()
        self.engine = OnnxEngine(self.manifest.path, device=device)
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)
        size = self.manifest.input_size_px
        self.engine.run(np.zeros((1, 1, size, size), np.float32))  # warm-up before traffic
        self.batch_sizes: list[int] = []
        log.info("model %s@%s ready on %s", self.manifest.name, self.manifest.version,
                 self.engine.device)

    def info(self) -> dict:
        m = self.manifest
        return {"name": m.name, "version": m.version, "engine": "onnxruntime",
                "device": self.engine.device, "providers": self.engine.providers,
                "input_size_px": m.input_size_px, "threshold": m.threshold,
                "finding": {"value": m.finding.value, "scheme": m.finding.scheme,
                            "meaning": m.finding.meaning},
                "intended_use": m.intended_use}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict(self, images: list[np.ndarray]) -> list[dict]:
        start = time.perf_counter()
        batch = np.stack(images).astype(np.float32, copy=False)
        out = self.engine.run(batch)
        self.batch_sizes.append(len(images))
        elapsed_ms = (time.perf_counter() - start) * 1000
        probs, heatmaps = out["probability"].reshape(len(images)), out["heatmap"]
        return [{"probability": float(p), "heatmap": h[0], "batch_size": len(images),
                 "inference_ms": elapsed_ms} for p, h in zip(probs, heatmaps)]

    async def __call__(self, image: np.ndarray) -> dict:
        return await self.predict(image)
