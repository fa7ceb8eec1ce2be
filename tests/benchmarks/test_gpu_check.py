"""benchmarks/gpu_check.py: what runs without a GPU, and the GPU code paths run on the CPU at a
small size (a GPU machine is not in CI; these keep the kit's paths from rotting)."""
from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check


def test_without_a_gpu_it_says_so_and_exits_0_after_its_cpu_parts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "gpu_visible", lambda: False)
    monkeypatch.setattr("benchmarks.report.RESULTS", tmp_path)
    assert gpu_check.main(["--models", "tb"]) == 0
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["gpu"] is None and "no CUDA GPU" in record["skipped"] and "no CUDA GPU" in capsys.readouterr().out
    assert record["models"]["tb"]["chosen_device"] == "cpu" and record["models"]["tb"]["chosen_batch1_p50_ms"] > 0


def test_the_ct_path_to_seg_and_sr_runs_on_a_small_volume():
    row = gpu_check.ct_to_seg_and_sr(24, size_px=96, device="cpu")
    assert row["slices"] == 24 and row["total_s"] > 0 and {"model_s", "writers_s"} <= set(row)


@pytest.mark.parametrize("model", ["vitals"])
def test_a_training_step_runs(model):
    row = gpu_check.training_step(model, device="cpu")
    assert row["two_steps_s"] > 0


def test_engine_rows_are_compared_with_the_ceiling():
    ceiling = {"batch1_p50_ms": 2.0, "best_items_per_s": 1000.0}
    assert gpu_check.against_ceiling({"batch1_p50_ms": 2.1, "best_items_per_s": 950.0}, ceiling) == {
        "batch1_vs_ceiling": 1.05, "batch1_target_met": True, "throughput_vs_ceiling": 0.95,
        "throughput_target_met": True}
    assert gpu_check.against_ceiling({"batch1_p50_ms": 3.0}, ceiling)["batch1_target_met"] is False
