"""The vitals feature contract shared by training and the live IoMT bridge.

A deterioration model sees the last hour of one patient's bedside vitals as a fixed grid:
``WINDOW_STEPS`` bins of ``STEP_S`` seconds (12 x 5 min), one column per vital sign in
``FEATURES`` plus one missingness column per vital sign.  Training and serving both build that grid
with :func:`window_features`, so the model always sees inputs prepared the way it was trained on.

Vital signs are identified by their LOINC codes (FHIR R4 vital-signs profile, see
:mod:`models.clinical_codes`); SpO2 is accepted as 2708-6 or as the pulse-oximetry code 59408-5.  Values must
be in the profile's canonical UCUM units: /min, %, mm[Hg], Cel.

Grid layout, for ``F = len(FEATURES)``::

    out[t, f]      normalised mean of feature f in bin t (or carried forward, or 0)
    out[t, F + f]  1.0 when feature f has no value in bin t even after carry-forward, else 0.0

Bin ``t`` (0 = oldest, ``WINDOW_STEPS - 1`` = latest) covers the half-open interval
``(end_s - (WINDOW_STEPS - t) * STEP_S, end_s - (WINDOW_STEPS - 1 - t) * STEP_S]``, so a sample
stamped exactly ``end_s`` is in the latest bin and one stamped ``end_s - WINDOW_S`` is outside.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from models import clinical_codes as codes

#: Model features, in channel order.
FEATURES: tuple[str, ...] = ("heart_rate", "respiratory_rate", "spo2", "systolic_bp", "temperature")

#: LOINC code(s) accepted for each feature (first one is the canonical code).
FEATURE_LOINC: dict[str, tuple[str, ...]] = {
    "heart_rate": (codes.HEART_RATE,),  # 8867-4
    "respiratory_rate": (codes.RESPIRATORY_RATE,),  # 9279-1
    "spo2": (codes.OXYGEN_SATURATION, codes.OXYGEN_SATURATION_PULSE_OXIMETRY),  # 2708-6, 59408-5
    "systolic_bp": (codes.SYSTOLIC_BP,),  # 8480-6
    "temperature": (codes.BODY_TEMPERATURE,),  # 8310-5
}

#: Canonical UCUM unit of each feature's values.
FEATURE_UNITS: dict[str, str] = {
    "heart_rate": codes.PER_MINUTE,
    "respiratory_rate": codes.PER_MINUTE,
    "spo2": codes.PERCENT,
    "systolic_bp": codes.MM_HG,
    "temperature": codes.CELSIUS,
}

#: Fixed normalisation (mean, standard deviation) in the feature's unit, adult ward physiology.
#: Never refit on data: changing these changes the model's input and needs a new model version.
NORMALISATION: dict[str, tuple[float, float]] = {
    "heart_rate": (80.0, 15.0),
    "respiratory_rate": (16.0, 4.0),
    "spo2": (96.0, 3.0),
    "systolic_bp": (120.0, 20.0),
    "temperature": (37.0, 0.6),
}

WINDOW_STEPS = 12  # bins per window
STEP_S = 300  # seconds per bin (5 min)
WINDOW_S = WINDOW_STEPS * STEP_S  # 3600 s, one hour
N_FEATURES = len(FEATURES)
N_CHANNELS = 2 * N_FEATURES  # values, then missingness flags

#: LOINC code -> feature index.
LOINC_TO_INDEX: dict[str, int] = {
    loinc: i for i, name in enumerate(FEATURES) for loinc in FEATURE_LOINC[name]
}

_MEAN = np.array([NORMALISATION[f][0] for f in FEATURES], dtype=np.float64)
_SD = np.array([NORMALISATION[f][1] for f in FEATURES], dtype=np.float64)


def _check_end(end_s: object) -> float:
    if isinstance(end_s, bool) or not isinstance(end_s, (int, float, np.integer, np.floating)) \
            or not np.isfinite(end_s):
        raise ValueError(f"`end_s` must be a finite number of epoch seconds, {end_s!r} is given.")
    return float(end_s)


def window_features_arrays(times_s: np.ndarray, feature_index: np.ndarray, values: np.ndarray,
                           end_s: float) -> np.ndarray:
    """:func:`window_features` on parallel arrays (the vectorised core, used by training).

    Parameters
    ----------
    times_s
        Sample times, epoch seconds, shape ``(n,)``.
    feature_index
        Index into :data:`FEATURES` of each sample, shape ``(n,)``; negative means "not a model
        feature" and the sample is ignored.
    values
        Sample values in the feature's canonical unit, shape ``(n,)``; non-finite values are ignored.
    end_s
        End of the window (inclusive), epoch seconds.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(WINDOW_STEPS, N_CHANNELS)``; see the module docstring.
    """
    end = _check_end(end_s)
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    idx = np.asarray(feature_index, dtype=np.int64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not (t.shape == idx.shape == v.shape):
        raise ValueError(f"`times_s`, `feature_index` and `values` must have the same length, "
                         f"{t.shape}, {idx.shape} and {v.shape} are given.")
    if (idx >= N_FEATURES).any():
        raise ValueError(f"`feature_index` must be < {N_FEATURES}, {int(idx.max())} is given.")

    age_s = end - t
    keep = (idx >= 0) & np.isfinite(v) & np.isfinite(t) & (age_s >= 0) & (age_s < WINDOW_S)
    # Bin of each kept sample: 0 = oldest, WINDOW_STEPS - 1 = the bin ending at end_s.
    bins = WINDOW_STEPS - 1 - np.floor(age_s[keep] / STEP_S).astype(np.int64)
    flat = bins * N_FEATURES + idx[keep]
    size = WINDOW_STEPS * N_FEATURES
    sums = np.bincount(flat, weights=v[keep], minlength=size).astype(np.float64).reshape(
        WINDOW_STEPS, N_FEATURES)
    counts = np.bincount(flat, minlength=size).reshape(WINDOW_STEPS, N_FEATURES)
    observed = counts > 0
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=observed)
    normalised = (means - _MEAN) / _SD

    # Last observation carried forward along time, within the window only.
    steps = np.arange(WINDOW_STEPS)[:, None]
    last = np.maximum.accumulate(np.where(observed, steps, -1), axis=0)
    filled = last >= 0
    carried = np.take_along_axis(normalised, np.maximum(last, 0), axis=0)

    out = np.zeros((WINDOW_STEPS, N_CHANNELS), dtype=np.float32)
    out[:, :N_FEATURES] = np.where(filled, carried, 0.0)
    out[:, N_FEATURES:] = ~filled
    return out


def window_features(samples: Iterable[tuple[float, str, float]], end_s: float) -> np.ndarray:
    """The model input grid for the hour ending at ``end_s``.

    Per 5-minute bin the mean of the samples in that bin, normalised with the fixed
    :data:`NORMALISATION`; an empty bin takes the last earlier bin's value within the window (last
    observation carried forward); a feature with no observation up to a bin gets value 0 and
    missingness flag 1 in the second half of the channels.  Samples outside the window
    ``(end_s - WINDOW_S, end_s]``, with unknown LOINC codes, or with non-finite values are ignored.

    Parameters
    ----------
    samples
        ``(epoch_s, loinc, value)`` triples in any order, values in the canonical UCUM units of
        :data:`FEATURE_UNITS` (SpO2 as %, not as a fraction).
    end_s
        End of the window (inclusive), epoch seconds.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(WINDOW_STEPS, 2 * len(FEATURES))``.

    Examples
    --------
    >>> x = window_features([(1000.0, "8867-4", 95.0)], end_s=1000.0)
    >>> float(x[-1, 0]), float(x[-1, 5]), float(x[0, 5])
    (1.0, 0.0, 1.0)
    """
    rows = list(samples)
    n = len(rows)
    try:
        times = np.fromiter((r[0] for r in rows), dtype=np.float64, count=n)
        values = np.fromiter((r[2] for r in rows), dtype=np.float64, count=n)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"`samples` must be (epoch_s, loinc, value) triples of numbers and a "
                         f"LOINC string; {exc} ({rows[:3]!r}... is given).") from exc
    index = np.fromiter((LOINC_TO_INDEX.get(r[1], -1) for r in rows), dtype=np.int64, count=n)
    return window_features_arrays(times, index, values, end_s)
