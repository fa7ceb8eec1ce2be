"""Deterioration risk: per-patient vitals history, batched windows, FHIR RiskAssessments.

The bridge hands every vitals message to :meth:`RiskScorer.add`. A patient becomes due for a new
prediction when its newest measurement is ``min_interval_s`` past the end of its last scored
window. A background thread flushes every ``flush_interval_s`` (sooner when ``max_batch`` patients
are due): it builds each due patient's one-hour window with
:func:`models.vitals_features.window_features_arrays`, stacks many beds into one ``(N, 12, 10)`` array and
calls ``predict`` once per batch — one Ray Serve request for many beds (:func:`ray_predictor`).
Each probability becomes a FHIR R4 RiskAssessment whose id is a UUID 5 over (patient, model, window
end), so a recomputation updates rather than duplicates.  ``prediction.outcome`` is coded (SNOMED
CT 271299001 "Patient's condition worsened", the vitals model's finding in its metadata) and
``prediction.probabilityDecimal`` is the calibrated probability as a decimal in [0, 1], never a
percentage (R4 allows either, up to 100, invariant ras-2; the CapabilityStatement says which).  ``basis`` references the vital-sign Observations the window rests on: the
newest reading of each vital sign in the window (systolic and diastolic: their blood-pressure
panel), by the deterministic ids :func:`iomt.observations.vital_observation_id` gives.
"""
from __future__ import annotations

import logging
import threading
import uuid
from array import array
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from iomt.config import IomtConfig
from iomt.observations import vital_observation_id
from kernel.periodic import PeriodicWorker
from models.vitals_features import LOINC_TO_INDEX, WINDOW_S, window_features_arrays

log = logging.getLogger("medgate.iomt.risk")

Predictor = Callable[[np.ndarray], np.ndarray]
Sink = Callable[[list[dict[str, Any]]], None]
_IOMT = IomtConfig()  # the ``iomt:`` section's defaults, the constructor's defaults
RISK_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:iomt:riskassessment")
OUTCOME_TEXT = "Clinical deterioration (vitals model)"
#: SNOMED CT 271299001 "Patient's condition worsened": the finding of models/vitals metadata.
DETERIORATION = {"system": "http://snomed.info/sct", "code": "271299001",
                 "display": "Patient's condition worsened"}


def ray_predictor(handle) -> Predictor:
    """A predictor that sends the whole batch as one request to a Ray Serve deployment handle."""
    return lambda batch: np.asarray(handle.remote(batch).result()["probability"], dtype=np.float64).reshape(-1)


def risk_assessment_id(patient_ref: str, model: str, end: datetime) -> str:
    instant = end.astimezone(timezone.utc).isoformat()
    return str(uuid.uuid5(RISK_ID_NAMESPACE, f"{patient_ref}|{model}|{instant}"))


def risk_assessment(patient_ref: str, probability: float, end: datetime, model: str,
                    version: str | None, basis: list[str] = (), *,
                    outcome: dict[str, str] = DETERIORATION) -> dict[str, Any]:
    """FHIR R4 RiskAssessment for one window ending at ``end``; ``basis``: ids of the Observations
    it rests on; ``outcome``: the coding of the predicted outcome."""
    method = model if version is None else f"{model} {version}"
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": risk_assessment_id(patient_ref, model, end),
        "status": "final",
        "subject": {"reference": patient_ref},
        "occurrenceDateTime": end.isoformat(),
        "method": {"text": f"medgate deterioration model {method} on the last hour of vitals"},
        "prediction": [{"outcome": {"coding": [dict(outcome)], "text": OUTCOME_TEXT},
                        "probabilityDecimal": round(float(probability), 6)}],
    }
    if basis:
        resource["basis"] = [{"reference": f"Observation/{obs_id}"} for obs_id in basis]
    return resource


