"""The ``vitals`` network: a small temporal CNN over a :mod:`models.vitals_features` window.

Input ``(N, WINDOW_STEPS, N_CHANNELS)`` (time first, as :func:`models.vitals_features.window_features`
builds it); ``forward`` returns the deterioration logit ``(N, 1)``.  Two dilated 1D convolutions
read trends over the hour; the head sees the latest step, the mean and the maximum over time, so
both the current state and the course within the hour count.  :class:`VitalsProbability` wraps it
for export with the sigmoid applied.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.vitals_features import N_CHANNELS, WINDOW_STEPS


@dataclass(frozen=True)
class VitalsNetConfig:
    """Architecture hyper-parameters (recorded in the model metadata)."""

    channels: int = 32
    hidden: int = 32
    dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        for name in ("channels", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, {value!r} is given.")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError(f"`dropout_prob` must be within [0, 1), {self.dropout_prob!r} is given.")

    def as_dict(self) -> dict:
        return asdict(self)


class VitalsNet(nn.Module):
    """Temporal CNN returning the deterioration logit.

    Parameters
    ----------
    config
        Architecture; :class:`VitalsNetConfig` defaults when ``None``.
    """

    def __init__(self, config: VitalsNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or VitalsNetConfig()
        c = self.config.channels
        self.features = nn.Sequential(
            nn.Conv1d(N_CHANNELS, c, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv1d(c, c, kernel_size=3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv1d(c, c, kernel_size=3, padding=4, dilation=4),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Linear(3 * c + N_CHANNELS, self.config.hidden),
            nn.ReLU(),
            nn.Dropout(self.config.dropout_prob),
            nn.Linear(self.config.hidden, 1),
        )

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        if window.dim() != 3 or window.shape[1] != WINDOW_STEPS or window.shape[2] != N_CHANNELS:
            raise ValueError(f"`window` must have shape (N, {WINDOW_STEPS}, {N_CHANNELS}), "
                             f"{tuple(window.shape)} is given.")
        h = self.features(window.transpose(1, 2))  # (N, C, T)
        pooled = torch.cat([h[:, :, -1], h.mean(dim=2), h.amax(dim=2), window[:, -1, :]], dim=1)
        return self.head(pooled)


class VitalsProbability(nn.Module):
    """Export wrapper: ``window`` (N, 12, 10) float32 -> ``probability`` (N, 1)."""

    def __init__(self, network: VitalsNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(window))
