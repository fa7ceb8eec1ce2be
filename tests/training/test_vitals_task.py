"""The vitals deterioration task: generated windows, training steps, evaluation, shipped model."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from models.vitals_features import N_CHANNELS, WINDOW_STEPS
from training import metrics
from training.synthetic.vitals import vitals_course
from training.synthetic.vitals_windows import COURSES, cohort, generate_stay, labelled_windows
from training.tasks.vitals import TASK, VitalsWindows

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "vitals" / "1.0.0"


def _small_config(n: int = 40) -> dict:
    config = copy.deepcopy(TASK.default_config())
    config["data"].update(n_train=n, n_val=n // 2, n_test=n // 2)
    config["eval"]["bootstrap"] = 50
    return config


def test_generator_is_deterministic_and_splits_differ():
    a, b = labelled_windows(cohort(20, 3)), labelled_windows(cohort(20, 3))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = labelled_windows(cohort(20, 4))
    assert a["window"].shape[1:] == (WINDOW_STEPS, N_CHANNELS) and not np.array_equal(a["window"][:5], c["window"][:5])


def test_label_balance_and_courses():
    w = labelled_windows(cohort(120, 0))
    assert 0.08 < w["label"].mean() < 0.35
    assert np.isin(w["news2"], np.arange(0, 21)).all()
    stays = cohort(60, 1)
    assert {s.course for s in stays} == set(COURSES)
    assert all((s.event_s is None) == (s.course == "stable") for s in stays)


def test_sampling_frequencies_differ_by_vital():
    stay = generate_stay(np.random.default_rng(0), "stable", stay_h=6.0)
    counts = np.bincount(stay.feature_index, minlength=5)
    assert counts[0] > 250 and counts[2] > 250  # HR, SpO2 about every minute
    assert 6 <= counts[3] <= 25 and 2 <= counts[4] <= 7  # BP every 15-60 min, temperature every 1-4 h
    with pytest.raises(ValueError, match="course"):
        generate_stay(np.random.default_rng(0), "flu")


def test_legacy_course_generator_still_works():
    payloads = vitals_course(3, patient_id="p1", deteriorating=True, seed=1)
    assert len(payloads) == 3 and payloads[0]["vitals"][0]["code"] == "9279-1"


def test_training_steps_reduce_loss():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: more threads only contend
    try:
        _train_a_few_steps()
    finally:
        torch.set_num_threads(threads)


def _train_a_few_steps():
    torch.manual_seed(0)
    data = VitalsWindows(labelled_windows(cohort(12, 7)))
    batch = {"window": data.window[:128], "label": data.label[:128]}
    net = TASK.build_network(TASK.default_config())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = TASK.training_step(net, batch).item()
    for _ in range(25):
        opt.zero_grad()
        TASK.training_step(net, batch).backward()
        opt.step()
    assert TASK.training_step(net, batch).item() < 0.8 * first


def test_evaluate_reports_model_and_news2_baseline():
    config = _small_config()
    data = TASK.datasets(config)
    assert set(data) == {"train", "val", "test"} and data["train"][0]["window"].shape == (WINDOW_STEPS, N_CHANNELS)
    net = TASK.build_network(config).eval()
    with torch.no_grad():
        preds = TASK.predict(net, {"window": data["val"].window, "label": data["val"].label,
                                   "news2": data["val"].news2})
    ev = TASK.evaluate(preds, config)
    for key in ("auc", "auc_ci95", "sensitivity", "specificity", "ece", "news2_auc", "auc_minus_news2_ci95"):
        assert key in ev.metrics
    assert ev.metrics["sensitivity"] >= 0.8 and set(ev.plots) == {"roc", "reliability"}
    meta = TASK.metadata(config, ev)
    assert "NOT FOR CLINICAL USE" in meta["intended_use"] and meta["finding"]["value"] == "271299001"
    assert meta["inputs"]["window"]["feature_contract"] == "models.vitals_features"


@pytest.mark.skipif(not (SHIPPED / "model.onnx").is_file(), reason="no shipped vitals model")
def test_shipped_model_beats_chance_and_news2_on_fresh_windows():
    import onnxruntime as ort

    session = ort.InferenceSession(str(SHIPPED / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["window"]
    fresh = labelled_windows(cohort(150, 987654))
    prob = session.run(["probability"], {"window": fresh["window"]})[0]
    assert prob.shape == (len(fresh["label"]), 1)
    auc = metrics.roc_auc(fresh["label"], prob[:, 0])
    assert auc >= 0.75 and auc > metrics.roc_auc(fresh["label"], fresh["news2"])
