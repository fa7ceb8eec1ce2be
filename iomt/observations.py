"""FHIR R4 Observations (plain JSON dicts) for IoMT vitals and their NEWS2 score.

Vital signs follow the FHIR R4 vital-signs profiles (``meta.profile``, category
``vital-signs``, LOINC code, UCUM ``valueQuantity``). Systolic and diastolic pressure go into one
blood-pressure panel (LOINC 85354-9) with components, as the ``bp`` profile requires; a
component that was not sent carries a ``dataAbsentReason``.

The NEWS2 total is coded with SNOMED CT 1104051000000101 (no LOINC code exists for it), in the
shape NHS England describes: ``valueInteger`` total, category ``survey``, one component per
parameter sub-score.  These are UK Edition concepts, absent from the International Edition, so
each SNOMED CT coding names its edition in ``Coding.version`` (:data:`SNOMED_UK_EDITION`) and a
terminology server can validate it.

``subject`` is the literal ``Patient/<id>`` reference, with the patient's identifier beside it when
the caller gives it (``patient_identifier``), as the imaging DiagnosticReports write it
(:mod:`serving.fhir.report`); ids never depend on the identifier.

Resource ids are deterministic, time-ordered UUIDs (RFC 9562 version 8): the effective time in
Unix milliseconds first, as in version 7, then bits of SHA-1 over a fixed namespace and (subject,
code, effective time in UTC). A message that is sent again produces the same ids and updates the
stored resources instead of duplicating them, and ids of one moment sort together, so the
store's primary-key index grows at its end instead of at random places (per inserted row about a
third less CPU and half the time at 300,000 rows, the gap growing with the table). Releases before
used UUID 5 over the same name: resources stored then keep their ids, and a message delivered
again across the upgrade is stored once more under its new id.

The builders run on the bridge's hot path: the parts of a vital sign that depend only on the code
(``meta``, ``category``, ``code``) and the parts of a NEWS2 score that depend only on the score
are built once and shared by every resource, so callers treat the returned dicts as read-only
(they are serialised, never edited). Conformance is checked with
``fhir.resources`` in the tests, not per message.
"""
from __future__ import annotations

import hashlib
import uuid
from functools import lru_cache
from datetime import datetime, timezone
from typing import Any, Mapping

from iomt import news2
from iomt.news2 import News2Result
from iomt.payload import Vital, VitalsMessage
from models import clinical_codes as codes

URI_SYSTEM = "urn:ietf:rfc:3986"  # FHIR R4 identifier system for URIs (here urn:uuid)
OBSERVATION_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:iomt:observation")
"""Fixed namespace for deterministic Observation ids; changing it re-keys every stored id."""
_NAMESPACE_BYTES = OBSERVATION_ID_NAMESPACE.bytes

SNOMED_UK_EDITION = "http://snomed.info/sct/83821000000107"
"""FHIR R4 ``Coding.version`` of SNOMED CT UK Edition concepts (the NEWS2 codes): the edition URI
``http://snomed.info/sct/[module id]`` of the UK Edition module 83821000000107 (FHIR R4
"Using SNOMED CT with FHIR": an edition without a release date means its latest release)."""

NEWS2_SUBSCORE_CODES: dict[str, str] = {
    news2.RESPIRATION_RATE: codes.NEWS2_RESPIRATION_RATE_SCORE,
    news2.AIR_OR_OXYGEN: codes.NEWS2_AIR_OR_OXYGEN_SCORE,
    news2.SYSTOLIC_BP: codes.NEWS2_SYSTOLIC_BP_SCORE,
    news2.PULSE: codes.NEWS2_PULSE_SCORE,
    news2.CONSCIOUSNESS: codes.NEWS2_CONSCIOUSNESS_SCORE,
    news2.TEMPERATURE: codes.NEWS2_TEMPERATURE_SCORE,
}
"""SNOMED CT sub-score code per NEWS2 parameter; SpO2 depends on the scale (see below)."""

NEWS2_SPO2_SUBSCORE_CODES = {1: codes.NEWS2_SPO2_SCALE_1_SCORE, 2: codes.NEWS2_SPO2_SCALE_2_SCORE}

