"""Generated bedside vitals courses (stable or deteriorating) as medgate MQTT payloads.

Values are LOINC-coded with UCUM units per ``iomt/schemas/vitals.schema.json``.  A deteriorating
course drifts linearly from normal physiology towards sepsis-like values (tachypnoea, hypoxaemia,
tachycardia, hypotension, fever) with measurement noise; a stable course only has the noise.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

#: (LOINC code, UCUM unit, normal value, deteriorated value, noise SD, decimals)
_COURSE = (
    ("9279-1", "/min", 15.0, 27.0, 0.8, 0),   # respiratory rate
    ("59408-5", "%", 97.0, 89.0, 0.6, 0),     # SpO2 by pulse oximetry
    ("8867-4", "/min", 78.0, 128.0, 2.0, 0),  # heart rate
    ("8480-6", "mm[Hg]", 124.0, 94.0, 2.5, 0),  # systolic BP
    ("8462-4", "mm[Hg]", 78.0, 58.0, 2.0, 0),   # diastolic BP
    ("8310-5", "Cel", 36.8, 38.7, 0.05, 1),   # body temperature
)


def vitals_course(n: int, *, patient_id: str, deteriorating: bool, seed: int = 0,
                  start: datetime | None = None, interval_s: float = 1.0,
                  device: str | None = None) -> list[dict]:
    """``n`` payloads, ``interval_s`` apart, for one patient."""
    if n < 1:
        raise ValueError(f"`n` must be positive, {n} is given.")
    rng = np.random.default_rng(seed)
    start = start or datetime.now(timezone.utc).replace(microsecond=0)
    payloads = []
    for i in range(n):
        frac = i / max(n - 1, 1) if deteriorating else 0.0
        vitals = []
        for code, unit, normal, worse, sd, decimals in _COURSE:
            value = round(float(normal + (worse - normal) * frac + rng.normal(0, sd)), decimals)
            vitals.append({"code": code, "value": value if decimals else int(value), "unit": unit})
        payload = {"patient": {"id": patient_id}, "time": (start + timedelta(seconds=i * interval_s)).isoformat(),
                   "vitals": vitals, "on_oxygen": False, "consciousness": "A"}
        if device:
            payload["device"] = device
        payloads.append(payload)
    return payloads
