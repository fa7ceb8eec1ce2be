"""The ``derm`` network: a width/depth-reduced MONAI 2D EfficientNet returning 7 logits.

Why not ``EfficientNetBN("efficientnet-b0")``?  Measured on 2 CPU cores at 128 px (batch 32,
one Adam step): b0 has 4.0 M parameters and trains at ~12 images/s, i.e. about 3,600 images in
five minutes, too few to learn from scratch.  :class:`DermNetConfig`'s default keeps b0's block
design (MBConv with squeeze-excitation, b0's kernels, strides and expansion 6) but only its first
five stages with one block each, and ``width_coefficient=0.5``: ~0.10 M parameters, ~45
images/s at 96 px on one thread of a busy shared machine (well over 100 images/s on two idle
cores).  Batch-norm momentum is raised to 0.1 (MONAI's EfficientNet default is 0.01, tuned for
long ImageNet runs) so running statistics settle within a few hundred steps.

``build_derm_network(DermNetConfig(variant="efficientnet-b0"))`` gives the full b0 (for GPU or
real-data training) with the same interface.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import EfficientNet, EfficientNetBN
from torch import nn

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
#: Per-channel standardisation applied inside the network (ImageNet statistics, so a network
#: pretrained elsewhere could be fine-tuned on the same [0, 1] RGB input).
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)

#: b0's stages with one repeat each and the last two stages dropped (MONAI block-string syntax:
#: repeats, kernel, stride, expansion, in/out channels before width scaling, squeeze-excitation).
SMALL_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r1_k3_s22_e6_i16_o24_se0.25",
    "r1_k5_s22_e6_i24_o40_se0.25",
    "r1_k3_s22_e6_i40_o80_se0.25",
    "r1_k5_s22_e6_i80_o112_se0.25",
)


@dataclass(frozen=True)
class DermNetConfig:
    """Architecture hyper-parameters (recorded in the registry metadata).

    ``variant`` is ``"small"`` (custom blocks below) or a MONAI name such as ``"efficientnet-b0"``.
    """

    variant: str = "small"
    blocks: tuple[str, ...] = SMALL_BLOCKS
    width_coefficient: float = 0.5
    depth_coefficient: float = 1.0
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.1
    bn_momentum: float = 0.1
    image_size_px: int = 128
    num_classes: int = len(CLASSES)

    def __post_init__(self) -> None:
        if self.variant != "small" and not self.variant.startswith("efficientnet-b"):
            raise ValueError(f"`variant` must be 'small' or 'efficientnet-bN', {self.variant!r} is given.")
        if not self.blocks:
            raise ValueError(f"`blocks` must list at least one MONAI block string, {self.blocks!r} is given.")
        for name in ("width_coefficient", "depth_coefficient"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be positive, {getattr(self, name)!r} is given.")
        for name in ("dropout_rate", "drop_connect_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be within [0, 1), {getattr(self, name)!r} is given.")
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"`bn_momentum` must be within (0, 1], {self.bn_momentum!r} is given.")
        if isinstance(self.image_size_px, bool) or not isinstance(self.image_size_px, int) or self.image_size_px < 32:
            raise ValueError(f"`image_size_px` must be an integer of at least 32, {self.image_size_px!r} is given.")
        if self.num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, {self.num_classes!r} is given.")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["blocks"] = list(self.blocks)
        return out

    @classmethod
    def from_dict(cls, values: dict | None) -> "DermNetConfig":
        values = dict(values or {})
        if "blocks" in values:
            values["blocks"] = tuple(values["blocks"])
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"`network` config has unknown keys {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}.")
        return cls(**values)


class DermClassifier(nn.Module):
    """[0, 1] RGB images (N, 3, S, S) -> (N, C) logits, with the calibration temperature on board.

    ``forward`` standardises the channels (:data:`MEAN_RGB`, :data:`STD_RGB`) and runs the
    EfficientNet.  ``temperature`` is a buffer (1 until fitted on validation data) so it is saved
    with the weights; :meth:`probabilities` gives ``softmax(logits / temperature)``.
    """

    def __init__(self, backbone: nn.Module, config: DermNetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD_RGB).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x) / self.temperature, dim=1)


def build_derm_network(config: DermNetConfig | None = None) -> DermClassifier:
    """A freshly initialised :class:`DermClassifier` around a MONAI EfficientNet.

    The memory-efficient Swish (a custom autograd function) is swapped for the plain one so the
    network traces to ONNX.
    """
    cfg = config or DermNetConfig()
    norm = ("batch", {"eps": 1e-3, "momentum": cfg.bn_momentum})
    if cfg.variant == "small":
        net = EfficientNet(list(cfg.blocks), spatial_dims=2, in_channels=3, num_classes=cfg.num_classes,
                           width_coefficient=cfg.width_coefficient, depth_coefficient=cfg.depth_coefficient,
                           dropout_rate=cfg.dropout_rate, image_size=cfg.image_size_px, norm=norm,
                           drop_connect_rate=cfg.drop_connect_rate)
    else:
        net = EfficientNetBN(cfg.variant, pretrained=False, spatial_dims=2, in_channels=3,
                             num_classes=cfg.num_classes, norm=norm)
    net.set_swish(memory_efficient=False)
    return DermClassifier(net, cfg)
