"""Parse and validate one MQTT vitals payload.

The format is specified by ``iomt/schemas/vitals.schema.json`` (JSON Schema 2020-12); the
parser accepts nothing that the schema rejects and adds the checks a schema cannot express:
known codes, units compatible with the vital sign, SpO2 fractions within 0-1.

Values are normalised to the UCUM units of the FHIR R4 vital-signs profile. Values outside a
plausible physiological range are kept and flagged (``Vital.out_of_range``), never dropped.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from kernel.text import describe_unsafe
from iomt.news2 import ACVPU, SPO2_SCALES, News2Input
from models import clinical_codes as codes

MAX_PAYLOAD_BYTES = 64 * 1024  # one message carries a handful of readings, never this much
MAX_VITALS = 64  # vitals.schema.json: vitals.maxItems

# RFC 3339 date-time with a mandatory offset (vitals.schema.json: time.pattern).
TIME_PATTERN = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$", re.ASCII
)
#: Measurement times accepted, as for the compact form's epoch milliseconds (iomt.compact).
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)
LOINC_PATTERN = re.compile(r"^\d{1,7}-\d$", re.ASCII)
MDC_PATTERN = re.compile(r"^\d{1,10}$", re.ASCII)

TOP_LEVEL_KEYS = frozenset(
    {"patient", "device", "time", "vitals", "on_oxygen", "consciousness", "spo2_scale"}
)
PATIENT_KEYS = frozenset({"id", "system"})
VITAL_KEYS = frozenset({"code", "system", "value", "unit"})


def _identity(value: float) -> float:
    return value


def _fahrenheit_to_celsius(value: float) -> float:
    return (value - 32.0) * 5.0 / 9.0


def _kpa_to_mm_hg(value: float) -> float:
    return value * codes.MM_HG_PER_KPA


def _fraction_to_percent(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise PayloadError(f"SpO2 with unit '1' must be a fraction within [0, 1], {value} is given")
    return value * 100.0


_RATE_BEATS = {"/min": _identity, "{beats}/min": _identity, "beats/min": _identity}
_RATE_BREATHS = {"/min": _identity, "{breaths}/min": _identity, "breaths/min": _identity}
_PRESSURE = {codes.MM_HG: _identity, "mmHg": _identity, codes.KILOPASCAL: _kpa_to_mm_hg}

UNIT_CONVERSIONS: dict[str, dict[str, Callable[[float], float]]] = {
    codes.HEART_RATE: _RATE_BEATS,
    codes.RESPIRATORY_RATE: _RATE_BREATHS,
    codes.OXYGEN_SATURATION: {codes.PERCENT: _identity, codes.FRACTION: _fraction_to_percent},
    codes.SYSTOLIC_BP: _PRESSURE,
    codes.DIASTOLIC_BP: _PRESSURE,
    codes.BODY_TEMPERATURE: {codes.CELSIUS: _identity, codes.FAHRENHEIT: _fahrenheit_to_celsius},
}
"""Accepted units per canonical LOINC code, each with its conversion to the canonical unit."""

PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    codes.HEART_RATE: (20.0, 300.0),  # /min
    codes.RESPIRATORY_RATE: (2.0, 80.0),  # /min
    codes.OXYGEN_SATURATION: (50.0, 100.0),  # %
    codes.SYSTOLIC_BP: (40.0, 300.0),  # mm[Hg]
    codes.DIASTOLIC_BP: (20.0, 200.0),  # mm[Hg]
    codes.BODY_TEMPERATURE: (25.0, 45.0),  # Cel
}
"""Inclusive physiological ranges in canonical units; outside them a value is flagged."""

NORMALISED_DECIMALS = 6  # strips float noise from conversions (96.8 [degF] -> 36.0 Cel)


class PayloadError(ValueError):
    """A payload that cannot be accepted; ``reason`` says why, ``path`` where (JSON pointer)."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class Vital:
    """One normalised measurement: ``value`` in ``unit`` (canonical UCUM) coded by ``loinc``.

    ``source_code``, ``source_system``, ``source_value`` and ``source_unit`` keep what the
    device sent.
    """

    loinc: str
    value: float
    unit: str
    out_of_range: bool
    source_code: str
    source_system: str
    source_value: float
    source_unit: str

    @property
    def plausible_range(self) -> tuple[float, float]:
        """The inclusive physiological range the value was checked against."""
        return PLAUSIBLE_RANGES[self.loinc]


