"""ONNX export with the onnxruntime parity check: accept a faithful export, refuse a wrong one."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from toy_task import TASK
from training.export import ExportParityError, export_onnx, relative_error
from training.tasks.base import ExportSpec


class DataDependent(nn.Module):
    """Traced at the all-zero example, the ONNX graph keeps only the ``else`` branch."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.sum() > 0:
            return features * 2.0
        return features * 3.0


def test_relative_error_definition():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([1.0, 2.1], [1.0, 2.0]) == pytest.approx(0.05)  # 0.1 / max |b| = 2
    assert relative_error([0.0, 2e-4], [0.0, 0.0]) == pytest.approx(0.2)  # floor 1e-3
    assert relative_error([1.0], [1.0, 2.0]) == float("inf")


def test_faithful_export_is_written_with_dynamic_batch(tmp_path):
    import onnxruntime as ort

    network = TASK.build_network(TASK.default_config())
    spec = TASK.export_spec(network, TASK.default_config())
    errors = export_onnx(spec, tmp_path / "model.onnx", [(torch.randn(5, 4),)])
    assert set(errors) == {"probability"} and errors["probability"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    assert session.run(None, {"features": torch.randn(7, 4).numpy()})[0].shape == (7, 1)


def test_unfaithful_export_is_refused_naming_the_output(tmp_path):
    spec = ExportSpec(module=DataDependent(), example_inputs=(torch.zeros(2, 4),), input_names=["features"],
                      output_names=["scaled"])
    with pytest.raises(ExportParityError, match="'scaled'"):
        export_onnx(spec, tmp_path / "model.onnx", [(torch.ones(3, 4),)])
    assert not (tmp_path / "model.onnx").exists()


def test_unknown_dynamic_axis_name_fails_fast(tmp_path):
    network = TASK.build_network(TASK.default_config())
    spec = TASK.export_spec(network, TASK.default_config())
    spec.extra_dynamic_axes = {"nope": {1: "width"}}
    with pytest.raises(ValueError, match="nope"):
        export_onnx(spec, tmp_path / "model.onnx")
