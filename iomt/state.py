"""Latest value per NEWS2 parameter and patient, for scoring late and partial messages.

Devices send parameters at different rates (SpO2 every second, blood pressure every 15 minutes)
and messages arrive late or out of order. NEWS2 is therefore scored from the latest value of each
parameter that is no older than ``staleness_s`` at the scoring time, not from one message alone.

A message older than the newest one already seen for the patient still fills in parameters for
which it is newer, but it is not scored: the score at its time would ignore newer values, and a
score for the newest time already exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from iomt import codes
from iomt.news2 import News2Input
from iomt.payload import VitalsMessage

DEFAULT_STALENESS_S = 3600.0  # iomt.staleness_s default: one hour
ON_OXYGEN = "on_oxygen"
CONSCIOUSNESS = "consciousness"
_SCORED_LOINC = (codes.RESPIRATORY_RATE, codes.OXYGEN_SATURATION, codes.SYSTOLIC_BP,
                 codes.HEART_RATE, codes.BODY_TEMPERATURE)


@dataclass(frozen=True)
class Snapshot:
    """What NEWS2 is scored from at ``time``, and when each value was measured."""

    time: datetime
    inp: News2Input
    measured: dict[str, datetime]  # LOINC code (or ON_OXYGEN / CONSCIOUSNESS) -> measurement time


class PatientState:
    """The latest value and measurement time of each NEWS2 parameter of one patient."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[datetime, Any]] = {}
        self.newest: datetime | None = None

    def _merge(self, key: str, when: datetime, value: Any) -> None:
        held = self.values.get(key)
        if held is None or when >= held[0]:
            self.values[key] = (when, value)

    def update(self, msg: VitalsMessage) -> bool:
        """Merge ``msg``; True when it is the newest message so far (it should be scored)."""
        when = msg.time
        for loinc, vital in msg.latest().items():
            if loinc in _SCORED_LOINC:
                self._merge(loinc, when, vital.value)
        if msg.on_oxygen is not None:
            self._merge(ON_OXYGEN, when, msg.on_oxygen)
        if msg.consciousness is not None:
            self._merge(CONSCIOUSNESS, when, msg.consciousness)
        if self.newest is None or when >= self.newest:
            self.newest = when
            return True
        return False

    def snapshot(self, at: datetime, staleness_s: float, spo2_scale: int) -> Snapshot:
        """NEWS2 input at ``at`` from values measured within ``staleness_s`` before it."""
        if staleness_s <= 0:
            raise ValueError(f"staleness_s must be positive, {staleness_s} is given.")
        oldest = at - timedelta(seconds=staleness_s)
        fresh = {k: v for k, v in self.values.items() if oldest <= v[0] <= at}

        def value(key: str) -> Any:
            return fresh[key][1] if key in fresh else None

        inp = News2Input(
            respiratory_rate_per_min=value(codes.RESPIRATORY_RATE),
            spo2_percent=value(codes.OXYGEN_SATURATION),
            on_oxygen=value(ON_OXYGEN),
            systolic_bp_mmhg=value(codes.SYSTOLIC_BP),
            pulse_per_min=value(codes.HEART_RATE),
            consciousness=value(CONSCIOUSNESS),
            temperature_cel=value(codes.BODY_TEMPERATURE),
            spo2_scale=spo2_scale,
        )
        return Snapshot(time=at, inp=inp, measured={k: v[0] for k, v in fresh.items()})


class StateTable:
    """:class:`PatientState` per patient reference."""

    def __init__(self, staleness_s: float = DEFAULT_STALENESS_S) -> None:
        if staleness_s <= 0:
            raise ValueError(f"staleness_s must be positive, {staleness_s} is given.")
        self.staleness_s = staleness_s
        self._states: dict[str, PatientState] = {}

    def update(self, patient_ref: str, msg: VitalsMessage, spo2_scale: int) -> Snapshot | None:
        """Merge ``msg``; the snapshot to score when it is the patient's newest message."""
        state = self._states.get(patient_ref)
        if state is None:
            state = self._states[patient_ref] = PatientState()
        if not state.update(msg):
            return None
        return state.snapshot(msg.time, self.staleness_s, spo2_scale)
