"""The ``tb`` network: a small MONAI 2D DenseNet with a class-activation-map head.

``TbNet.forward`` returns ``(probability, heatmap)``:

* ``probability`` (N, 1): sigmoid of the DenseNet logit;
* ``heatmap`` (N, 1, h, w): class-activation map, i.e. the (ReLU-ed) features of the last dense
  block weighted by the classifier's weights, ReLU-ed again and scaled to [0, 1] per image.

Because MONAI's DenseNet classifies with global average pooling followed by one linear layer
(``class_layers.pool`` then ``class_layers.out``), the logit is exactly the spatial mean of the
un-normalised map plus the bias, so the heatmap shows where the evidence for TB came from.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet
from torch import nn


@dataclass(frozen=True)
class TbNetConfig:
    """Architecture hyper-parameters (recorded in the model manifest)."""

    init_features: int = 16
    growth_rate: int = 8
    block_config: tuple[int, ...] = (2, 3, 4)
    bn_size: int = 2
    dropout_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("init_features", "growth_rate", "bn_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, {value!r} is given.")
        if len(self.block_config) == 0 or any(int(b) < 1 for b in self.block_config):
            raise ValueError(f"`block_config` must list positive layer counts, {self.block_config!r} is given.")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError(f"`dropout_prob` must be within [0, 1), {self.dropout_prob} is given.")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["block_config"] = list(self.block_config)
        return out


class TbNet(nn.Module):
    """DenseNet classifier that also returns a class-activation heatmap.

    Parameters
    ----------
    config
        Architecture; :class:`TbNetConfig` defaults when ``None``.
    """

    def __init__(self, config: TbNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or TbNetConfig()
        self.densenet = DenseNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            init_features=self.config.init_features,
            growth_rate=self.config.growth_rate,
            block_config=tuple(self.config.block_config),
            bn_size=self.config.bn_size,
            dropout_prob=self.config.dropout_prob,
        )

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (``class_layers.out`` in MONAI's DenseNet)."""
        return self.densenet.class_layers.out

    def logits_and_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw logit (N, 1) and un-normalised class-activation map (N, 1, h, w)."""
        features = F.relu(self.densenet.features(x))  # as class_layers.relu, but not in place
        logit = self.classifier(features.mean(dim=(2, 3)))
        cam = torch.einsum("nchw,c->nhw", features, self.classifier.weight[0])[:, None]
        return logit, cam

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, cam = self.logits_and_cam(x)
        cam = F.relu(cam)
        peak = cam.amax(dim=(2, 3), keepdim=True)
        heatmap = cam / (peak + 1e-6)
        return torch.sigmoid(logit), heatmap


def heatmap_size(input_size_px: int, block_config: Sequence[int]) -> int:
    """Side of the heatmap for a square input: stem divides by 4, each transition by 2."""
    size = (input_size_px + 1) // 2  # conv0, stride 2, padding 3, kernel 7
    size = (size + 1) // 2  # pool0, stride 2, padding 1, kernel 3
    for _ in range(len(block_config) - 1):
        size //= 2
    return size
