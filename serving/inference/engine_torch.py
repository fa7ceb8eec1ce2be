"""torch engine: a TorchScript model run eagerly, or from CUDA graphs on a GPU.

On CUDA each batch-size bucket is captured once with ``torch.cuda.graphs`` into static input and
output tensors (after warm-up iterations on a side stream, as the PyTorch docs require); a call
copies the batch into the static input, replays the graph and copies the outputs out.
fp16 runs the module in half precision on CUDA only (the CPU path stays fp32).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from serving.inference.engine_base import batch_buckets, check_batch, warmup_inputs


class TorchEngine:
    """A TorchScript module with named inputs/outputs.

    The module's ``forward`` takes the inputs positionally in ``input_names`` order and returns a
    tensor or a tuple of tensors in ``output_names`` order; the names are stored beside the module
    as TorchScript extra files (``input_names``, ``output_names``: comma separated;
    ``input_shapes``: JSON list of shapes with ``null`` for dynamic axes), see
    :func:`training.torchscript.save_torchscript`.
    """

    def __init__(self, path: Path, *, cuda: bool = False, precision: str = "fp32",
                 max_batch_size: int = 16, cuda_graphs: bool = True) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"TorchScript model {path} does not exist (export one with `medgate export`)")
        extra = {"input_names": "", "output_names": "", "input_shapes": ""}
        self.device = "cuda" if cuda and torch.cuda.is_available() else "cpu"
        self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra).eval()
        self.input_names = extra["input_names"].decode().split(",") if extra["input_names"] else ["input"]
        self.output_names = extra["output_names"].decode().split(",") if extra["output_names"] else ["output"]
        self.input_shapes = json.loads(extra["input_shapes"] or "[]")
        self.dtype = torch.float16 if precision == "fp16" and self.device == "cuda" else torch.float32
        if self.dtype == torch.float16:
            self.module = self.module.half()
        self.cuda_graphs = cuda_graphs and self.device == "cuda"
        self.buckets = batch_buckets(max_batch_size)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple[torch.Tensor, ...]]] = {}
        self.name = f"torch-{torch.__version__}:{'cuda-graph' if self.cuda_graphs else 'eager'}"

    def warmup(self) -> None:
        for bucket in (self.buckets if self.cuda_graphs else self.buckets[:1]):
            zeros = warmup_inputs(self.input_names, self.input_shapes, bucket) if self.input_shapes else None
            if zeros is None:
                return
            self.run(zeros)

    def _forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*tensors)
        return out if isinstance(out, tuple) else (out,)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"`inputs` lacks {sorted(missing)}; the model takes {self.input_names}.")
        arrays = [np.ascontiguousarray(inputs[k]) for k in self.input_names]
        n = arrays[0].shape[0]
        with torch.inference_mode():
            if not self.cuda_graphs:
                tensors = [torch.from_numpy(a).to(self.device, self.dtype) for a in arrays]
                outs = self._forward(*tensors)
            else:
                outs = self._replay(arrays, n)
        result = {k: o[:n].float().cpu().numpy() for k, o in zip(self.output_names, outs)}
        return check_batch(inputs, result)

    def _replay(self, arrays: list[np.ndarray], n: int) -> tuple[torch.Tensor, ...]:
        if n > self.buckets[-1]:
            raise ValueError(f"batch of {n} exceeds max_batch_size {self.buckets[-1]}")
        bucket = next(b for b in self.buckets if b >= n)
        if bucket not in self._graphs:
            static_in = [torch.zeros((bucket,) + a.shape[1:], device="cuda", dtype=self.dtype) for a in arrays]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._forward(*static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(*static_in)
            self._graphs[bucket] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[bucket]
        for buffer, array in zip(static_in, arrays):
            buffer[:n].copy_(torch.from_numpy(array), non_blocking=False)
            buffer[n:].zero_()
        graph.replay()
        return static_out
