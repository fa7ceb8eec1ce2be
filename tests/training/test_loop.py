"""The generic training loop: budgets, checkpoints and exact resume."""
from __future__ import annotations

import json

import pytest
import torch

from toy_task import TASK
from training.loop import select_device, train


def _config(**train_overrides):
    config = TASK.default_config()
    config["train"].update(train_overrides)
    return config


def _weights(network):
    return {k: v.clone() for k, v in network.state_dict().items()}


def test_few_steps_write_checkpoint_and_validation(tmp_path):
    result = train(TASK, _config(), tmp_path, progress=False)
    assert result.steps == 6 and result.device == "cpu" == str(select_device())
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert {"network", "optimizer", "scaler", "step", "rng", "config", "seconds"} <= set(state)
    assert state["step"] == 6 and state["config"] == result.config
    record = json.loads((tmp_path / "validation.json").read_text())
    assert 0.0 <= record["metrics"]["auc"] <= 1.0 and "threshold" in record["operating_point"]


def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    straight = train(TASK, _config(), tmp_path / "a", progress=False, validate=False)
    calls = {"n": 0}
    original = TASK.training_step

    def crashing(network, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # dies during step 5; last checkpoint is at step 4
            raise KeyboardInterrupt
        return original(network, batch)

    monkeypatch.setattr(TASK, "training_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(TASK, _config(), tmp_path / "b", progress=False, validate=False)
    monkeypatch.setattr(TASK, "training_step", original)
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["step"] == 4
    resumed = train(TASK, _config(), tmp_path / "b", resume=True, progress=False, validate=False)
    assert resumed.steps == 6
    for key, value in _weights(straight.network).items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key


def test_resume_can_extend_the_budget_but_not_change_the_config(tmp_path):
    train(TASK, _config(max_steps=2), tmp_path, progress=False, validate=False)
    longer = train(TASK, _config(max_steps=4), tmp_path, resume=True, progress=False, validate=False)
    assert longer.steps == 4
    with pytest.raises(ValueError, match="train.lr"):
        train(TASK, _config(max_steps=6, lr=0.1), tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train(TASK, _config(), tmp_path / "none", resume=True, progress=False)


def test_time_budget_stops_training(tmp_path):
    result = train(TASK, _config(max_steps=None, seconds=0.05), tmp_path, progress=False, validate=False)
    assert result.steps >= 1 and result.seconds < 5


def test_bad_config_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="train.batch_size"):
        train(TASK, _config(batch_size=0), tmp_path, progress=False)
    with pytest.raises(ValueError, match="max_steps` or `train.seconds"):
        train(TASK, _config(max_steps=None, seconds=None), tmp_path, progress=False)