NEWS2_PARAMETER_LABELS: dict[str, str] = {
    news2.RESPIRATION_RATE: "respiration rate",
    news2.SPO2: "SpO2",
    news2.AIR_OR_OXYGEN: "air or oxygen",
    news2.SYSTOLIC_BP: "systolic blood pressure",
    news2.PULSE: "pulse",
    news2.CONSCIOUSNESS: "consciousness",
    news2.TEMPERATURE: "temperature",
}

NEWS2_SOURCE_CODES = (
    codes.RESPIRATORY_RATE,
    codes.OXYGEN_SATURATION,
    codes.BLOOD_PRESSURE_PANEL,
    codes.HEART_RATE,
    codes.BODY_TEMPERATURE,
)
"""Vital-sign Observations a NEWS2 score is derived from, in chart order."""

_BP_COMPONENTS = (codes.SYSTOLIC_BP, codes.DIASTOLIC_BP)


def observation_id(subject_ref: str, system: str, code: str, effective: datetime) -> str:
    """Deterministic Observation id over subject, code and effective time (see the module docstring)."""
    return _observation_id(subject_ref, system, code, *_checked_id_time(effective))


@lru_cache(maxsize=65536)  # NEWS2 derivedFrom asks again for the ids of the vitals just built
def _observation_id(subject_ref: str, system: str, code: str, instant: str, millis: int) -> str:
    return time_ordered_uuid(millis, f"{subject_ref}|{system}|{code}|{instant}")


UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}  # RFC 9562 variant nibble


def id_time(effective: datetime) -> tuple[str, int]:
    """``effective`` (aware) as the id's time parts: ISO 8601 in UTC and Unix milliseconds."""
    utc = effective if effective.tzinfo is timezone.utc else effective.astimezone(timezone.utc)
    return utc.isoformat(), _unix_millis(utc)


def _checked_id_time(effective: datetime) -> tuple[str, int]:
    """:func:`id_time`, refusing a time without a UTC offset."""
    if effective.tzinfo is None or effective.utcoffset() is None:
        raise ValueError(f"effective must carry a UTC offset, {effective.isoformat()} is given.")
    return id_time(effective)


def unix_us(at: datetime) -> int:
    """``at`` (aware) in Unix microseconds."""
    delta = at - UNIX_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _unix_millis(at: datetime) -> int:
    return unix_us(at) // 1000


def time_ordered_uuid(millis: int, name: str) -> str:
    """RFC 9562 UUID version 8: ``unix_ts_ms`` in the first 48 bits (the version 7 layout), then
    74 bits of SHA-1 over the namespace and ``name`` (deterministic where version 7 is random)."""
    h = hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).hexdigest()
    t = f"{millis & 0xFFFF_FFFF_FFFF:012x}"
    return f"{t[:8]}-{t[8:]}-8{h[:3]}-{_VARIANT[h[3]]}{h[4:7]}-{h[7:19]}"


def _check_ref(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-blank reference string, {value!r} is given.")


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)], "text": text or display}


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _quantity(vital: Vital) -> dict[str, Any]:
    sign = codes.VITAL_SIGNS[vital.loinc]
    return {"value": _number(vital.value), "unit": sign.unit_display,
            "system": codes.UCUM_SYSTEM, "code": sign.ucum}


def _range_note(vital: Vital) -> str:
    sign = codes.VITAL_SIGNS[vital.loinc]
    low, high = vital.plausible_range
    return (
        f"{sign.display} {_number(vital.value)} {sign.ucum} is outside the plausible "
        f"physiological range {_number(low)}-{_number(high)} {sign.ucum}: check the sensor "
        f"and the patient before acting on it."
    )


def _news2_concept(code: str, text: str) -> dict[str, Any]:
    """A NEWS2 score code: SNOMED CT UK Edition, with the edition as ``Coding.version``."""
    coding = {"system": codes.SNOMED_SYSTEM, "version": SNOMED_UK_EDITION, "code": code,
              "display": codes.SNOMED_DISPLAY[code]}
    return {"coding": [coding], "text": text}


