"""Generated ward stays and labelled one-hour vitals windows for the ``vitals`` deterioration model.

Each patient has a seeded stay of ``stay_h`` hours of minute-level physiology: a personal baseline
(some patients are chronically abnormal: COPD-like low SpO2 and high respiratory rate, fast atrial
fibrillation, low blood pressure), slow autocorrelated drift, transient harmless episodes (pain,
mobilising) and measurement noise with artefacts (a single desaturation from a loose probe, a
spurious blood pressure).  A deteriorating patient follows one of three patterns towards an event
(the time the patient would need escalation):

* ``sepsis``: tachycardia, tachypnoea, fever, hypotension, mild desaturation;
* ``respiratory``: tachypnoea and marked desaturation, tachycardia;
* ``haemorrhage``: marked tachycardia and hypotension, mild tachypnoea, slight cooling;

with a random onset-to-event duration (1.5-8 h), ramp shape (linear to slow-then-fast) and
severity, so some deteriorations are obvious only in the last hour.

Sampling follows the ward: heart rate and SpO2 every minute from the oximeter (with probe-off
dropouts and dropped samples), respiratory rate every minute from the monitor for some patients and
with the manual observations for the others, blood pressure every 15, 30 or 60 min (every 15 min
once a deterioration is under way), temperature every 1-4 h.

A window ending at ``end_s`` is labelled 1 when the event happens within ``horizon_s`` after it;
windows at or after the event are not produced.  The features are built by
:func:`models.vitals_features.window_features_arrays`, the same code the live bridge uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from iomt.news2 import News2Input, score
from models.vitals_features import (FEATURES, N_CHANNELS, WINDOW_S, WINDOW_STEPS,
                                    window_features_arrays)

COURSES: tuple[str, ...] = ("stable", "sepsis", "respiratory", "haemorrhage")
HORIZON_S = 4 * 3600
START_EPOCH_S = 1_700_000_000.0

HR, RR, SPO2, SBP, TEMP = range(len(FEATURES))
_BASE_MEAN = np.array([78.0, 15.5, 96.8, 126.0, 36.8])
_BASE_SD = np.array([11.0, 2.0, 1.2, 16.0, 0.3])
_DRIFT_SD = np.array([4.0, 1.2, 0.7, 6.0, 0.15])  # stationary SD of the slow drift
_NOISE_SD = np.array([3.0, 1.5, 0.9, 5.0, 0.1])  # measurement noise
_DECIMALS = (0, 0, 0, 0, 1)
#: Change at the event (HR, RR, SpO2, SBP, temperature) per deterioration pattern.
_EVENT_DELTA = {
    "sepsis": np.array([38.0, 10.0, -4.0, -32.0, 1.9]),
    "respiratory": np.array([22.0, 14.0, -11.0, 5.0, 0.4]),
    "haemorrhage": np.array([45.0, 7.0, -1.5, -48.0, -0.4]),
}


@dataclass(frozen=True)
class PatientStay:
    """One generated stay: samples sorted by time, and the event time (``None`` when stable)."""

    course: str
    start_s: float
    stay_s: float
    times_s: np.ndarray
    feature_index: np.ndarray
    values: np.ndarray
    event_s: float | None


def _drift(rng: np.random.Generator, n_min: int, tau_min: float = 60.0) -> np.ndarray:
    """AR(1) drift per feature, shape ``(n_min, F)``, stationary SD ``_DRIFT_SD``."""
    a = np.exp(-1.0 / tau_min)
    shocks = rng.normal(0.0, 1.0, (n_min, len(FEATURES))) * _DRIFT_SD * np.sqrt(1 - a * a)
    shocks[0] = rng.normal(0.0, 1.0, len(FEATURES)) * _DRIFT_SD
    return lfilter([1.0], [1.0, -a], shocks, axis=0)


def _schedule(rng: np.random.Generator, n_min: int, every_min: float, jitter_min: float) -> np.ndarray:
    """Minute indices of a regular schedule starting at 0 with jitter."""
    ticks = np.arange(0.0, n_min, every_min)
    ticks[1:] += rng.uniform(-jitter_min, jitter_min, len(ticks) - 1)
    return np.unique(np.clip(np.round(ticks), 0, n_min - 1).astype(np.int64))


def generate_stay(rng: np.random.Generator, course: str, *, stay_h: float = 14.0,
                  start_s: float = START_EPOCH_S) -> PatientStay:
    """One patient's stay following ``course`` (one of :data:`COURSES`)."""
    if course not in COURSES:
        raise ValueError(f"`course` must be one of {COURSES}, {course!r} is given.")
    if not stay_h >= 2.0:
        raise ValueError(f"`stay_h` must be at least 2 hours, {stay_h!r} is given.")
    n_min = int(stay_h * 60)
    minutes = np.arange(n_min, dtype=np.float64)
    base = rng.normal(_BASE_MEAN, _BASE_SD)
    chronic = rng.random()
    if chronic < 0.07:  # COPD-like
        base[SPO2], base[RR] = rng.uniform(90.5, 93.0), rng.uniform(19.0, 23.0)
    elif chronic < 0.12:  # fast atrial fibrillation
        base[HR] = rng.uniform(98.0, 118.0)
    elif chronic < 0.16:  # low blood pressure
        base[SBP] = rng.uniform(92.0, 104.0)
    truth = base + _drift(rng, n_min)

    for _ in range(rng.poisson(0.12 * stay_h)):  # harmless transient episodes
        t0, length = rng.uniform(0, n_min), rng.uniform(10, 40)
        bump = np.clip(1 - np.abs(minutes - t0 - length / 2) / (length / 2), 0, None)[:, None]
        truth += bump * np.array([rng.uniform(15, 35), rng.uniform(2, 6), -rng.uniform(0, 2), rng.uniform(5, 20), 0.0])

    event_s = None
    severity = np.zeros(n_min)
    if course != "stable":
        event_min = rng.uniform(2.0 * 60, (stay_h + 3.0) * 60)
        duration_min = rng.uniform(1.5 * 60, 8.0 * 60)
        ramp = np.clip((minutes - (event_min - duration_min)) / duration_min, 0, 1) ** rng.uniform(1.0, 2.2)
        severity = ramp
        truth += ramp[:, None] * _EVENT_DELTA[course] * rng.uniform(0.7, 1.3)
        event_s = start_s + event_min * 60.0

    # When each feature is measured (minute indices).
    oximeter = np.ones(n_min, dtype=bool)
    for _ in range(rng.poisson(0.3 * stay_h)):  # probe off
        t0 = rng.integers(1, n_min)
        oximeter[t0:t0 + rng.integers(5, 45)] = False
    oximeter &= rng.random(n_min) > 0.03
    oximeter[0] = True
    bp_every = float(rng.choice([15.0, 30.0, 60.0]))
    bp = _schedule(rng, n_min, bp_every, 3.0)
    urgent = np.flatnonzero(severity > 0.35)
    if urgent.size:
        frequent = _schedule(rng, n_min, 15.0, 2.0)
        bp = np.union1d(bp[bp < urgent[0]], frequent[frequent >= urgent[0]])
    rr = np.arange(n_min) if rng.random() < 0.6 else bp
    temp = _schedule(rng, n_min, rng.uniform(60.0, 240.0), 10.0)
    when = {HR: np.flatnonzero(oximeter), SPO2: np.flatnonzero(oximeter), RR: rr, SBP: bp, TEMP: temp}

    times, index, values = [], [], []
    for f, mins in when.items():
        v = truth[mins, f] + rng.normal(0.0, _NOISE_SD[f], mins.size)
        glitch = rng.random(mins.size) < (0.004 if f in (HR, SPO2) else 0.03)
        if f == SPO2:
            v[glitch] -= rng.uniform(5, 15, glitch.sum())  # loose probe: one low reading
        elif f == HR:
            v[glitch] += rng.choice([-1.0, 1.0], glitch.sum()) * rng.uniform(20, 40, glitch.sum())
        elif f in (SBP, RR):
            v[glitch] += rng.choice([-1.0, 1.0], glitch.sum()) * rng.uniform(8, 30, glitch.sum()) / (1 + 3 * (f == RR))
        if f == SPO2:
            v = np.minimum(v, 100.0)
        times.append(start_s + mins * 60.0 + rng.uniform(0, 59, mins.size))
        index.append(np.full(mins.size, f))
        values.append(np.round(v, _DECIMALS[f]))
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    return PatientStay(course, start_s, stay_h * 3600.0, t[order], np.concatenate(index)[order],
                       np.concatenate(values)[order], event_s)


