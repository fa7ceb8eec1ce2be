"""National Early Warning Score 2 (NEWS2), Royal College of Physicians 2017 chart.

Reference: Royal College of Physicians. National Early Warning Score (NEWS) 2: Standardising
the assessment of acute-illness severity in the NHS. Updated report of a working party.
London: RCP, 2017 (chart 1, the NEWS2 scoring system; chart 2, SpO2 scale 2; table 2,
clinical risk thresholds).

Integer parameters (respiration rate, SpO2, systolic blood pressure, pulse) are rounded half-up
to a whole number before banding and temperature half-up to 0.1 °C, as they would be charted.

A parameter that was not measured is never scored as 0: it is listed in
:attr:`News2Result.missing`, the result is ``complete=False`` and its total is a lower bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Context, Decimal
from enum import Enum
from types import MappingProxyType
from typing import Mapping

# Parameter names, in the order of the RCP chart.
RESPIRATION_RATE = "respiration_rate"
SPO2 = "spo2"
AIR_OR_OXYGEN = "air_or_oxygen"
SYSTOLIC_BP = "systolic_bp"
PULSE = "pulse"
CONSCIOUSNESS = "consciousness"
TEMPERATURE = "temperature"
PARAMETERS: tuple[str, ...] = (
    RESPIRATION_RATE,
    SPO2,
    AIR_OR_OXYGEN,
    SYSTOLIC_BP,
    PULSE,
    CONSCIOUSNESS,
    TEMPERATURE,
)

SPO2_SCALES = (1, 2)  # RCP NEWS2: scale 2 only for prescribed hypercapnic respiratory failure

# Aggregate thresholds, RCP NEWS2 table 2 (clinical risk).
MEDIUM_THRESHOLD = 5  # aggregate 5-6: medium
HIGH_THRESHOLD = 7  # aggregate 7 or more: high
RED_SCORE = 3  # a single parameter scoring 3: low-medium ("red score")


class ACVPU(str, Enum):
    """Level of consciousness, RCP NEWS2 ACVPU scale."""

    ALERT = "A"
    CONFUSION = "C"  # new confusion
    VOICE = "V"
    PAIN = "P"
    UNRESPONSIVE = "U"

    @classmethod
    def parse(cls, value: "ACVPU | str") -> "ACVPU":
        """Convert a letter (``"A"``) or a word (``"alert"``, ``"confusion"``) to the enum."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise ValueError(f"consciousness must be an ACVPU letter or word, {value!r} is given.")
        text = value.strip().upper()
        if text == "NEW CONFUSION":
            return cls.CONFUSION
        for member in cls:
            if text in (member.value, member.name):
                return member
        raise ValueError(
            f"consciousness must be one of A, C, V, P, U (or alert, confusion, voice, pain, "
            f"unresponsive), {value!r} is given."
        )


class Band(str, Enum):
    """Clinical risk band, RCP NEWS2 table 2."""

    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"