def subject(patient_ref: str, patient_identifier: Mapping[str, Any] | None) -> dict[str, Any]:
    """``Observation.subject``: the literal reference, with the patient's identifier when given."""
    if patient_identifier is None:
        return {"reference": patient_ref}
    return {"reference": patient_ref, "identifier": dict(patient_identifier)}


def vital_observation_id(patient_ref: str, loinc: str, effective: datetime) -> str | None:
    """Id of the Observation :func:`vital_observations` writes for a reading of ``loinc`` at
    ``effective`` (systolic or diastolic pressure: the blood-pressure panel's); None for a code it
    writes no Observation for."""
    if loinc in _BP_COMPONENTS:
        loinc = codes.BLOOD_PRESSURE_PANEL
    elif loinc not in codes.VITAL_SIGNS:
        return None
    return observation_id(patient_ref, codes.LOINC_SYSTEM, loinc, effective)


def _absent(text: str) -> dict[str, Any]:
    unknown = _coding(codes.DATA_ABSENT_REASON_SYSTEM, codes.DATA_ABSENT_UNKNOWN, "Unknown")
    return {"coding": [unknown], "text": text}


def _base(msg: VitalsMessage, obs_id: str, subject: dict[str, Any], device_ref: str | None,
          profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "id": obs_id}
    if profiles:
        resource["meta"] = {"profile": list(profiles)}
    resource["identifier"] = [{"system": URI_SYSTEM, "value": f"urn:uuid:{obs_id}"}]
    resource["status"] = "final"
    resource["subject"] = subject
    resource["effectiveDateTime"] = msg.time.isoformat()
    if device_ref is not None:
        resource["device"] = {"reference": device_ref}
        if msg.device:
            resource["device"]["display"] = msg.device
    return resource


def _vital_sign_category() -> list[dict[str, Any]]:
    return [_concept(codes.OBSERVATION_CATEGORY_SYSTEM, codes.VITAL_SIGNS_CATEGORY,
                     codes.VITAL_SIGNS_CATEGORY_DISPLAY)]


def _vital_code(loinc: str) -> dict[str, Any]:
    sign = codes.VITAL_SIGNS.get(loinc)
    concept = _concept(codes.LOINC_SYSTEM, loinc, codes.LOINC_DISPLAY[loinc],
                       sign.display if sign else codes.LOINC_DISPLAY[loinc])
    if loinc == codes.OXYGEN_SATURATION:  # oxygensat profile: 2708-6 required, 59408-5 added
        concept["coding"].append(_coding(
            codes.LOINC_SYSTEM, codes.OXYGEN_SATURATION_PULSE_OXIMETRY,
            codes.LOINC_DISPLAY[codes.OXYGEN_SATURATION_PULSE_OXIMETRY]))
    return concept


@lru_cache(maxsize=None)
def _vital_static(loinc: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """``meta``, ``category`` and ``code`` of a single vital-sign Observation (shared, read-only)."""
    sign = codes.VITAL_SIGNS[loinc]
    return ({"profile": [codes.VITAL_SIGNS_PROFILE, sign.profile]}, _vital_sign_category(),
            _vital_code(loinc))


def _single_observation(msg: VitalsMessage, vital: Vital, patient_ref: str,
                        device_ref: str | None, stamp: tuple[str, int] | None = None,
                        shared: tuple[str, dict, dict | None] | None = None) -> dict[str, Any]:
    """``stamp`` (:func:`id_time`) and ``shared`` (effective time, subject and device elements)
    are computed once per message by :func:`vital_observations`."""
    loinc = vital.loinc
    sign = codes.VITAL_SIGNS[loinc]
    obs_id = _observation_id(patient_ref, codes.LOINC_SYSTEM, loinc, *(stamp or id_time(msg.time)))
    effective, subject, device = shared or _shared_elements(msg, {"reference": patient_ref}, device_ref,
                                                            msg.time.isoformat())
    meta, category, code = _vital_static(loinc)
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": obs_id, "meta": meta,
        "identifier": [{"system": URI_SYSTEM, "value": f"urn:uuid:{obs_id}"}],
        "status": "final", "subject": subject, "effectiveDateTime": effective,
    }
    if device is not None:
        resource["device"] = device
    resource["category"] = category
    resource["code"] = code
    resource["valueQuantity"] = {"value": _number(vital.value),
                                 "unit": sign.unit_display, "system": codes.UCUM_SYSTEM,
                                 "code": sign.ucum}
    if vital.out_of_range:
        resource["note"] = [{"text": _range_note(vital)}]
    return resource


