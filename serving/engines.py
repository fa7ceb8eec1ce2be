"""Inference engines behind one small interface, and the choice between them.

An engine takes a batch as ``{input name: array}`` and returns ``{output name: array}`` with the
batch on axis 0 (checked).  :func:`create_engine` picks one from configuration and from what the
machine has, and logs the choice:

- ``onnxruntime`` (:class:`serving.engine_onnx.OnnxEngine`): TensorRT EP with an engine cache when
  available and asked for, else CUDA EP with IO binding (and CUDA graphs per batch-size bucket for
  fixed-shape models), else the CPU EP.
- ``torch`` (:class:`serving.engine_torch.TorchEngine`): a TorchScript file run eagerly, or replayed
  from CUDA graphs per batch-size bucket on a GPU.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger("medgate.engine")

ENGINES = ("auto", "onnxruntime", "torch")
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("fp32", "fp16")


class Engine(Protocol):
    """What a model deployment needs from an engine."""

    name: str
    device: str
    input_names: list[str]
    input_shapes: list[list]  # batch axis first; non-int entries are dynamic
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...

    def warmup(self) -> None:
        """Run every batch-size bucket once (fixed-shape models), so no request pays for set-up."""
        ...


def warmup_inputs(names: list[str], shapes: list[list], batch_size: int) -> dict[str, np.ndarray] | None:
    """Zero inputs of ``batch_size`` for static ``shapes`` (batch axis first), or None if a
    non-batch dimension is dynamic (e.g. a volume model's patch is fixed but a volume is not)."""
    if any(not isinstance(d, int) for shape in shapes for d in shape[1:]):
        return None
    return {n: np.zeros([batch_size] + list(s[1:]), np.float32) for n, s in zip(names, shapes)}


def gpu_visible() -> bool:
    """True when this process may use a CUDA GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch or a broken CUDA install means "no GPU"
        return False


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to and including ``max_batch_size``: the shapes captured as CUDA graphs."""
    if max_batch_size < 1:
        raise ValueError(f"`max_batch_size` must be positive, {max_batch_size} is given.")
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return tuple(sizes + [max_batch_size])


def check_batch(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raise unless every output keeps the batch size of the inputs."""
    n = next(iter(inputs.values())).shape[0]
    for name, out in outputs.items():
        if out.shape[0] != n:
            raise RuntimeError(f"output {name!r} has batch {out.shape[0]}, the input had {n}")
    return outputs


def create_engine(model_dir: Path, onnx_file: str = "model.onnx", *, engine: str = "auto",
                  device: str = "auto", precision: str = "fp32", max_batch_size: int = 16,
                  fixed_shape: bool = True, cache_dir: Path | None = None) -> Engine:
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
        from serving.engine_torch import TorchEngine

        chosen: Engine = TorchEngine(model_dir / "model.ts", cuda=use_cuda, precision=precision,
                                     max_batch_size=max_batch_size, cuda_graphs=fixed_shape)
    else:
        from serving.engine_onnx import OnnxEngine

        chosen = OnnxEngine(model_dir / onnx_file, cuda=use_cuda, max_batch_size=max_batch_size,
                            cuda_graphs=fixed_shape, cache_dir=cache_dir)
    log.info("engine for %s@%s: %s on %s", model_dir.parent.name, model_dir.name, chosen.name,
             chosen.device)
    return chosen
