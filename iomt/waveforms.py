"""FHIR R4 Observation with ``valueSampledData`` for one ECG waveform chunk.

Shape of the FHIR R4 example Observation/ekg (observation-example-sample-data): category
``procedure``, code MDC 131328 MDC_ECG_ELEC_POTL, one component per lead coded
MDC_ECG_ELEC_POTL_* with SampledData (origin in mV, ``period`` in ms, ``factor``,
``dimensions`` 1, ``data`` the raw samples separated by spaces). The id is deterministic over
(device, start time), so a resent chunk updates the stored one.
"""
from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any, Mapping

from iomt.compact import EcgChunk
from iomt.observations import URI_SYSTEM, observation_id, subject
from models import clinical_codes as codes


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _sampled(chunk: EcgChunk, data: tuple[float, ...]) -> dict[str, Any]:
    return {
        "origin": {"value": _number(chunk.origin), "unit": codes.MILLIVOLT,
                   "system": codes.UCUM_SYSTEM, "code": codes.MILLIVOLT},
        "period": _number(chunk.period_ms),  # FHIR R4 SampledData.period: milliseconds
        "factor": _number(chunk.factor),
        "dimensions": 1,
        "data": " ".join(str(_number(x)) for x in data),
    }


def ecg_observation(chunk: EcgChunk, patient_ref: str, device_ref: str | None,
                    patient_identifier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Observation for ``chunk``; ``effectivePeriod`` spans its first to last sample;
    ``patient_identifier`` (a FHIR Identifier) is written beside ``patient_ref``, as the vital signs'."""
    if not isinstance(chunk, EcgChunk):
        raise TypeError(f"chunk must be an EcgChunk, {type(chunk).__name__} is given.")
    if not isinstance(patient_ref, str) or not patient_ref.strip():
        raise ValueError(f"patient_ref must be a non-blank reference string, {patient_ref!r} is given.")
    subject_key = device_ref or patient_ref
    obs_id = observation_id(subject_key, codes.MDC_SYSTEM, codes.MDC_ECG_ELEC_POTL, chunk.time)
    samples = len(chunk.leads[0].data)
    end = chunk.time + timedelta(milliseconds=chunk.period_ms * (samples - 1))
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "identifier": [{"system": URI_SYSTEM, "value": f"urn:uuid:{obs_id}"}],
        "status": "final",
        "category": [{"coding": [{"system": codes.OBSERVATION_CATEGORY_SYSTEM,
                                  "code": codes.PROCEDURE_CATEGORY,
                                  "display": codes.PROCEDURE_CATEGORY_DISPLAY}]}],
        "code": {"coding": [{"system": codes.MDC_SYSTEM, "code": codes.MDC_ECG_ELEC_POTL,
                             "display": "MDC_ECG_ELEC_POTL"}], "text": "ECG waveform"},
        "subject": subject(patient_ref, patient_identifier),
        "effectivePeriod": {"start": chunk.time.astimezone(timezone.utc).isoformat(),
                            "end": end.astimezone(timezone.utc).isoformat()},
        "component": [
            {"code": {"coding": [{"system": codes.MDC_SYSTEM, "code": lead.code,
                                  "display": codes.ECG_LEADS[lead.code]}]},
             "valueSampledData": _sampled(chunk, lead.data)}
            for lead in chunk.leads
        ],
    }
    if device_ref is not None:
        resource["device"] = {"reference": device_ref}
    return resource
