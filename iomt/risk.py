"""Deterioration risk: per-patient vitals history, batched windows, FHIR RiskAssessments.

The bridge hands every vitals message to :meth:`RiskScorer.add`. A patient becomes due for a new
prediction when its newest measurement is ``min_interval_s`` past the end of its last scored
window. A background thread flushes every ``flush_interval_s`` (sooner when ``max_batch`` patients
are due): it builds each due patient's one-hour window with
:func:`models.vitals_features.window_features`, stacks many beds into one ``(N, 12, 10)`` array and
calls ``predict`` once per batch — one Ray Serve request for many beds (:func:`ray_predictor`).
Each probability becomes a FHIR R4 RiskAssessment whose id is a UUID 5 over (patient, model, window
end), so a recomputation updates rather than duplicates.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from models.vitals_features import LOINC_TO_INDEX, WINDOW_S, window_features
from serving.worker import PeriodicWorker

log = logging.getLogger("medgate.iomt.risk")

Predictor = Callable[[np.ndarray], np.ndarray]
Sink = Callable[[list[dict[str, Any]]], None]
RISK_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:iomt:riskassessment")
OUTCOME_TEXT = "Clinical deterioration (vitals model)"


def ray_predictor(handle) -> Predictor:
    """A predictor that sends the whole batch as one request to a Ray Serve deployment handle."""
    return lambda batch: np.asarray(handle.remote(batch).result()["probability"], dtype=np.float64).reshape(-1)


def risk_assessment_id(patient_ref: str, model: str, end: datetime) -> str:
    instant = end.astimezone(timezone.utc).isoformat()
    return str(uuid.uuid5(RISK_ID_NAMESPACE, f"{patient_ref}|{model}|{instant}"))


def risk_assessment(patient_ref: str, probability: float, end: datetime, model: str,
                    version: str | None) -> dict[str, Any]:
    """FHIR R4 RiskAssessment for one window ending at ``end``."""
    method = model if version is None else f"{model} {version}"
    return {
        "resourceType": "RiskAssessment",
        "id": risk_assessment_id(patient_ref, model, end),
        "status": "final",
        "subject": {"reference": patient_ref},
        "occurrenceDateTime": end.isoformat(),
        "method": {"text": f"medgate deterioration model {method} on the last hour of vitals"},
        "prediction": [{"outcome": {"text": OUTCOME_TEXT},
                        "probabilityDecimal": round(float(probability), 6)}],
    }


class RiskScorer(PeriodicWorker):
    """Batching deterioration scorer.

    Parameters
    ----------
    predict
        ``predict(batch (N, 12, 10) float32) -> (N, 1)`` probabilities.
    sink
        Receives the RiskAssessments of each flush (the bridge's resource writer).
    flush_interval_s, max_batch, min_interval_s
        See the module docstring.
    """

    def __init__(self, predict: Predictor, sink: Sink, *, flush_interval_s: float = 1.0,
                 max_batch: int = 256, min_interval_s: float = 60.0, model: str = "vitals",
                 version: str | None = None) -> None:
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be positive, {flush_interval_s} is given.")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, {max_batch} is given.")
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, {min_interval_s} is given.")
        self.predict, self.sink = predict, sink
        self.flush_interval_s, self.max_batch = flush_interval_s, max_batch
        self.min_interval_s, self.model, self.version = min_interval_s, model, version
        self._history: dict[str, deque[tuple[float, str, float]]] = {}
        self._newest: dict[str, float] = {}
        self._scored_end: dict[str, float] = {}
        self._due: set[str] = set()
        self._lock = threading.Lock()
        super().__init__(flush_interval_s)
        self.batches: list[int] = []  # batch sizes sent to predict, for monitoring and tests

    def add(self, patient_ref: str, time_s: float, samples: list[tuple[str, float]]) -> None:
        """Record ``(loinc, value)`` samples measured at epoch ``time_s`` for a patient."""
        rows = [(time_s, loinc, value) for loinc, value in samples if loinc in LOINC_TO_INDEX]
        if not rows:
            return
        with self._lock:
            history = self._history.setdefault(patient_ref, deque())
            history.extend(rows)
            newest = max(self._newest.get(patient_ref, time_s), time_s)
            self._newest[patient_ref] = newest
            while history and history[0][0] <= newest - WINDOW_S:
                history.popleft()
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
            jobs = [(ref, self._newest[ref], list(self._history[ref])) for ref in due]
        resources: list[dict[str, Any]] = []
        for start in range(0, len(jobs), self.max_batch):
            chunk = jobs[start:start + self.max_batch]
            batch = np.stack([window_features(samples, end) for _, end, samples in chunk])
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
                resources.append(risk_assessment(ref, float(p), end, self.model, self.version))
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
