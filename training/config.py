"""Task lookup and configuration loading for the training tools.

A task is found by name in :data:`TASKS` and imported only when asked for, so a task whose module
is not written yet fails with a clear message instead of breaking every other command.  A config
is the task's :meth:`~training.tasks.base.Task.default_config`, overridden (deep merge) by
``training/configs/<name>.yaml`` when it exists, then by a user file, then by command-line values.
"""
from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import yaml

from training.tasks.base import Task

#: Model name -> ``"module:attribute"`` of its :class:`~training.tasks.base.Task` instance.
TASKS = {name: f"training.tasks.{name}:TASK" for name in ("tb", "nodule", "derm", "vitals")}
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class TaskNotFoundError(LookupError):
    """The named task is unknown or its module cannot be imported."""


def load_task(name: str) -> Task:
    """The :class:`Task` registered as ``name`` (imported lazily)."""
    if name not in TASKS:
        raise TaskNotFoundError(f"`model` must be one of {', '.join(sorted(TASKS))}, {name!r} is given.")
    module_name, attribute = TASKS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise TaskNotFoundError(f"task {name!r} has no module {module_name} yet.") from None
        raise
    task = getattr(module, attribute, None)
    if not isinstance(task, Task):
        raise TaskNotFoundError(f"{module_name}.{attribute} must be a Task instance, "
                                f"{type(task).__name__} is given.")
    return task


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in; nested dicts merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON config file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`config` must be an existing file, {path} is given.")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, {type(data).__name__} is given.")
    return data


def resolve_config(task: Task, path: Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Default config, then ``training/configs/<name>.yaml``, then ``path``, then non-``None`` overrides.

    ``overrides`` accepts ``seed``, ``max_steps`` and ``seconds`` (the last two go under ``train``).
    """
    config = task.default_config()
    shipped = CONFIG_DIR / f"{task.name}.yaml"
    if shipped.is_file():
        config = deep_merge(config, read_config_file(shipped))
    if path is not None:
        config = deep_merge(config, read_config_file(path))
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "seed":
            config["seed"] = int(value)
        elif key in ("max_steps", "seconds"):
            config.setdefault("train", {})[key] = value
        else:
            raise ValueError(f"unknown config override {key!r}; use seed, max_steps or seconds.")
    validate_config(config)
    return config


def validate_config(config: dict[str, Any]) -> None:
    """Check the generic keys (``seed``, ``train.*``); raise ``ValueError`` naming the key."""
    if not isinstance(config.get("seed"), int):
        raise ValueError(f"`seed` must be an integer, {config.get('seed')!r} is given.")
    train = config.get("train")
    if not isinstance(train, dict):
        raise ValueError(f"`train` must be a mapping, {train!r} is given.")
    for key in ("batch_size", "checkpoint_every"):
        if not isinstance(train.get(key), int) or train[key] < 1:
            raise ValueError(f"`train.{key}` must be a positive integer, {train.get(key)!r} is given.")
    if not isinstance(train.get("lr"), (int, float)) or train["lr"] <= 0:
        raise ValueError(f"`train.lr` must be a positive number, {train.get('lr')!r} is given.")
    max_steps, seconds = train.get("max_steps"), train.get("seconds")
    if max_steps is None and seconds is None:
        raise ValueError("`train.max_steps` or `train.seconds` must be set, both are null.")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"`train.max_steps` must be a positive integer or null, {max_steps!r} is given.")
    if seconds is not None and (not isinstance(seconds, (int, float)) or seconds <= 0):
        raise ValueError(f"`train.seconds` must be a positive number or null, {seconds!r} is given.")