def _shared_elements(msg: VitalsMessage, subject: dict[str, Any], device_ref: str | None,
                     effective: str) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    device = None
    if device_ref is not None:
        device = {"reference": device_ref, "display": msg.device} if msg.device \
            else {"reference": device_ref}
    return effective, subject, device


def _panel_observation(msg: VitalsMessage, parts: dict[str, Vital], patient_ref: str,
                       device_ref: str | None, subject: dict[str, Any]) -> dict[str, Any]:
    obs_id = observation_id(patient_ref, codes.LOINC_SYSTEM, codes.BLOOD_PRESSURE_PANEL, msg.time)
    resource = _base(msg, obs_id, subject, device_ref,
                     (codes.VITAL_SIGNS_PROFILE, codes.BLOOD_PRESSURE_PROFILE))
    resource["category"] = _vital_sign_category()
    resource["code"] = _concept(codes.LOINC_SYSTEM, codes.BLOOD_PRESSURE_PANEL,
                                codes.LOINC_DISPLAY[codes.BLOOD_PRESSURE_PANEL], "Blood pressure")
    components = []
    for loinc in _BP_COMPONENTS:
        component: dict[str, Any] = {"code": _vital_code(loinc)}
        if loinc in parts:
            component["valueQuantity"] = _quantity(parts[loinc])
        else:
            component["dataAbsentReason"] = _absent("not sent by the device")
        components.append(component)
    resource["component"] = components
    notes = [{"text": _range_note(v)} for v in parts.values() if v.out_of_range]
    if notes:
        resource["note"] = notes
    return resource


