"""What every inference engine implements, and the batch helpers the engines share.

An engine takes a batch as ``{input name: array}`` and returns ``{output name: array}`` with the
batch on axis 0 (:func:`check_batch`).  Fixed-shape models are run once per batch-size bucket at
start (:func:`batch_buckets`, :func:`warmup_inputs`).  The engines are
:class:`serving.inference.engine_onnx.OnnxEngine` and :class:`serving.inference.engine_torch.TorchEngine`;
:func:`serving.inference.engines.create_engine` chooses between them.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


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
