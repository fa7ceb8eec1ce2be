"""The ``tb`` model as the peer servers run it: the registry's ONNX file on onnxruntime's CPU
provider, with the session options of medgate's engine (:mod:`serving.inference.engine_onnx`), and
an upload turned into the model input by medgate's own code (:func:`serving.http.uploads.decode`,
:func:`serving.http.uploads.model_item`: PNG -> grayscale -> ``models.transforms.to_model_input``).

It needs numpy, Pillow, onnxruntime and torch (the preprocessing resizes with torch), nothing of Ray
or FastAPI, so that it runs in a peer's own virtual environment with ``PYTHONPATH`` = the repository.
"""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from benchmarks.peers import VERSION_ENV
from models.registry import ModelRegistry
from serving.http.uploads import decode, model_item

MODEL = "tb"
#: The output the peers answer with (``network_data_format.outputs`` of the model's metadata).
OUTPUT = "probability"
#: The largest image decoded, as medgate's default ``http.max_image_pixels`` (serving.config).
MAX_IMAGE_PIXELS = 50_000_000


class TbModel:
    """One CPU session of the ``tb`` version named by :data:`benchmarks.peers.VERSION_ENV` (else the
    latest), its file's SHA-256 checked against its metadata first, as medgate does."""

    def __init__(self, version: str | None = None) -> None:
        self.manifest = ModelRegistry().get(MODEL, version or os.environ.get(VERSION_ENV) or None)
        self.manifest.verify()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.manifest.path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def item(self, upload: bytes) -> np.ndarray:
        """One model input ``(1, S, S)`` from an uploaded image file, as medgate's ingress makes it."""
        return model_item(self.manifest, decode(upload, MAX_IMAGE_PIXELS))

    def probabilities(self, items: list[np.ndarray]) -> list[float]:
        """The probability of each item, from one engine call on the stacked batch."""
        if not items:
            return []
        batch = np.stack([np.asarray(item, dtype=np.float32) for item in items])
        (out,) = self.session.run([OUTPUT], {self.input_name: batch})
        if len(out) != len(items):
            raise RuntimeError(f"the engine answered {len(out)} probabilities for a batch of {len(items)}")
        return [float(p) for p in np.asarray(out).reshape(len(items), -1)[:, 0]]
