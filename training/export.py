"""ONNX export of a task's inference module, with an onnxruntime parity check against torch.

The module of :meth:`Task.export_spec` is traced by torch's TorchScript-based exporter
(``dynamo=False``; no onnxscript needed) at opset 17, with axis 0 of every input and output
dynamic plus the spec's ``extra_dynamic_axes``.  The file is then run by onnxruntime on the CPU
execution provider for the example inputs and for real validation items, and every output is
compared with torch's.

Relative error of an output is ``max |onnx - torch| / max(max |torch|, 1e-3)``: the largest
absolute difference scaled by the output's largest magnitude (floored at 1e-3 so that outputs
that are all near zero are judged in absolute terms).  It is robust to single elements near zero,
where an element-wise ratio would explode.  An output above ``tolerance`` (1e-4 for float32) is
refused with an error naming it, and no file is left behind.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from training.tasks.base import ExportSpec

OPSET = 17
TOLERANCE = 1e-4
ABS_FLOOR = 1e-3


class ExportParityError(RuntimeError):
    """The exported ONNX model disagrees with torch beyond the tolerance."""


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max(max |expected|, 1e-3)``; see the module docstring."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    return float(np.abs(actual - expected).max() / max(float(np.abs(expected).max()), ABS_FLOOR))


def onnx_bytes(spec: ExportSpec) -> bytes:
    """Serialise ``spec.module`` to ONNX (opset 17, dynamic batch axis) and check the graph."""
    import onnx

    names = [*spec.input_names, *spec.output_names]
    unknown = sorted(set(spec.extra_dynamic_axes) - set(names))
    if unknown:
        raise ValueError(f"`extra_dynamic_axes` names unknown inputs/outputs {unknown}; known: {names}.")
    if len(spec.example_inputs) != len(spec.input_names):
        raise ValueError(f"`input_names` must name the {len(spec.example_inputs)} example inputs, "
                         f"{spec.input_names} is given.")
    dynamic = {name: {0: "batch", **spec.extra_dynamic_axes.get(name, {})} for name in names}
    spec.module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the TorchScript exporter
        torch.onnx.export(spec.module, tuple(spec.example_inputs), buffer, dynamo=False, opset_version=OPSET,
                          input_names=list(spec.input_names), output_names=list(spec.output_names),
                          dynamic_axes=dynamic)
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def parity(spec: ExportSpec, model: bytes, input_sets: Sequence[Sequence[torch.Tensor]],
           tolerance: float = TOLERANCE) -> dict[str, float]:
    """Largest relative error per output over ``input_sets``; raise :class:`ExportParityError` above ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    module = spec.module.eval()
    worst = {name: 0.0 for name in spec.output_names}
    for inputs in input_sets:
        cpu_inputs = [t.detach().cpu() for t in inputs]
        feed = {name: t.numpy() for name, t in zip(spec.input_names, cpu_inputs)}
        got = session.run(list(spec.output_names), feed)
        device = next(module.parameters(), torch.empty(0)).device
        with torch.no_grad():
            want = module(*[t.to(device) for t in cpu_inputs])
        want = (want,) if torch.is_tensor(want) else tuple(want)
        for name, a, b in zip(spec.output_names, got, want):
            worst[name] = max(worst[name], relative_error(a, b.float().cpu().numpy()))
    for name, err in worst.items():
        if not err <= tolerance:
            raise ExportParityError(f"ONNX output {name!r} differs from torch by relative error {err:.2e}, "
                                    f"more than {tolerance:.0e}.")
    return worst


def export_onnx(spec: ExportSpec, path: Path, check_inputs: Sequence[Sequence[torch.Tensor]] = (),
                tolerance: float = TOLERANCE) -> dict[str, float]:
    """Export, check parity on the example plus ``check_inputs``, and only then write ``path``.

    Returns
    -------
    dict
        Largest relative error per output name.
    """
    data = onnx_bytes(spec)
    errors = parity(spec, data, [spec.example_inputs, *check_inputs], tolerance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return errors