def vital_observations(msg: VitalsMessage, patient_ref: str, device_ref: str | None = None, *,
                       effective: str | None = None,
                       patient_identifier: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One vital-signs Observation per parameter in ``msg`` (the last reading of each).

    Systolic and diastolic pressure share one blood-pressure panel, placed where the first of
    them appears in the message. ``effective``: ``msg.time.isoformat()`` when the caller has it.
    ``patient_identifier``: the FHIR Identifier of the patient, written beside ``patient_ref``.
    """
    if not isinstance(msg, VitalsMessage):
        raise TypeError(f"msg must be a VitalsMessage, {type(msg).__name__} is given.")
    _check_ref("patient_ref", patient_ref)
    _check_ref("device_ref", device_ref, optional=True)
    latest = msg.latest()
    effective = effective or msg.time.isoformat()
    stamp = (effective, _unix_millis(msg.time)) if msg.time.tzinfo is timezone.utc \
        else id_time(msg.time)
    shared = _shared_elements(msg, subject(patient_ref, patient_identifier), device_ref, effective)
    resources: list[dict[str, Any]] = []
    panel_done = False
    for loinc, vital in latest.items():
        if loinc in _BP_COMPONENTS:
            if not panel_done:
                bp_parts = {c: latest[c] for c in _BP_COMPONENTS if c in latest}
                resources.append(_panel_observation(msg, bp_parts, patient_ref, device_ref, shared[1]))
                panel_done = True
            continue
        resources.append(_single_observation(msg, vital, patient_ref, device_ref, stamp, shared))
    return resources


def _subscore_component(result: News2Result, parameter: str) -> dict[str, Any]:
    if parameter == news2.SPO2:
        code = NEWS2_SPO2_SUBSCORE_CODES[result.spo2_scale]
    else:
        code = NEWS2_SUBSCORE_CODES[parameter]
    component: dict[str, Any] = {
        "code": _news2_concept(code, f"NEWS2 {NEWS2_PARAMETER_LABELS[parameter]} score")
    }
    if parameter in result.scores:
        component["valueInteger"] = result.scores[parameter]
    else:
        component["dataAbsentReason"] = _absent("not scored: input missing")
    return component


_NEWS2_PARTS: dict[tuple, dict[str, Any]] = {}
_NEWS2_PARTS_MAX = 4096  # distinct scores (total, band, completeness, sub-scores, scale) kept


def _news2_parts(result: News2Result) -> dict[str, Any]:
    """The elements of a NEWS2 Observation that depend only on the score (shared, read-only)."""
    key = (result.total, result.band, result.complete, result.missing,
           tuple(result.scores.items()), result.spo2_scale)
    parts = _NEWS2_PARTS.get(key)
    if parts is not None:
        return parts
    band = result.band.value
    qualifier = "" if result.complete else "at least "
    note = f"NEWS2 {result.total}, clinical risk {band} (SpO2 scale {result.spo2_scale})."
    if not result.complete:
        missing = ", ".join(NEWS2_PARAMETER_LABELS[name] for name in result.missing)
        note += (f" Incomplete, not scored: {missing}. The total and the risk band are lower "
                 f"bounds.")
    parts = {
        "status": "final" if result.complete else "preliminary",
        "category": [_concept(codes.OBSERVATION_CATEGORY_SYSTEM, codes.SURVEY_CATEGORY,
                              codes.SURVEY_CATEGORY_DISPLAY)],
        "code": _news2_concept(codes.NEWS2_TOTAL_SCORE, "NEWS2 total score"),
        "valueInteger": result.total,
        "interpretation": [{"text": f"NEWS2 clinical risk: {qualifier}{band}"}],
        "note": [{"text": note}],
        "component": [_subscore_component(result, name) for name in news2.PARAMETERS],
    }
    if len(_NEWS2_PARTS) >= _NEWS2_PARTS_MAX:
        _NEWS2_PARTS.clear()
    _NEWS2_PARTS[key] = parts
    return parts


def news2_observation(result: News2Result, msg: VitalsMessage, patient_ref: str,
                      measured: Mapping[str, datetime] | None = None, *,
                      patient_identifier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The NEWS2 total score Observation for ``msg``.

    Status is ``final`` when every parameter was scored, else ``preliminary``; the note and the
    interpretation name the risk band and any missing parameters. ``measured`` (LOINC code ->
    measurement time, see :class:`iomt.state.Snapshot`) points ``derivedFrom`` at the vital-sign
    Observations the score used when they came from earlier messages; by default all are
    taken from ``msg``. The elements that depend only on the score are shared between the
    Observations of equal scores (see the module docstring).
    """
    if not isinstance(result, News2Result):
        raise TypeError(f"result must be a News2Result, {type(result).__name__} is given.")
    if not isinstance(msg, VitalsMessage):
        raise TypeError(f"msg must be a VitalsMessage, {type(msg).__name__} is given.")
    _check_ref("patient_ref", patient_ref)
    stamps = {msg.time: _checked_id_time(msg.time)}  # one per distinct measurement time
    obs_id = _observation_id(patient_ref, codes.SNOMED_SYSTEM, codes.NEWS2_TOTAL_SCORE,
                             *stamps[msg.time])
    parts = _news2_parts(result)
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": obs_id,
        "identifier": [{"system": URI_SYSTEM, "value": f"urn:uuid:{obs_id}"}],
        "status": parts["status"], "subject": subject(patient_ref, patient_identifier),
        "effectiveDateTime": msg.time.isoformat(),
        "category": parts["category"], "code": parts["code"],
        "valueInteger": parts["valueInteger"], "interpretation": parts["interpretation"],
        "note": parts["note"], "component": parts["component"],
    }

    if measured is None:
        measured = {loinc: msg.time for loinc in msg.latest()}
    else:
        measured = {k: v for k, v in measured.items() if k in codes.VITAL_SIGNS}
    if codes.SYSTOLIC_BP in measured:  # NEWS2 uses the systolic component of the panel
        measured = {**measured, codes.BLOOD_PRESSURE_PANEL: measured[codes.SYSTOLIC_BP]}
    derived = []
    for code in NEWS2_SOURCE_CODES:
        at = measured.get(code)
        if at is None:
            continue
        stamp = stamps.get(at)
        if stamp is None:
            stamp = stamps[at] = _checked_id_time(at)
        derived.append({"reference": "Observation/"
                        + _observation_id(patient_ref, codes.LOINC_SYSTEM, code, *stamp)})
    if derived:
        resource["derivedFrom"] = derived
    return resource
