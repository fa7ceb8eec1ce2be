"""The generic training loop: any :class:`~training.tasks.base.Task`, one budget, resumable.

What it does, in order:

1. seed Python, numpy and torch from ``config["seed"]``; pick the device (CUDA when available);
2. build the task's datasets and network, an Adam optimiser and, on CUDA with ``train.amp``,
   mixed precision (``torch.autocast`` float16 + ``GradScaler``; off on CPU);
3. draw each batch as ``train.batch_size`` random indices (with replacement) from a dedicated
   seeded generator, collate the items and call ``task.training_step`` under autocast;
4. decay the learning rate on a cosine (``train.schedule: cosine``, the default; ``constant``
   keeps it) over ``train.max_steps`` or, when only ``train.seconds`` is given, over the time;
5. stop when ``train.max_steps`` steps are done or ``train.seconds`` of training time (summed over
   resumed runs) are spent, whichever comes first;
6. every ``train.checkpoint_every`` steps and at the end write ``<out>/checkpoints/last.pt``:
   network, optimiser, scaler, step, seconds, every random state and the config;
7. measure the validation split and write ``<out>/validation.json``.

``resume=True`` restores ``last.pt`` and continues; with a step budget the resumed run ends with
the same weights as an uninterrupted one (on the same device and thread count).  A time-only
budget cannot repeat exactly, since the number of steps depends on the machine.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from training.config import validate_config
from training.evaluate import evaluate_split, to_device
from training.tasks.base import Evaluation, Task

#: Config keys a resumed run may change: the budget and how often to checkpoint.
RESUMABLE_KEYS = ("max_steps", "seconds", "checkpoint_every")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    network: nn.Module
    config: dict[str, Any]
    steps: int
    seconds: float
    device: str
    final_loss: float
    checkpoint: Path
    validation: Evaluation | None


def select_device(requested: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise the named device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "batches": generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    generator.set_state(states["batches"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _same_except_budget(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Top-level / ``train.*`` keys whose values differ, ignoring :data:`RESUMABLE_KEYS`."""
    keys = sorted(set(saved) | set(given))
    differ = [k for k in keys if k != "train" and saved.get(k) != given.get(k)]
    train_saved, train_given = saved.get("train", {}), given.get("train", {})
    for key in sorted(set(train_saved) | set(train_given)):
        if key not in RESUMABLE_KEYS and train_saved.get(key) != train_given.get(key):
            differ.append(f"train.{key}")
    return differ


def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated last.pt


def train(task: Task, config: dict[str, Any], out_dir: Path, *, resume: bool = False,
          datasets: dict[str, Dataset] | None = None, device: str = "auto", progress: bool = True,
          validate: bool = True) -> TrainResult:
    """Train ``task`` under ``config``; see the module docstring for the steps.

    Parameters
    ----------
    task, config
        The task and its complete config (:func:`training.config.resolve_config`).
    out_dir
        Run folder; the checkpoint goes to ``<out_dir>/checkpoints/last.pt``.
    resume
        Continue from that checkpoint; its config must equal ``config`` except the budget keys.
    datasets
        Prebuilt ``task.datasets(config)`` (to share them with evaluation); built when ``None``.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    progress
        Show a progress bar on stderr.
    validate
        Measure the validation split at the end.
    """
    validate_config(config)
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoints" / "last.pt"
    train_cfg = config["train"]
    dev = select_device(device)
    seed_everything(config["seed"])
    data = datasets if datasets is not None else task.datasets(config)
    if "train" not in data or len(data["train"]) == 0:
        raise ValueError(f"task {task.name!r} must give a non-empty `train` split, splits {sorted(data)} are given.")
    network = task.build_network(config).to(dev)
    optimizer = torch.optim.Adam(network.parameters(), lr=train_cfg["lr"],
                                 weight_decay=float(train_cfg.get("weight_decay", 0.0)))
    use_amp = dev.type == "cuda" and bool(train_cfg.get("amp", True))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    generator = torch.Generator().manual_seed(config["seed"])
    step, spent_s, loss_ema = 0, 0.0, float("nan")
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"`resume` needs {checkpoint}, which does not exist.")
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        differ = _same_except_budget(state["config"], config)
        if differ:
            raise ValueError(f"cannot resume {checkpoint}: the config differs in {', '.join(differ)}.")
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, spent_s, loss_ema = state["step"], state["seconds"], state["loss"]
        _set_rng_states(state["rng"], generator)

    max_steps, budget_s = train_cfg.get("max_steps"), train_cfg.get("seconds")
    cosine = train_cfg.get("schedule", "cosine") == "cosine"
    base_lr, batch_size, every = train_cfg["lr"], train_cfg["batch_size"], train_cfg["checkpoint_every"]
    dataset = data["train"]

    def save() -> None:
        _save(checkpoint, {"task": task.name, "network": network.state_dict(), "optimizer": optimizer.state_dict(),
                           "scaler": scaler.state_dict(), "step": step, "seconds": spent_s, "loss": loss_ema,
                           "rng": _rng_states(generator), "config": config, "device": str(dev)})

    from tqdm import tqdm

    bar = tqdm(total=max_steps, initial=step, disable=not progress, unit="step", desc=f"train {task.name}")
    network.train()
    start = time.perf_counter() - spent_s
    while (max_steps is None or step < max_steps) and (budget_s is None or spent_s < budget_s):
        if cosine:
            fraction = step / max_steps if max_steps is not None else spent_s / budget_s
            for group in optimizer.param_groups:
                group["lr"] = base_lr * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))
        idx = torch.randint(0, len(dataset), (batch_size,), generator=generator)
        batch = to_device(default_collate([dataset[int(i)] for i in idx]), dev)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
            loss = task.training_step(network, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"task {task.name!r} gave a non-finite loss ({loss.item()}) at step {step + 1}.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        value = float(loss.detach())
        loss_ema = value if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * value
        spent_s = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}", s=f"{spent_s:.0f}")
        if step % every == 0:
            save()
    bar.close()
    save()
    network.eval()
    validation = None
    if validate and "val" in data:
        validation = evaluate_split(task, network, data["val"], config, None, dev)
        record = {"metrics": validation.metrics, "operating_point": validation.operating_point,
                  "steps": step, "seconds": round(spent_s, 1)}
        (out_dir / "validation.json").write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")
    return TrainResult(network=network, config=config, steps=step, seconds=round(spent_s, 1), device=str(dev),
                       final_loss=round(loss_ema, 4), checkpoint=checkpoint, validation=validation)