@dataclass(frozen=True)
class VitalsMessage:
    """One validated vitals message from one device about one patient at one time.

    ``patient_id`` is None for a compact message (:mod:`iomt.compact`) until the device registry
    names the patient the device is associated with.
    """

    patient_id: str | None
    patient_system: str | None
    time: datetime
    vitals: tuple[Vital, ...]
    device: str | None = None
    on_oxygen: bool | None = None
    consciousness: ACVPU | None = None
    spo2_scale: int = 1

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(f"time must carry a UTC offset, {self.time.isoformat()} is given.")
        if not self.vitals:
            raise ValueError("vitals must hold at least one Vital, an empty tuple is given.")

    @classmethod
    def checked(cls, **fields: Any) -> "VitalsMessage":
        """A message from fields a parser has already checked (an aware ``time``, at least one
        vital): the bridge's hot path, without the frozen ``__init__`` (several times slower)."""
        msg = object.__new__(cls)
        msg.__dict__.update(fields)  # fields left out keep their class defaults
        return msg

    def latest(self) -> dict[str, Vital]:
        """The last reading per LOINC code, in the order the codes first appear."""
        latest: dict[str, Vital] = {}
        for vital in self.vitals:
            latest[vital.loinc] = vital
        return latest

    def news2_input(self) -> News2Input:
        """The NEWS2 input from this message; a parameter with no reading is ``None``."""
        latest = self.latest()

        def value(loinc: str) -> float | None:
            return latest[loinc].value if loinc in latest else None

        return News2Input(
            respiratory_rate_per_min=value(codes.RESPIRATORY_RATE),
            spo2_percent=value(codes.OXYGEN_SATURATION),
            on_oxygen=self.on_oxygen,
            systolic_bp_mmhg=value(codes.SYSTOLIC_BP),
            pulse_per_min=value(codes.HEART_RATE),
            consciousness=self.consciousness,
            temperature_cel=value(codes.BODY_TEMPERATURE),
            spo2_scale=self.spo2_scale,
        )


def _reject_constant(name: str) -> float:
    raise PayloadError(f"payload holds the non-finite number {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PayloadError(f"payload repeats the key '{key}'")
        result[key] = value
    return result


def _check_keys(obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PayloadError(f"unknown field(s) {', '.join(unknown)}", path)


def _optional_text(obj: dict[str, Any], key: str, path: str) -> str | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"must be a non-blank string, {value!r} is given", f"{path}/{key}")
    check_safe(value, f"{path}/{key}")
    return value


def check_safe(value: str, path: str) -> None:
    """:class:`PayloadError` when an identifier holds a control or format character (:mod:`kernel.text`):
    it would reach the database, the ward board and the logs as sent."""
    unsafe = describe_unsafe(value)
    if unsafe is not None:
        raise PayloadError(f"must not contain control or format characters, {unsafe} is given", path)


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not TIME_PATTERN.fullmatch(value):
        raise PayloadError(
            f"must be an ISO 8601 date-time with seconds and a UTC offset "
            f"(e.g. 2026-11-22T10:15:00+07:00), {value!r} is given",
            "/time",
        )
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PayloadError(
            f"is not a valid date-time, {value!r} is given ({exc})", "/time"
        ) from None
    if not EARLIEST <= when <= LATEST:
        raise PayloadError(f"must be between {EARLIEST.date()} and {LATEST.date()}, {value!r} is given", "/time")
    return when


def _default_system(code: str) -> str:
    """A code without a system is MDC when all digits, else LOINC."""
    return codes.MDC_SYSTEM if MDC_PATTERN.fullmatch(code) else codes.LOINC_SYSTEM


def _canonical_loinc(code: Any, system: str | None, path: str) -> str:
    if not isinstance(code, str) or not code:
        raise PayloadError(f"code must be a non-empty string, {code!r} is given", path)
    if system is None:
        system = _default_system(code)
    if system == codes.MDC_SYSTEM:
        if code not in codes.MDC_TO_LOINC:
            raise PayloadError(f"unknown MDC code {code!r}", path)
        return codes.MDC_TO_LOINC[code]
    if system == codes.LOINC_SYSTEM:
        canonical = codes.LOINC_ALIASES.get(code, code)
        if not LOINC_PATTERN.fullmatch(code) or canonical not in codes.VITAL_SIGNS:
            raise PayloadError(f"unknown LOINC code {code!r}", path)
        return canonical
    raise PayloadError(
        f"unknown code system {system!r} (use {codes.LOINC_SYSTEM} or {codes.MDC_SYSTEM})", path
    )


def _parse_vital(raw: Any, path: str) -> Vital:
    if not isinstance(raw, dict):
        raise PayloadError(f"each vital must be an object, {type(raw).__name__} is given", path)
    _check_keys(raw, VITAL_KEYS, path)
    for key in ("code", "value", "unit"):
        if key not in raw:
            raise PayloadError(f"vital is missing '{key}'", path)
    system = _optional_text(raw, "system", path)
    loinc = _canonical_loinc(raw["code"], system, f"{path}/code")
    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"value must be a number, {value!r} is given", f"{path}/value")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PayloadError(f"value must be a finite number, {value!r} is given", f"{path}/value")
    unit = raw["unit"]
    conversions = UNIT_CONVERSIONS[loinc]
    if not isinstance(unit, str) or unit not in conversions:
        raise PayloadError(
            f"unit {unit!r} is not compatible with {codes.VITAL_SIGNS[loinc].display} "
            f"(accepted: {', '.join(conversions)})",
            f"{path}/unit",
        )
    try:
        normalised = round(conversions[unit](number), NORMALISED_DECIMALS)
    except PayloadError as exc:
        raise PayloadError(exc.reason, f"{path}/value") from None
    low, high = PLAUSIBLE_RANGES[loinc]
    return Vital(
        loinc=loinc,
        value=normalised,
        unit=codes.VITAL_SIGNS[loinc].ucum,
        out_of_range=not low <= normalised <= high,
        source_code=raw["code"],
        source_system=system or _default_system(raw["code"]),
        source_value=value,
        source_unit=unit,
    )


