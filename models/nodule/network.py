"""The ``nodule`` network: a small MONAI 3D SegResNet producing a nodule probability map.

The network is fully convolutional: it is trained on patches and applied to whole CT volumes by
sliding windows (:mod:`models.nodule.inference`).  ``NoduleNet.forward`` returns the logit map
(N, 1, D, H, W); :class:`NoduleProbability` wraps it with a sigmoid for export, so the ONNX model
maps ``image`` (N, 1, 64, 64, 64) in [0, 1] to ``probability`` of the same shape.  Every spatial
size must be a multiple of 8 (three down-sampling stages).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import SegResNet
from torch import nn


@dataclass(frozen=True)
class NoduleNetConfig:
    """Architecture hyper-parameters (recorded in the model metadata)."""

    init_filters: int = 8
    blocks_down: tuple[int, ...] = (1, 1, 1, 1)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout_prob: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.init_filters, bool) or not isinstance(self.init_filters, int) or self.init_filters < 1:
            raise ValueError(f"`init_filters` must be a positive integer, {self.init_filters!r} is given.")
        if len(self.blocks_down) < 2 or any(int(b) < 1 for b in self.blocks_down):
            raise ValueError(f"`blocks_down` must list at least two positive counts, {self.blocks_down!r} is given.")
        if len(self.blocks_up) != len(self.blocks_down) - 1 or any(int(b) < 1 for b in self.blocks_up):
            raise ValueError(f"`blocks_up` must list {len(self.blocks_down) - 1} positive counts, "
                             f"{self.blocks_up!r} is given.")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError(f"`dropout_prob` must be within [0, 1), {self.dropout_prob} is given.")

    @property
    def size_multiple(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2 ** (len(self.blocks_down) - 1)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["blocks_down"] = list(self.blocks_down)
        out["blocks_up"] = list(self.blocks_up)
        return out


class NoduleNet(nn.Module):
    """SegResNet returning nodule logits (N, 1, D, H, W).

    Parameters
    ----------
    config
        Architecture; :class:`NoduleNetConfig` defaults when ``None``.
    """

    def __init__(self, config: NoduleNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NoduleNetConfig()
        self.segresnet = SegResNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            init_filters=self.config.init_filters,
            blocks_down=tuple(self.config.blocks_down),
            blocks_up=tuple(self.config.blocks_up),
            dropout_prob=self.config.dropout_prob or None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"`x` must be (N, 1, D, H, W), shape {tuple(x.shape)} is given.")
        return self.segresnet(x)


class NoduleProbability(nn.Module):
    """Export wrapper: sigmoid of :class:`NoduleNet` logits."""

    def __init__(self, network: NoduleNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(image))
