"""Latest value per NEWS2 parameter and patient, for scoring late and partial messages.

Devices send parameters at different rates (SpO2 every second, blood pressure every 15 minutes)
and messages arrive late or out of order. NEWS2 is therefore scored from the latest value of each
parameter that is no older than ``staleness_s`` at the scoring time, not from one message alone.

A message older than the newest one already seen for the patient still fills in parameters for
which it is newer, but it is not scored: the score at its time would ignore newer values, and a
score for the newest time already exists.

Every scored message carries its NEWS2 result; results are memoised per distinct input (bedside
values repeat), so the hot path scores a message with one dictionary look-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from iomt.config import IomtConfig
from iomt.news2 import News2Input, News2Result, score
from iomt.payload import VitalsMessage
from models import clinical_codes as codes

_IOMT = IomtConfig()  # the ``iomt:`` section's defaults, the constructor's defaults
ON_OXYGEN = "on_oxygen"
CONSCIOUSNESS = "consciousness"
SCORED_LOINC = frozenset({codes.RESPIRATORY_RATE, codes.OXYGEN_SATURATION, codes.SYSTOLIC_BP,
                           codes.HEART_RATE, codes.BODY_TEMPERATURE})
_SCORED: dict[tuple, tuple[News2Input, News2Result]] = {}  # input values -> (input, result)
#: ~800 bytes an entry: 8,192 keep the memo under ~7 MiB (100,000 grew the server by ~80 MiB in
#: the soak before it was cleared); cleared when full, so it never grows past that.
_SCORED_MAX = 8_192


@dataclass(frozen=True)
class Snapshot:
    """What NEWS2 is scored from at ``time``, and when each value was measured."""

    time: datetime
    inp: News2Input
    measured: dict[str, datetime]  # LOINC code (or ON_OXYGEN / CONSCIOUSNESS) -> measurement time
    result: News2Result | None = None  # NEWS2 of ``inp``

    def score(self) -> News2Result:
        return self.result if self.result is not None else score(self.inp)

    @classmethod
    def _of(cls, at: datetime, inp: News2Input, measured: dict[str, datetime],
            result: News2Result) -> "Snapshot":
        snapshot = object.__new__(cls)  # the hot path: without the frozen __init__
        snapshot.__dict__.update(time=at, inp=inp, measured=measured, result=result)
        return snapshot


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
        when, values = msg.time, self.values
        for vital in msg.vitals:  # in order: the last reading of a code wins, as msg.latest()
            loinc = vital.loinc
            if loinc in SCORED_LOINC:
                held = values.get(loinc)
                if held is None or when >= held[0]:
                    values[loinc] = (when, vital.value)
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
        return self._snapshot(at, at - timedelta(seconds=staleness_s), spo2_scale)

    def _snapshot(self, at: datetime, oldest: datetime, spo2_scale: int) -> Snapshot:
        measured, fresh = {}, {}
        for name, (when, value) in self.values.items():
            if oldest <= when <= at:
                measured[name], fresh[name] = when, value
        get = fresh.get
        key = (get(codes.RESPIRATORY_RATE), get(codes.OXYGEN_SATURATION), get(ON_OXYGEN),
               get(codes.SYSTOLIC_BP), get(codes.HEART_RATE), get(CONSCIOUSNESS),
               get(codes.BODY_TEMPERATURE), spo2_scale)
        scored = _SCORED.get(key)
        if scored is None:
            inp = News2Input(
                respiratory_rate_per_min=key[0], spo2_percent=key[1], on_oxygen=key[2],
                systolic_bp_mmhg=key[3], pulse_per_min=key[4], consciousness=key[5],
                temperature_cel=key[6], spo2_scale=spo2_scale,
            )
            scored = (inp, score(inp))
            if len(_SCORED) >= _SCORED_MAX:
                _SCORED.clear()
            _SCORED[key] = scored
        return Snapshot._of(at, scored[0], measured, scored[1])


class StateTable:
    """:class:`PatientState` per patient reference."""

    def __init__(self, staleness_s: float = _IOMT.staleness_s) -> None:
        if staleness_s <= 0:
            raise ValueError(f"staleness_s must be positive, {staleness_s} is given.")
        self.staleness_s = staleness_s
        self._staleness = timedelta(seconds=staleness_s)
        self._states: dict[str, PatientState] = {}

    def get(self, patient_ref: str) -> PatientState | None:
        return self._states.get(patient_ref)

    def patients(self) -> list[str]:
        return list(self._states)

    def replace(self, other: "StateTable") -> None:
        """Hold ``other``'s patients instead of these (a state rebuilt from the store)."""
        self._states = other._states

    def restore(self, patient_ref: str, values: dict[str, tuple[datetime, Any]],
                newest: datetime | None) -> None:
        """Merge values read back from the store (``key -> (measured, value)``, keys as
        :attr:`PatientState.values`; ``newest``: the patient's newest message) into the patient's
        state: a node taking over a partition scores with what the previous one had seen."""
        state = self._states.get(patient_ref)
        if state is None:
            state = self._states[patient_ref] = PatientState()
        for key, (when, value) in values.items():
            state._merge(key, when, value)
        if newest is not None and (state.newest is None or newest > state.newest):
            state.newest = newest

    def update(self, patient_ref: str, msg: VitalsMessage, spo2_scale: int) -> Snapshot | None:
        """Merge ``msg``; the snapshot to score when it is the patient's newest message."""
        state = self._states.get(patient_ref)
        if state is None:
            state = self._states[patient_ref] = PatientState()
        if not state.update(msg):
            return None
        return state._snapshot(msg.time, msg.time - self._staleness, spo2_scale)