def _parse_object(doc: dict[str, Any]) -> VitalsMessage:
    _check_keys(doc, TOP_LEVEL_KEYS, "")
    patient = doc.get("patient")
    if not isinstance(patient, dict):
        raise PayloadError("missing patient object with an 'id'", "/patient")
    _check_keys(patient, PATIENT_KEYS, "/patient")
    patient_id = patient.get("id")
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise PayloadError(
            f"missing patient id (a non-blank string), {patient_id!r} is given", "/patient/id"
        )
    check_safe(patient_id, "/patient/id")
    patient_system = _optional_text(patient, "system", "/patient")
    if "time" not in doc:
        raise PayloadError("missing time", "/time")
    time = _parse_time(doc["time"])

    raw_vitals = doc.get("vitals")
    if not isinstance(raw_vitals, list) or not raw_vitals:
        raise PayloadError("no vitals: 'vitals' must be a non-empty array", "/vitals")
    if len(raw_vitals) > MAX_VITALS:
        raise PayloadError(f"too many vitals: {len(raw_vitals)} > {MAX_VITALS}", "/vitals")
    vitals = tuple(_parse_vital(raw, f"/vitals/{i}") for i, raw in enumerate(raw_vitals))

    on_oxygen = doc.get("on_oxygen")
    if on_oxygen is not None and not isinstance(on_oxygen, bool):
        raise PayloadError(f"must be true, false or null, {on_oxygen!r} is given", "/on_oxygen")
    consciousness = doc.get("consciousness")
    if consciousness is not None:
        if not isinstance(consciousness, str) or consciousness not in {member.value for member in ACVPU}:
            raise PayloadError(
                f"must be one of A, C, V, P, U or null, {consciousness!r} is given",
                "/consciousness",
            )
        consciousness = ACVPU(consciousness)
    spo2_scale = doc.get("spo2_scale", 1)
    if isinstance(spo2_scale, bool) or spo2_scale not in SPO2_SCALES:
        raise PayloadError(f"must be 1 or 2, {spo2_scale!r} is given", "/spo2_scale")

    return VitalsMessage(
        patient_id=patient_id,
        patient_system=patient_system,
        time=time,
        vitals=vitals,
        device=_optional_text(doc, "device", ""),
        on_oxygen=on_oxygen,
        consciousness=consciousness,
        spo2_scale=int(spo2_scale),
    )


def parse_payload(payload: bytes | bytearray | memoryview) -> VitalsMessage:
    """Parse one MQTT vitals payload (UTF-8 JSON) into a validated :class:`VitalsMessage`.

    Raises
    ------
    PayloadError
        When the payload is not acceptable; ``reason`` names the problem.
    TypeError
        When ``payload`` is not bytes-like.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, {type(payload).__name__} is given.")
    data = bytes(payload)
    if not data:
        raise PayloadError("payload is empty")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is {len(data)} bytes, more than {MAX_PAYLOAD_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"payload is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise PayloadError("payload is not JSON this parser can read (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise PayloadError(f"payload must be a JSON object, {type(doc).__name__} is given")
    return _parse_object(doc)
