"""Run a task's network over one split and turn the predictions into an :class:`Evaluation`.

Also loads trained weights (a training checkpoint or a registered version's ``model.pt``) and
saves an evaluation as ``metrics.json`` plus one PNG per plot.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.tasks.base import Evaluation, Task


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a collated batch to ``device``; other values pass through."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def predict_split(task: Task, network: nn.Module, dataset: Dataset, device: torch.device | str = "cpu",
                  batch_size: int = 32) -> dict[str, np.ndarray]:
    """``task.predict`` over ``dataset`` in order, in eval mode, concatenated along axis 0."""
    if len(dataset) == 0:
        raise ValueError("`dataset` must not be empty, a split with 0 items is given.")
    device = torch.device(device)
    was_training = network.training
    network.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        for key, value in task.predict(network, to_device(batch, device)).items():
            parts.setdefault(key, []).append(np.asarray(value))
    network.train(was_training)
    return {key: np.concatenate(values) for key, values in parts.items()}


def evaluate_split(task: Task, network: nn.Module, dataset: Dataset, config: dict[str, Any],
                   operating_point: dict[str, Any] | None = None, device: torch.device | str = "cpu") -> Evaluation:
    """Predict ``dataset`` and let the task measure it (choosing the operating point when ``None``)."""
    batch_size = int(config.get("train", {}).get("eval_batch_size", config.get("train", {}).get("batch_size", 32)))
    predictions = predict_split(task, network, dataset, device, batch_size)
    return task.evaluate(predictions, config, operating_point)


def load_weights(task: Task, path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Network and config from a checkpoint (``last.pt``) or a registered ``model.pt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`checkpoint` must be an existing file, {path} is given.")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "network" not in state or "config" not in state:
        raise ValueError(f"{path} is not a medgate checkpoint: it lacks `network` or `config`.")
    if state.get("task", task.name) != task.name:
        raise ValueError(f"{path} holds weights of task {state['task']!r}, not {task.name!r}.")
    network = task.build_network(state["config"])
    network.load_state_dict(state["network"])
    return network.to(device).eval(), state["config"]


def save_evaluation(evaluation: Evaluation, out_dir: Path, *, extra: dict[str, Any] | None = None) -> list[Path]:
    """Write ``metrics.json`` (metrics, operating point, ``extra``) and ``<stem>.png`` per plot."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"metrics": evaluation.metrics, "operating_point": evaluation.operating_point, **(extra or {})}
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(record, indent=2, default=_plain) + "\n", encoding="utf-8")
    return [metrics_path, *save_plots(evaluation, out_dir)]


def save_plots(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Draw each of ``evaluation.plots`` on its own figure and save it as ``<stem>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for stem, draw in evaluation.plots.items():
        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
        try:
            draw(ax)
            fig.tight_layout()
            path = Path(out_dir) / f"{stem}.png"
            fig.savefig(path)
            paths.append(path)
        finally:
            plt.close(fig)
    return paths


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable.")