def cohort(n_patients: int, seed: int, *, deteriorating_fraction: float = 0.5,
           stay_h: float = 14.0) -> list[PatientStay]:
    """``n_patients`` seeded stays; deteriorating ones split evenly among the three patterns."""
    if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < 1:
        raise ValueError(f"`n_patients` must be a positive integer, {n_patients!r} is given.")
    if not 0.0 <= deteriorating_fraction <= 1.0:
        raise ValueError(f"`deteriorating_fraction` must be within [0, 1], {deteriorating_fraction!r} is given.")
    rng = np.random.default_rng(seed)
    stays = []
    for i in range(n_patients):
        course = COURSES[1 + int(rng.integers(3))] if rng.random() < deteriorating_fraction else "stable"
        stays.append(generate_stay(rng, course, stay_h=stay_h, start_s=START_EPOCH_S + i * 86400.0))
    return stays


def news2_total(stay: PatientStay, end_s: float) -> int:
    """NEWS2 total from the latest value of each parameter at or before ``end_s`` (alert, on air).

    Uses the whole stay so far, not only the window: the fairest NEWS2 a ward would chart.
    """
    before = stay.times_s <= end_s
    latest: dict[int, float | None] = {}
    for f in range(len(FEATURES)):
        hits = np.flatnonzero(before & (stay.feature_index == f))
        latest[f] = float(stay.values[hits[-1]]) if hits.size else None
    return score(News2Input(respiratory_rate_per_min=latest[RR], spo2_percent=latest[SPO2], on_oxygen=False,
                            systolic_bp_mmhg=latest[SBP], pulse_per_min=latest[HR], consciousness="A",
                            temperature_cel=latest[TEMP])).total


