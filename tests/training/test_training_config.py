"""Task lookup and config resolution."""
from __future__ import annotations

import json

import pytest

from training.config import TASKS, TaskNotFoundError, deep_merge, load_task, resolve_config


def test_known_tasks_import_lazily_and_unknown_fail_clearly(monkeypatch):
    assert load_task("tb").name == "tb"
    with pytest.raises(TaskNotFoundError, match="pneumonia"):
        load_task("pneumonia")
    monkeypatch.setitem(TASKS, "ghost", "training.tasks.ghost:TASK")
    with pytest.raises(TaskNotFoundError, match="no module training.tasks.ghost"):
        load_task("ghost")


def test_deep_merge_keeps_siblings():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 9}}) == {"a": {"b": 9, "c": 2}, "d": 3}


def test_resolve_config_layers_file_and_overrides(tmp_path):
    task = load_task("tb")
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"train": {"lr": 0.01}, "data": {"n_train": 10}}))
    config = resolve_config(task, user, seed=7, max_steps=3, seconds=None)
    assert config["seed"] == 7 and config["train"]["max_steps"] == 3 and config["train"]["lr"] == 0.01
    assert config["data"]["n_train"] == 10 and config["data"]["n_val"] == task.default_config()["data"]["n_val"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n")
    with pytest.raises(ValueError, match="train.lr"):
        resolve_config(task, bad)
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        resolve_config(task, tmp_path / "nothere.yaml")
