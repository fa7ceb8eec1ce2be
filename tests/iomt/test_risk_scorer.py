"""Batched deterioration scoring with a stub predictor; RiskAssessments validate."""
from __future__ import annotations

import numpy as np
import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from iomt.risk import RiskScorer

T0 = 1_795_000_000.0


def stub(calls):
    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[1:] == (12, 10)
        calls.append(batch.shape[0])
        return (batch[:, -1, 0:1] > 0).astype(np.float32) * 0.8 + 0.1  # high HR -> 0.9
    return predict


def test_many_beds_in_one_batch_with_deterministic_ids():
    calls, written = [], []
    scorer = RiskScorer(stub(calls), written.extend, max_batch=64, min_interval_s=60)
    for bed in range(100):
        for k in range(5):
            scorer.add(f"Patient/P{bed}", T0 + k * 60, [("8867-4", 120.0 if bed % 2 else 60.0),
                                                     ("8310-5", 37.0)])
    resources = scorer.flush()
    assert calls == [64, 36] and len(resources) == 100 == len(written)
    for r in resources:
        RiskAssessment.model_validate(r)
    by_patient = {r["subject"]["reference"]: r for r in resources}
    assert by_patient["Patient/P1"]["prediction"][0]["probabilityDecimal"] == pytest.approx(0.9)
    assert by_patient["Patient/P0"]["prediction"][0]["probabilityDecimal"] == pytest.approx(0.1)
    assert scorer.flush() == []  # nothing new is due
    scorer.add("Patient/P1", T0 + 4 * 60, [("8867-4", 120.0)])
    assert scorer.flush() == []  # not min_interval_s past the last window
    scorer.add("Patient/P1", T0 + 5 * 60, [("8867-4", 120.0)])
    again = scorer.flush()
    assert len(again) == 1 and again[0]["id"] != by_patient["Patient/P1"]["id"]


def test_a_failing_model_keeps_patients_due():
    calls = []

    def broken(batch):
        calls.append(len(batch))
        raise RuntimeError("replica down")

    scorer = RiskScorer(broken, lambda r: None)
    scorer.add("Patient/P", T0, [("8867-4", 80.0)])
    assert scorer.flush() == [] and scorer.flush() == [] and calls == [1, 1]


def test_background_flush_and_arguments():
    calls, written = [], []
    scorer = RiskScorer(stub(calls), written.extend, flush_interval_s=0.05)
    scorer.start()
    scorer.add("Patient/P", T0, [("9279-1", 30.0)])
    import time
    deadline = time.monotonic() + 5
    while not written and time.monotonic() < deadline:
        time.sleep(0.02)
    scorer.stop()
    assert len(written) == 1
    with pytest.raises(ValueError, match="max_batch"):
        RiskScorer(stub([]), print, max_batch=0)


def test_window_keeps_only_the_last_hour_and_matches_the_training_features():
    from models.vitals_features import WINDOW_S, window_features

    batches, samples = [], []
    scorer = RiskScorer(lambda b: batches.append(b) or np.full((len(b), 1), 0.5), lambda r: None)
    rng = np.random.default_rng(0)
    for s in range(2 * int(WINDOW_S)):  # two hours of a 1 Hz monitor
        rows = [("8867-4", float(rng.normal(80, 10))), ("9279-1", float(rng.normal(16, 2)))]
        samples += [(T0 + s, code, value) for code, value in rows]
        scorer.add("Patient/P", T0 + s, rows)
    scorer.flush()
    end = T0 + 2 * WINDOW_S - 1
    assert np.array_equal(batches[0][0], window_features(samples, end))
    kept = scorer._history["Patient/P"]
    assert len(kept.times) - kept.start == 2 * int(WINDOW_S)  # (end - 1 h, end] at 1 Hz, 2 vitals
    assert len(kept.times) <= 2 * int(WINDOW_S) * 4 / 3  # older samples are let go, not only skipped


def test_risk_assessment_has_a_coded_outcome_and_its_basis():
    from datetime import datetime, timezone

    from iomt.observations import vital_observation_id

    written = []
    scorer = RiskScorer(stub([]), written.extend)
    scorer.add("Patient/P", T0 - 7200, [("8867-4", 70.0)])  # outside the last hour at the end
    scorer.add("Patient/P", T0, [("8867-4", 120.0), ("8480-6", 118.0), ("8462-4", 76.0)])
    scorer.add("Patient/P", T0 + 60, [("8867-4", 118.0)])
    (risk,) = scorer.flush()
    RiskAssessment.model_validate(risk)
    outcome = risk["prediction"][0]["outcome"]
    assert outcome["coding"] == [{"system": "http://snomed.info/sct", "code": "271299001",
                                  "display": "Patient's condition worsened"}]
    assert 0.0 <= risk["prediction"][0]["probabilityDecimal"] <= 1.0
    at = lambda s: datetime.fromtimestamp(s, timezone.utc)  # noqa: E731
    assert risk["basis"] == [
        {"reference": f"Observation/{vital_observation_id('Patient/P', '8480-6', at(T0))}"},
        {"reference": f"Observation/{vital_observation_id('Patient/P', '8867-4', at(T0 + 60))}"},
    ], "the newest reading of each vital in the window, in LOINC order; both pressures share the panel"
