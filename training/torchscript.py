"""TorchScript export for the torch serving engine (:class:`serving.inference.engine_torch.TorchEngine`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from training.tasks.base import ExportSpec

#: File name of the TorchScript export in a registry version folder (read by the torch engine).
TORCHSCRIPT_NAME = "model.ts"


def save_torchscript(spec: ExportSpec, path: Path) -> Path:
    """Trace ``spec.module`` on its example inputs and save it with its I/O names and shapes."""
    module = spec.module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, spec.example_inputs, check_trace=False)
    shapes = [[None] + list(t.shape[1:]) for t in spec.example_inputs]
    for name, axes in spec.extra_dynamic_axes.items():
        if name in spec.input_names:
            for axis in axes:
                shapes[spec.input_names.index(name)][axis] = None
    extra = {"input_names": ",".join(spec.input_names), "output_names": ",".join(spec.output_names),
             "input_shapes": json.dumps(shapes)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path), _extra_files=extra)
    return path