def labelled_windows(stays: list[PatientStay], *, horizon_s: float = HORIZON_S, stride_s: float = 1800.0,
                     first_end_s: float = 3600.0) -> dict[str, np.ndarray]:
    """Windows every ``stride_s`` of each stay, up to its end or its event.

    Returns
    -------
    dict
        ``window`` (N, WINDOW_STEPS, N_CHANNELS) float32, ``label`` (N,) float32 (event within
        ``horizon_s`` after the window end), ``news2`` (N,) float32, ``patient`` (N,) int64.
    """
    if not horizon_s > 0 or not stride_s > 0:
        raise ValueError(f"`horizon_s` and `stride_s` must be positive, {horizon_s!r} and {stride_s!r} are given.")
    windows, labels, news2, patient = [], [], [], []
    for p, stay in enumerate(stays):
        last = stay.start_s + stay.stay_s
        if stay.event_s is not None:
            last = min(last, stay.event_s - 1.0)
        for end in np.arange(stay.start_s + first_end_s, last + 1e-6, stride_s):
            lo, hi = np.searchsorted(stay.times_s, [end - WINDOW_S, end], side="right")
            windows.append(window_features_arrays(stay.times_s[lo:hi], stay.feature_index[lo:hi],
                                                  stay.values[lo:hi], end))
            labels.append(stay.event_s is not None and stay.event_s - end <= horizon_s)
            news2.append(news2_total(stay, end))
            patient.append(p)
    if not windows:
        empty = np.zeros((0, WINDOW_STEPS, N_CHANNELS), np.float32)
        return {"window": empty, "label": np.zeros(0, np.float32), "news2": np.zeros(0, np.float32),
                "patient": np.zeros(0, np.int64)}
    return {"window": np.stack(windows), "label": np.asarray(labels, np.float32),
            "news2": np.asarray(news2, np.float32), "patient": np.asarray(patient, np.int64)}