def _check_number(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, {value!r} is given.")


@dataclass(frozen=True)
class News2Input:
    """Observations for one NEWS2 calculation; ``None`` means not measured.

    ``on_oxygen`` is the "air or oxygen?" item: ``True`` for supplemental oxygen, ``False`` for
    air. ``spo2_scale`` is 1 unless scale 2 has been prescribed for the patient.
    """

    respiratory_rate_per_min: float | None = None
    spo2_percent: float | None = None
    on_oxygen: bool | None = None
    systolic_bp_mmhg: float | None = None
    pulse_per_min: float | None = None
    consciousness: ACVPU | str | None = None
    temperature_cel: float | None = None
    spo2_scale: int = 1

    def __post_init__(self) -> None:
        for name in ("respiratory_rate_per_min", "spo2_percent", "systolic_bp_mmhg",
                     "pulse_per_min", "temperature_cel"):
            _check_number(name, getattr(self, name))
        if self.on_oxygen is not None and not isinstance(self.on_oxygen, bool):
            raise ValueError(f"on_oxygen must be True, False or None, {self.on_oxygen!r} is given.")
        if isinstance(self.spo2_scale, bool) or self.spo2_scale not in SPO2_SCALES:
            raise ValueError(f"spo2_scale must be 1 or 2, {self.spo2_scale!r} is given.")
        if self.consciousness is not None:
            object.__setattr__(self, "consciousness", ACVPU.parse(self.consciousness))


@dataclass(frozen=True)
class News2Result:
    """A NEWS2 score; when ``complete`` is False, ``total`` and ``band`` are lower bounds."""

    total: int
    band: Band
    complete: bool
    missing: tuple[str, ...]
    scores: Mapping[str, int] = field(default_factory=dict)
    spo2_scale: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", MappingProxyType(dict(self.scores)))


_WIDE = Context(prec=400)  # room for any finite float, so quantize never overflows


def _half_up(value: float, step: str) -> Decimal:
    # repr() gives the shortest decimal that round-trips, so 35.05 rounds to 35.1, not 35.0.
    return Decimal(repr(value)).quantize(Decimal(step), rounding=ROUND_HALF_UP, context=_WIDE)


def _whole(value: float) -> int:
    if 0 <= value < 2 ** 52:  # as the Decimal rounding: only an exact .5 is a tie; it rounds up
        whole = math.floor(value)
        return int(whole) + (1 if value - whole >= 0.5 else 0)
    return int(_half_up(value, "1"))


def _tenths(value: float) -> int:
    """``value`` rounded half-up to 0.1, in tenths."""
    scaled = value * 10.0
    nearest = round(scaled)
    if abs(scaled - nearest) < 1e-6 and abs(value) < 2 ** 40:  # on a tenth: no tie is near
        return int(nearest)
    return int(_half_up(value, "0.1") * 10)


def respiration_rate_score(per_min: float) -> int:
    """RR per minute: <=8: 3, 9-11: 1, 12-20: 0, 21-24: 2, >=25: 3."""
    rate = _whole(per_min)
    if rate <= 8:
        return 3
    if rate <= 11:
        return 1
    if rate <= 20:
        return 0
    if rate <= 24:
        return 2
    return 3


def spo2_scale1_score(percent: float) -> int:
    """SpO2 scale 1: <=91: 3, 92-93: 2, 94-95: 1, >=96: 0."""
    spo2 = _whole(percent)
    if spo2 <= 91:
        return 3
    if spo2 <= 93:
        return 2
    if spo2 <= 95:
        return 1
    return 0


def spo2_scale2_score(percent: float, on_oxygen: bool | None) -> int | None:
    """SpO2 scale 2; ``None`` when SpO2 >= 93 and it is unknown whether on air or oxygen.

    <=83: 3, 84-85: 2, 86-87: 1, 88-92: 0, >=93 on air: 0,
    93-94 on oxygen: 1, 95-96 on oxygen: 2, >=97 on oxygen: 3.
    """
    spo2 = _whole(percent)
    if spo2 <= 83:
        return 3
    if spo2 <= 85:
        return 2
    if spo2 <= 87:
        return 1
    if spo2 <= 92:
        return 0
    if on_oxygen is None:
        return None
    if not on_oxygen:
        return 0
    if spo2 <= 94:
        return 1
    if spo2 <= 96:
        return 2
    return 3


def air_or_oxygen_score(on_oxygen: bool) -> int:
    """Supplemental oxygen: 2, air: 0."""
    return 2 if on_oxygen else 0


def systolic_bp_score(mmhg: float) -> int:
    """Systolic BP mmHg: <=90: 3, 91-100: 2, 101-110: 1, 111-219: 0, >=220: 3."""
    sbp = _whole(mmhg)
    if sbp <= 90:
        return 3
    if sbp <= 100:
        return 2
    if sbp <= 110:
        return 1
    if sbp <= 219:
        return 0
    return 3


def pulse_score(per_min: float) -> int:
    """Pulse per minute: <=40: 3, 41-50: 1, 51-90: 0, 91-110: 1, 111-130: 2, >=131: 3."""
    pulse = _whole(per_min)
    if pulse <= 40:
        return 3
    if pulse <= 50:
        return 1
    if pulse <= 90:
        return 0
    if pulse <= 110:
        return 1
    if pulse <= 130:
        return 2
    return 3


def consciousness_score(level: ACVPU | str) -> int:
    """Alert: 0; new confusion, voice, pain or unresponsive: 3."""
    return 0 if ACVPU.parse(level) is ACVPU.ALERT else 3


def temperature_score(cel: float) -> int:
    """Temperature °C: <=35.0: 3, 35.1-36.0: 1, 36.1-38.0: 0, 38.1-39.0: 1, >=39.1: 2."""
    temp = _tenths(cel)
    if temp <= 350:
        return 3
    if temp <= 360:
        return 1
    if temp <= 380:
        return 0
    if temp <= 390:
        return 1
    return 2


def risk_band(total: int, scores: Mapping[str, int]) -> Band:
    """Clinical risk from the aggregate and the single-parameter scores (RCP table 2)."""
    if total >= HIGH_THRESHOLD:
        return Band.HIGH
    if total >= MEDIUM_THRESHOLD:
        return Band.MEDIUM
    if any(value >= RED_SCORE for value in scores.values()):
        return Band.LOW_MEDIUM
    return Band.LOW


def score(inp: News2Input) -> News2Result:
    """Score every parameter that is present; list the others as missing.

    For SpO2 scale 2 with SpO2 >= 93 the SpO2 sub-score depends on air or oxygen, so it is
    missing as well when ``on_oxygen`` is unknown.
    """
    if not isinstance(inp, News2Input):
        raise TypeError(f"inp must be a News2Input, {type(inp).__name__} is given.")
    scores: dict[str, int] = {}
    if inp.respiratory_rate_per_min is not None:
        scores[RESPIRATION_RATE] = respiration_rate_score(inp.respiratory_rate_per_min)
    if inp.spo2_percent is not None:
        if inp.spo2_scale == 1:
            scores[SPO2] = spo2_scale1_score(inp.spo2_percent)
        else:
            spo2 = spo2_scale2_score(inp.spo2_percent, inp.on_oxygen)
            if spo2 is not None:
                scores[SPO2] = spo2
    if inp.on_oxygen is not None:
        scores[AIR_OR_OXYGEN] = air_or_oxygen_score(inp.on_oxygen)
    if inp.systolic_bp_mmhg is not None:
        scores[SYSTOLIC_BP] = systolic_bp_score(inp.systolic_bp_mmhg)
    if inp.pulse_per_min is not None:
        scores[PULSE] = pulse_score(inp.pulse_per_min)
    if inp.consciousness is not None:
        scores[CONSCIOUSNESS] = consciousness_score(inp.consciousness)
    if inp.temperature_cel is not None:
        scores[TEMPERATURE] = temperature_score(inp.temperature_cel)

    ordered = {name: scores[name] for name in PARAMETERS if name in scores}
    missing = tuple(name for name in PARAMETERS if name not in scores)
    total = sum(ordered.values())
    return News2Result(
        total=total,
        band=risk_band(total, ordered),
        complete=not missing,
        missing=missing,
        scores=ordered,
        spo2_scale=inp.spo2_scale,
    )