class _Window:
    """One patient's samples of the last hour as parallel arrays (time, feature index, value): ~18
    bytes a sample instead of ~90 for a tuple in a deque; an hour of 150 beds at 1 Hz with three
    vitals is ~28-36 MiB instead of ~137 MiB. Samples older than the window are dropped from the front."""

    __slots__ = ("times", "features", "values", "start")

    def __init__(self) -> None:
        self.times, self.features, self.values = array("d"), array("b"), array("d")
        self.start = 0  # index of the oldest kept sample

    def add(self, time_s: float, rows: list[tuple[int, float]]) -> None:
        for feature, value in rows:
            self.times.append(time_s)
            self.features.append(feature)
            self.values.append(value)

    def drop_until(self, cutoff_s: float) -> None:
        """Forget the oldest samples while they are at or before ``cutoff_s``."""
        times, start = self.times, self.start
        while start < len(times) and times[start] <= cutoff_s:
            start += 1
        if start > 256 and 4 * start > len(times):  # compact now and then: at most 1/4 is dead
            del self.times[:start], self.features[:start], self.values[:start]
            start = 0
        self.start = start

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the kept samples: times (epoch s), feature indices, values."""
        s = self.start
        return (np.array(self.times[s:], dtype=np.float64), np.array(self.features[s:], dtype=np.int64),
                np.array(self.values[s:], dtype=np.float64))


def _basis(patient_ref: str, readings: dict[str, float], end_s: float) -> list[str]:
    """Ids of the Observations of the newest reading of each vital sign within the window ending
    at ``end_s``, once each (both pressures map to one panel), in LOINC order."""
    ids = (vital_observation_id(patient_ref, loinc, datetime.fromtimestamp(at_s, tz=timezone.utc))
           for loinc, at_s in sorted(readings.items()) if end_s - WINDOW_S < at_s <= end_s)
    return list(dict.fromkeys(i for i in ids if i is not None))


class RiskScorer(PeriodicWorker):
    """Batching deterioration scorer.

    Parameters
    ----------
    predict
        ``predict(batch (N, 12, 10) float32) -> (N, 1)`` probabilities.
    sink
        Receives the RiskAssessments of each flush (the bridge's resource writer).
    flush_interval_s, max_batch, min_interval_s
        See the module docstring; defaults: the ``iomt.risk`` section's.
    """

    def __init__(self, predict: Predictor, sink: Sink, *, flush_interval_s: float = _IOMT.risk.flush_interval_s,
                 max_batch: int = _IOMT.risk.max_batch, min_interval_s: float = _IOMT.risk.min_interval_s,
                 model: str = "vitals", version: str | None = None) -> None:
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be positive, {flush_interval_s} is given.")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, {max_batch} is given.")
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, {min_interval_s} is given.")
        self.predict, self.sink = predict, sink
        self.flush_interval_s, self.max_batch = flush_interval_s, max_batch
        self.min_interval_s, self.model, self.version = min_interval_s, model, version
        self._history: dict[str, _Window] = {}
        self._latest: dict[str, dict[str, float]] = {}  # patient -> LOINC -> newest reading, epoch s
        self._newest: dict[str, float] = {}
        self._scored_end: dict[str, float] = {}
        self._due: set[str] = set()
        self._lock = threading.Lock()
        super().__init__(flush_interval_s)
        self.batches: deque[int] = deque(maxlen=1024)  # latest batch sizes sent to predict (monitoring, tests)

    def add(self, patient_ref: str, time_s: float, samples: list[tuple[str, float]]) -> None:
        """Record ``(loinc, value)`` samples measured at epoch ``time_s`` for a patient."""
        rows = [(LOINC_TO_INDEX[loinc], value) for loinc, value in samples if loinc in LOINC_TO_INDEX]
        if not rows:
            return
        with self._lock:
            history = self._history.get(patient_ref)
            if history is None:
                history = self._history[patient_ref] = _Window()
            history.add(time_s, rows)
            latest = self._latest.setdefault(patient_ref, {})
            for loinc, _ in samples:
                if loinc in LOINC_TO_INDEX and latest.get(loinc, time_s) <= time_s:
                    latest[loinc] = time_s
            newest = max(self._newest.get(patient_ref, time_s), time_s)
            self._newest[patient_ref] = newest
            history.drop_until(newest - WINDOW_S)
            last = self._scored_end.get(patient_ref)
            if last is None or newest - last >= self.min_interval_s:
                self._due.add(patient_ref)
                if len(self._due) >= self.max_batch:
                    self._wake.set()

    def flush(self) -> list[dict[str, Any]]:
        """Predict every due patient, ``max_batch`` per call; returns the RiskAssessments."""
        with self._lock:
            due = sorted(self._due)
            self._due.clear()
            jobs = [(ref, self._newest[ref], self._history[ref].arrays()) for ref in due]
            readings = {ref: dict(self._latest.get(ref, {})) for ref in due}
        resources: list[dict[str, Any]] = []
        for start in range(0, len(jobs), self.max_batch):
            chunk = jobs[start:start + self.max_batch]
            batch = np.stack([window_features_arrays(*samples, end) for _, end, samples in chunk])
            try:
                probs = np.asarray(self.predict(batch), dtype=np.float64).reshape(len(chunk), -1)[:, 0]
            except Exception:  # noqa: BLE001 - keep them due; the next flush retries
                log.exception("vitals model failed for %d patients; retrying next flush", len(chunk))
                with self._lock:
                    self._due.update(ref for ref, _, _ in chunk)
                continue
            self.batches.append(len(chunk))
            for (ref, end_s, _), p in zip(chunk, probs):
                if not np.isfinite(p) or not 0.0 <= p <= 1.0:
                    log.error("vitals model returned %r for %s: not a probability, dropped", p, ref)
                    continue
                end = datetime.fromtimestamp(end_s, tz=timezone.utc)
                resources.append(risk_assessment(ref, float(p), end, self.model, self.version,
                                                 _basis(ref, readings[ref], end_s)))
                with self._lock:
                    self._scored_end[ref] = end_s
        if resources:
            self.sink(resources)
        return resources

    worker_name = "medgate-risk"

    def tick(self) -> None:
        self.flush()

    def stop(self) -> None:
        super().stop()
        self.flush()
