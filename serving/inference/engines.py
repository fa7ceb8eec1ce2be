"""The choice of inference engine, behind one small interface (:mod:`serving.inference.engine_base`).

An engine takes a batch as ``{input name: array}`` and returns ``{output name: array}`` with the
batch on axis 0 (checked).  :func:`create_engine` picks one from configuration and from what the
machine has, and logs the choice:

- ``onnxruntime`` (:class:`serving.inference.engine_onnx.OnnxEngine`): TensorRT EP with an engine cache when
  available and asked for, else CUDA EP with IO binding (and CUDA graphs per batch-size bucket for
  fixed-shape models), else the CPU EP.
- ``torch`` (:class:`serving.inference.engine_torch.TorchEngine`): a TorchScript file run eagerly, or replayed
  from CUDA graphs per batch-size bucket on a GPU.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from serving.inference.engine_base import Engine
from serving.inference.engine_onnx import OnnxEngine

log = logging.getLogger("medgate.engine")

ENGINES = ("auto", "onnxruntime", "torch")
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("fp32", "fp16")


def gpu_visible() -> bool:
    """True when this process may use a CUDA GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch or a broken CUDA install means "no GPU"
        return False


def create_engine(model_dir: Path, onnx_file: str = "model.onnx", *, engine: str = "auto",
                  device: str = "auto", precision: str = "fp32", max_batch_size: int = 16,
                  fixed_shape: bool = True, cache_dir: Path | None = None,
                  intra_op_threads: int | None = None) -> Engine:
    """The engine for the model in ``model_dir`` (a registry version folder).

    ``engine="auto"`` takes onnxruntime (always present); ``torch`` needs ``model.ts``
    (TorchScript) in the folder. ``device="auto"`` means CUDA when a GPU is visible.
    ``precision="fp16"`` is honoured only where the engine supports it (torch on CUDA; an ONNX
    model exported in fp16) and the model card allows it.
    """
    for arg, value, allowed in (("engine", engine, ENGINES), ("device", device, DEVICES),
                                ("precision", precision, PRECISIONS)):
        if value not in allowed:
            raise ValueError(f"`{arg}` must be one of {allowed}, {value!r} is given.")
    use_cuda = device == "cuda" or (device == "auto" and gpu_visible())
    model_dir = Path(model_dir)
    if engine == "torch":
        from serving.inference.engine_torch import TorchEngine  # imports torch: only when it is chosen

        chosen: Engine = TorchEngine(model_dir / "model.ts", cuda=use_cuda, precision=precision,
                                     max_batch_size=max_batch_size, cuda_graphs=fixed_shape)
    else:
        chosen = OnnxEngine(model_dir / onnx_file, cuda=use_cuda, max_batch_size=max_batch_size,
                            cuda_graphs=fixed_shape, cache_dir=cache_dir, intra_op_threads=intra_op_threads)
    log.info("engine for %s@%s: %s (%s) on %s%s", model_dir.parent.name, model_dir.name, chosen.name, onnx_file,
             chosen.device, f", {chosen.intra_op_threads} threads" if getattr(chosen, "intra_op_threads", None) else "")
    return chosen
