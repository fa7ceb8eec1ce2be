"""Inference engines behind one small interface.

:class:`OnnxEngine` runs an ONNX model with onnxruntime, choosing the CUDA execution provider
when a GPU is visible to this process and falling back to the CPU provider; the choice is logged.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("medgate.engine")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch or a broken CUDA install means "no GPU"
        return False


class OnnxEngine:
    """An onnxruntime session with named inputs and outputs.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    device
        ``"auto"`` (CUDA when a GPU is visible, else CPU), ``"cuda"`` or ``"cpu"``.
    """

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        import onnxruntime as ort

        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"`device` must be 'auto', 'cuda' or 'cpu', {device!r} is given.")
        want_cuda = device == "cuda" or (device == "auto" and _gpu_visible())
        providers = [CPU]
        if want_cuda and CUDA in ort.get_available_providers():
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            providers = [CUDA, CPU]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        log.info("onnxruntime %s session for %s on %s (providers %s)", ort.__version__,
                 Path(path).name, self.device, self.providers)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by name. Batch in = batch out is checked."""
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        for name, out in zip(self.output_names, outputs):
            if out.shape[0] != batch.shape[0]:
                raise RuntimeError(f"output {name!r} has batch {out.shape[0]}, input had {batch.shape[0]}")
        return dict(zip(self.output_names, outputs))
