"""The contract between one model's task definition and the generic train/evaluate/export tools.

A task knows its data, network, loss, metrics and export wrapper; the generic tools
(:mod:`training.loop`, :mod:`training.evaluate`, :mod:`training.export`, :mod:`training.cli`) know
devices, seeds, mixed precision, checkpoints, budgets, the registry and model cards.  Each model
(``tb``, ``nodule``, ``derm``, ``vitals``) has one module ``training/tasks/<name>.py`` exposing
``TASK = <Task subclass>()``.

Config (JSON/YAML, MONAI-bundle-like: plain nested keys) always has at least::

    {"seed": 0,
     "data": {"source": "synthetic" | "<loader name>", "root": null, "n_train": .., "n_val": .., "n_test": ..},
     "input": {...task specific, e.g. "size_px": 224...},
     "train": {"batch_size": 16, "lr": 0.003, "max_steps": null, "seconds": 90, "amp": true,
               "checkpoint_every": 50, "num_workers": 0}}

``default_config()`` returns a complete config; a user file overrides keys (deep merge).

Conventions the generic tools rely on (see ``docs/training.md``): items are dicts of tensors the
default collate can batch; ``ExportSpec.input_names`` equal item keys, so real validation items
join the ONNX parity check; ``metadata()`` input specs carry ``size_px`` for square image inputs;
``Evaluation.metrics`` keys ending in ``_ci95`` (``[low, high]``) fill the model card's CI column.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class Evaluation:
    """What ``Task.evaluate`` returns.

    ``metrics`` is flat JSON (floats/ints/str, nested dicts allowed for per-class values);
    ``plots`` maps a file stem (``roc``, ``reliability``, ``froc``) to a function drawing on a
    matplotlib Axes; ``operating_point`` holds the chosen threshold(s) for the metadata.
    """

    metrics: dict[str, Any]
    plots: dict[str, Callable[[Any], None]] = field(default_factory=dict)
    operating_point: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportSpec:
    """What ``Task.export_spec`` returns: the module to trace and its I/O names.

    The batch axis (0) of every input and output is exported as dynamic.
    """

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    extra_dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


class Task(ABC):
    """One trainable medgate model."""

    #: Registry name: ``tb``, ``nodule``, ``derm`` or ``vitals``.
    name: str = ""

    @abstractmethod
    def default_config(self) -> dict[str, Any]:
        """A complete config (see module docstring) that trains the shipped model on CPU in minutes."""

    @abstractmethod
    def build_network(self, config: dict[str, Any]) -> nn.Module:
        """A freshly initialised network (MONAI where one fits)."""

    @abstractmethod
    def datasets(self, config: dict[str, Any]) -> dict[str, Dataset]:
        """``{"train", "val", "test"}`` datasets; items are dicts of tensors. Seeded by ``config["seed"]``;
        the three splits never share samples. ``config["data"]["source"]`` selects generated data or a
        real-dataset loader from :mod:`training.loaders`."""

    @abstractmethod
    def training_step(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar loss of one batch (already on the device)."""

    @abstractmethod
    def predict(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Evaluation-time outputs of one batch (network in eval mode, no grad), as numpy arrays with
        the batch on axis 0, plus whatever targets ``evaluate`` needs (copied from ``batch``)."""

    @abstractmethod
    def evaluate(self, predictions: dict[str, np.ndarray], config: dict[str, Any],
                 operating_point: dict[str, Any] | None = None) -> Evaluation:
        """Metrics over one split's concatenated predictions. With ``operating_point`` None (the
        validation split) choose it; otherwise (the held-out test split) apply the given one."""

    @abstractmethod
    def export_spec(self, network: nn.Module, config: dict[str, Any]) -> ExportSpec:
        """The inference module for ONNX export (e.g. probabilities + heatmap outputs)."""

    @abstractmethod
    def metadata(self, config: dict[str, Any], evaluation: Evaluation) -> dict[str, Any]:
        """Task-specific registry metadata: ``task``, ``inputs``/``outputs`` spec (name, shape with
        null batch, dtype, preprocessing), ``finding`` codes or ``classes``, ``threshold``(s),
        ``training_data`` description, ``intended_use`` (must say NOT FOR CLINICAL USE)."""
