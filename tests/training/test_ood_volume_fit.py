"""training.ood_volume: a volume model's pooled encoder features, one vector per patch, and the
volume score (the largest patch score; infinite when no patch was run)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from models.ood import FeatureStatistic
from training import ood
from training.ood_volume import volume_score


class _PatchNet(nn.Module):
    """A tiny 3D fully convolutional network: an encoder stage then a probability map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(4, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.encoder(image)))


def _onnx(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the TorchScript exporter
        torch.onnx.export(module.eval(), (torch.zeros(2, 1, 8, 8, 8),), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["probability"],
                          dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}})
    return buffer.getvalue()


def test_a_pooled_layer_gives_one_vector_per_patch_in_onnx_and_torchscript_alike():
    module = _PatchNet()
    before = _onnx(module)
    relu = next(n.output[0] for n in onnx.load_from_string(before).graph.node if n.op_type == "Relu")
    after, tapped, width = ood.add_feature_output(before, tensor=relu, pool=True)
    assert (tapped, width) == (relu, 4)
    assert ood.add_feature_output(after)[1:] == (relu, 4)  # already tapped: the layer named again, unchanged
    x = np.random.default_rng(5).random((3, 1, 8, 8, 8), dtype=np.float32)
    assert ood.check_unchanged(before, after, [x]) == 3
    with torch.no_grad():
        encoded = module.encoder(torch.from_numpy(x))
        traced = ood._FeatureTap(module.eval(), "encoder.1", pool=True)(torch.from_numpy(x))
    features = ood.features_of(after, x)
    assert features.shape == (3, 4)
    np.testing.assert_allclose(features, encoded.mean(dim=(2, 3, 4)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features, traced[-1].numpy(), rtol=1e-5, atol=1e-6)


def test_a_volume_scores_its_farthest_patch_and_infinity_without_patches():
    statistic = FeatureStatistic(np.zeros((1, 2)), np.eye(2), 3.0, 0.05, ("chest_ct",), "patch")
    assert volume_score(statistic, np.array([[1.0, 0.0], [0.0, 4.0], [0.5, 0.5]], np.float32)) == 4.0
    assert volume_score(statistic, np.zeros((0, 2), np.float32)) == float("inf")
    assert statistic.verdict(volume_score(statistic, np.zeros((0, 2))))["outside"]
