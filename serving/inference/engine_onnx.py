"""onnxruntime engine: TensorRT EP -> CUDA EP (IO binding, CUDA graphs) -> CPU EP.

On a GPU, a batch is padded up to the next batch-size bucket (powers of two up to the maximum) so
every run has one of a few fixed shapes; with ``cuda_graphs`` each bucket's run is captured once as
a CUDA graph (``enable_cuda_graph`` + ``gpu_graph_id`` run option, onnxruntime >= 1.17) and later
runs only copy the input into the bound device buffer and replay the graph: batch-1 latency becomes
launch-free (see the GPU notes: ~1.9 ms vs 3.4 ms for DenseNet121 on an H100).
On the CPU provider the session is run directly with the batch as given, sequentially, with
``intra_op_threads`` threads (default: every CPU this process may run on, :func:`cpu_threads`: not
Ray's ``num_cpus`` share, which is a placement count), threads that sleep between runs (a
volume model does Python and torch work between patch batches, on the same cores).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from serving.inference.engine_base import batch_buckets, check_batch, warmup_inputs

log = logging.getLogger("medgate.engine")

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Session config entry: intra-op threads sleep when idle instead of spinning.
NO_SPINNING = ("session.intra_op.allow_spinning", "0")
#: ONNX tensor element types this engine binds on the device.
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


class OnnxEngine:
    """One onnxruntime session (per batch bucket when CUDA graphs are on)."""

    def __init__(self, path: Path, *, cuda: bool = False, max_batch_size: int = 16,
                 cuda_graphs: bool = True, cache_dir: Path | None = None, use_tensorrt: bool = False,
                 intra_op_threads: int | None = None) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        available = ort.get_available_providers()
        providers: list = [CPU]
        if cuda and CUDA in available:
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            providers = [(CUDA, {"enable_cuda_graph": "1" if cuda_graphs else "0"}), CPU]
            if use_tensorrt and TRT in available:
                cache = Path(cache_dir or self.path.parent / "trt-cache")
                cache.mkdir(parents=True, exist_ok=True)
                providers.insert(0, (TRT, {"trt_engine_cache_enable": "1",
                                           "trt_engine_cache_path": str(cache), "trt_fp16_enable": "0"}))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's intra-op threads spin between runs by default: on a CPU shared with the HTTP
        # ingress and the gateway, that spinning took 3.7 of the 7.8 ms of CPU the tb replica spent
        # per HTTP request (benchmarks/serve_overhead.py, 2 cores); idle threads sleep instead.
        options.add_session_config_entry(NO_SPINNING[0], NO_SPINNING[1])
        self.intra_op_threads: int | None = None
        if providers == [CPU]:
            if intra_op_threads is not None and intra_op_threads < 1:
                raise ValueError(f"`intra_op_threads` must be positive or None, {intra_op_threads!r} is given.")
            self.intra_op_threads = int(intra_op_threads or cpu_threads())
            options.intra_op_num_threads = self.intra_op_threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] in (CUDA, TRT) else "cpu"
        self.name = f"onnxruntime-{ort.__version__}:{self.providers[0]}"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_shapes = [list(i.shape) for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.cuda_graphs = cuda_graphs and self.device == "cuda"
        self.buckets = batch_buckets(max_batch_size)
        # bucket -> (binding, input OrtValues, output OrtValues): fixed device buffers, as CUDA
        # graph replay requires the same addresses every run. Non-batch dims must be static.
        self._bound: dict[int, tuple] = {}

    def warmup(self) -> None:
        shapes = [i.shape for i in self.session.get_inputs()]
        for bucket in (self.buckets if self.device == "cuda" else self.buckets[:1]):
            zeros = warmup_inputs(self.input_names, shapes, bucket)
            if zeros is None:
                return
            self.run(zeros)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"`inputs` lacks {sorted(missing)}; the model takes {self.input_names}.")
        if self.device == "cpu":
            outs = self.session.run(self.output_names, {k: inputs[k] for k in self.input_names})
            return check_batch(inputs, dict(zip(self.output_names, outs)))
        n = next(iter(inputs.values())).shape[0]
        if n > self.buckets[-1]:
            raise ValueError(f"batch of {n} exceeds max_batch_size {self.buckets[-1]}")
        bucket = next(b for b in self.buckets if b >= n)
        padded = {k: _pad(np.ascontiguousarray(inputs[k]), bucket) for k in self.input_names}
        outs = self._run_bound(bucket, padded)
        return check_batch(inputs, {k: v[:n] for k, v in outs.items()})

    def _run_bound(self, bucket: int, padded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ort = self._ort
        if bucket not in self._bound:
            binding = self.session.io_binding()
            in_values = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in padded.items()}
            for k, v in in_values.items():
                binding.bind_ortvalue_input(k, v)
            out_values = {o.name: ort.OrtValue.ortvalue_from_shape_and_type(
                [bucket] + [int(d) for d in o.shape[1:]], _NUMPY_TYPES[o.type], "cuda", 0)
                for o in self.session.get_outputs()}
            for k, v in out_values.items():
                binding.bind_ortvalue_output(k, v)
            self._bound[bucket] = (binding, in_values, out_values)
        else:
            binding, in_values, out_values = self._bound[bucket]
            for k, v in padded.items():
                in_values[k].update_inplace(v)
        run_options = ort.RunOptions()
        if self.cuda_graphs:
            run_options.add_run_config_entry("gpu_graph_id", str(self.buckets.index(bucket) + 1))
        self.session.run_with_iobinding(binding, run_options)
        return {k: v.numpy() for k, v in out_values.items()}


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size:
        return array
    pad = np.zeros((size - array.shape[0],) + array.shape[1:], dtype=array.dtype)
    return np.concatenate([array, pad])
