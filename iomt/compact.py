"""Compact payloads for high-rate devices: numeric vitals and ECG waveform chunks.

Both forms name the device, never the patient; the device registry (:mod:`iomt.identity`)
supplies the patient. Schema: ``iomt/schemas/vitals.schema.json`` (``$defs/compact`` and
``$defs/ecg``).

Numeric vitals::

    {"d": "MON-3-12", "t": 1795000000000, "v": [[147842, 92], [150456, 97]],
     "o": false, "c": "A", "s": 1}

``t`` is the measurement time in epoch milliseconds (UTC); each ``v`` item is an IEEE 11073-10101
(MDC) code and a value in the code's canonical unit (:data:`COMPACT_UNITS`); ``o`` (on oxygen),
``c`` (ACVPU) and ``s`` (SpO2 scale) are optional as in the full form.

ECG chunk::

    {"d": "MON-3-12", "t": 1795000000000,
     "ecg": {"period_ms": 4, "factor": 0.005, "origin": 0,
             "leads": [{"code": 131330, "data": [12, 15, 19]}]}}

``t`` is the time of the first sample; each lead's value in mV is ``origin + factor * data[i]``
(FHIR SampledData semantics); every lead of one chunk has the same number of samples.

Parsing uses orjson: non-finite numbers are rejected (they are not JSON), but of a key repeated
at the top level the last one is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from iomt.news2 import ACVPU, SPO2_SCALES
from models import clinical_codes as codes
from iomt.payload import (
    MAX_PAYLOAD_BYTES, MAX_VITALS, PLAUSIBLE_RANGES, PayloadError, Vital, VitalsMessage, check_safe,
    parse_payload,
)

COMPACT_KEYS = frozenset({"d", "t", "v", "o", "c", "s"})
ECG_KEYS = frozenset({"d", "t", "ecg"})
ECG_CHUNK_KEYS = frozenset({"period_ms", "factor", "origin", "leads"})
ECG_LEAD_KEYS = frozenset({"code", "data"})
MAX_ECG_SAMPLES = 5000  # per lead per chunk: 10 s at 500 Hz
MAX_ECG_LEADS = 12
MAX_ECG_PERIOD_MS = 1000.0  # a sample a second: no ECG is sampled slower
#: Epoch milliseconds accepted: 2000-01-01 .. 2100-01-01 UTC; anything else is a unit mistake.
MIN_EPOCH_MS, MAX_EPOCH_MS = 946_684_800_000, 4_102_444_800_000

COMPACT_UNITS: dict[str, str] = {
    codes.MDC_ECG_HEART_RATE: codes.PER_MINUTE,
    codes.MDC_RESP_RATE: codes.PER_MINUTE,
    codes.MDC_PULS_OXIM_SAT_O2: codes.PERCENT,
    codes.MDC_PRESS_BLD_NONINV_SYS: codes.MM_HG,
    codes.MDC_PRESS_BLD_NONINV_DIA: codes.MM_HG,
    codes.MDC_TEMP_BODY: codes.CELSIUS,
}
"""The unit a compact value is in, per MDC code (the canonical unit of its LOINC vital sign)."""

_ACVPU = {member.value: member for member in ACVPU}


@dataclass(frozen=True)
class EcgLead:
    code: str  # MDC_ECG_ELEC_POTL_* code
    data: tuple[float, ...]


@dataclass(frozen=True)
class EcgChunk:
    """One chunk of ECG samples from one device, starting at ``time``."""

    device: str
    time: datetime
    period_ms: float
    factor: float
    origin: float
    leads: tuple[EcgLead, ...]
    patient_id: str | None = None
    patient_system: str | None = None


def _epoch_ms(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int) \
            or not MIN_EPOCH_MS <= value <= MAX_EPOCH_MS:
        raise PayloadError(f"must be epoch milliseconds (an integer between {MIN_EPOCH_MS} and "
                           f"{MAX_EPOCH_MS}), {value!r} is given", "/t")
    return datetime.fromtimestamp(value / 1000.0, tz=timezone.utc)


def _device(doc: dict[str, Any]) -> str:
    """``d``, checked as the full form's ``device``: non-blank, no control or format character
    (:mod:`kernel.text`): it reaches the database, the ward board and the logs as sent."""
    device = doc.get("d")
    if not isinstance(device, str) or not device.strip():
        raise PayloadError(f"must be a non-blank device identifier, {device!r} is given", "/d")
    check_safe(device, "/d")
    return device


def _finite(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError(f"must be a finite number, {value!r} is given", path)
    return float(value)


_VITALS: dict[tuple, Vital] = {}  # (code, value type, value) -> Vital: monitors repeat values
_VITALS_MAX = 50_000


def _compact_vital(item: Any, index: int) -> Vital:
    if not isinstance(item, list) or len(item) != 2:
        raise PayloadError(f"must be a [code, value] pair, {item!r} is given", f"/v/{index}")
    raw_code, raw_value = item
    key = (raw_code, type(raw_code), raw_value, type(raw_value))  # 72 and 72.0 stay apart
    try:
        return _VITALS[key]
    except (KeyError, TypeError):  # TypeError: an unhashable value, rejected below
        pass
    vital = _new_compact_vital(raw_code, raw_value, f"/v/{index}")
    if len(_VITALS) >= _VITALS_MAX:
        _VITALS.clear()
    _VITALS[key] = vital
    return vital


def _new_compact_vital(raw_code: Any, raw_value: Any, path: str) -> Vital:
    code = str(raw_code) if isinstance(raw_code, int) and not isinstance(raw_code, bool) else raw_code
    if not isinstance(code, str) or code not in COMPACT_UNITS:
        raise PayloadError(f"unknown MDC code {raw_code!r} (accepted: {', '.join(COMPACT_UNITS)})",
                           f"{path}/0")
    value = _finite(raw_value, f"{path}/1")
    loinc = codes.MDC_TO_LOINC[code]
    low, high = PLAUSIBLE_RANGES[loinc]
    unit = COMPACT_UNITS[code]
    return Vital(loinc=loinc, value=value, unit=unit, out_of_range=not low <= value <= high,
                 source_code=code, source_system=codes.MDC_SYSTEM, source_value=raw_value,
                 source_unit=unit)


def parse_compact(doc: dict[str, Any]) -> VitalsMessage:
    """A compact numeric document (already decoded) as a patient-less :class:`VitalsMessage`."""
    if not COMPACT_KEYS.issuperset(doc):
        raise PayloadError(f"unknown field(s) {', '.join(sorted(set(doc) - COMPACT_KEYS))}")
    device = _device(doc)
    time = _epoch_ms(doc.get("t"))
    items = doc.get("v")
    if not isinstance(items, list) or not items:
        raise PayloadError("no vitals: 'v' must be a non-empty array", "/v")
    if len(items) > MAX_VITALS:
        raise PayloadError(f"too many vitals: {len(items)} > {MAX_VITALS}", "/v")
    vitals = tuple([_compact_vital(item, i) for i, item in enumerate(items)])
    on_oxygen = doc.get("o")
    if on_oxygen is not None and not isinstance(on_oxygen, bool):
        raise PayloadError(f"must be true, false or null, {on_oxygen!r} is given", "/o")
    consciousness = doc.get("c")
    if consciousness is not None and (not isinstance(consciousness, str) or consciousness not in _ACVPU):
        raise PayloadError(f"must be one of A, C, V, P, U or null, {consciousness!r} is given", "/c")
    scale = doc.get("s", 1)
    if isinstance(scale, bool) or scale not in SPO2_SCALES:
        raise PayloadError(f"must be 1 or 2, {scale!r} is given", "/s")
    return VitalsMessage.checked(patient_id=None, patient_system=None, time=time, vitals=vitals,
                                 device=device, on_oxygen=on_oxygen,
                                 consciousness=_ACVPU[consciousness] if consciousness else None,
                                 spo2_scale=int(scale))


def parse_ecg(doc: dict[str, Any]) -> EcgChunk:
    """An ECG chunk document (already decoded) as an :class:`EcgChunk`."""
    unknown = sorted(set(doc) - ECG_KEYS)
    if unknown:
        raise PayloadError(f"unknown field(s) {', '.join(unknown)}")
    device, time = _device(doc), _epoch_ms(doc.get("t"))
    chunk = doc["ecg"]
    if not isinstance(chunk, dict):
        raise PayloadError(f"must be an object, {type(chunk).__name__} is given", "/ecg")
    unknown = sorted(set(chunk) - ECG_CHUNK_KEYS)
    if unknown:
        raise PayloadError(f"unknown field(s) {', '.join(unknown)}", "/ecg")
    period_ms = _finite(chunk.get("period_ms"), "/ecg/period_ms")
    if not 0 < period_ms <= MAX_ECG_PERIOD_MS:
        raise PayloadError(f"must be positive and at most {MAX_ECG_PERIOD_MS} ms, {period_ms} is given",
                           "/ecg/period_ms")
    factor = _finite(chunk.get("factor", 1), "/ecg/factor")
    origin = _finite(chunk.get("origin", 0), "/ecg/origin")
    raw_leads = chunk.get("leads")
    if not isinstance(raw_leads, list) or not 1 <= len(raw_leads) <= MAX_ECG_LEADS:
        raise PayloadError(f"must be an array of 1-{MAX_ECG_LEADS} leads", "/ecg/leads")
    leads, length = [], None
    for i, raw in enumerate(raw_leads):
        path = f"/ecg/leads/{i}"
        if not isinstance(raw, dict) or set(raw) != ECG_LEAD_KEYS:
            raise PayloadError("must be an object with exactly 'code' and 'data'", path)
        code = str(raw["code"]) if isinstance(raw["code"], int) else raw["code"]
        if not isinstance(code, str) or code not in codes.ECG_LEADS:
            raise PayloadError(f"unknown ECG lead code {raw['code']!r} (MDC_ECG_ELEC_POTL_*)",
                               f"{path}/code")
        data = raw["data"]
        if not isinstance(data, list) or not 1 <= len(data) <= MAX_ECG_SAMPLES:
            raise PayloadError(f"must be an array of 1-{MAX_ECG_SAMPLES} numbers", f"{path}/data")
        if length is not None and len(data) != length:
            raise PayloadError(f"every lead must have {length} samples, {len(data)} are given",
                               f"{path}/data")
        length = len(data)
        leads.append(EcgLead(code, tuple(_finite(x, f"{path}/data/{j}") for j, x in enumerate(data))))
    return EcgChunk(device=device, time=time, period_ms=period_ms, factor=factor, origin=origin,
                    leads=tuple(leads))


def decode(payload: bytes | bytearray | memoryview) -> VitalsMessage | EcgChunk:
    """Any vitals payload: compact numeric, ECG chunk, or the full form (:func:`parse_payload`).

    Raises
    ------
    PayloadError
        When the payload is not acceptable; ``reason`` names the problem.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, {type(payload).__name__} is given.")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is {len(payload)} bytes, more than {MAX_PAYLOAD_BYTES}")
    data = bytes(payload)
    if data[:1] != b"{" or b'"d"' not in data:
        return parse_payload(data)  # the full form: strict standard-library parser
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PayloadError(f"payload must be a JSON object, {type(doc).__name__} is given")
    if "d" not in doc:
        return parse_payload(data)
    if "ecg" in doc:
        return parse_ecg(doc)
    return parse_compact(doc)
