"""Findings of one study to FHIR R4: a DiagnosticReport and one Observation per finding.

This lives in ``serving`` rather than ``dicom_gateway`` because it is an EHR-side output: it needs
the site's patient identifier systems (configuration) and is delivered by the outbox through
:mod:`serving.fhir_client`, while ``dicom_gateway`` only speaks DICOM.

* ``DiagnosticReport``: status ``preliminary`` (an unverified AI result), category RAD, code LOINC
  18748-4 "Diagnostic imaging study", ``imagingStudy`` a logical reference by the Study Instance
  UID (identifier system ``urn:dicom:uid``, value ``urn:oid:<uid>``; FHIR R4 ImagingStudy),
  ``identifier`` the SR's SOP Instance UID, ``result`` the Observations, ``conclusion`` the calls
  and :data:`~models.finding.NOT_FOR_CLINICAL_USE`.
* ``Observation`` (category ``imaging``): code the finding type, value present/absent at the
  model's operating point (SNOMED CT, as the SR's qualitative evaluation), a component with the
  probability (DCM 122157, UCUM "1"), the model in ``device.display`` and ``method``.

Ids are UUID 5 of (study, model, version[, finding index]): a resend or a rerun of the same model
version PUTs the same resources.

Patient identity: Patient ID (0010,0020) with Issuer of Patient ID (0010,0021) becomes a logical
reference ``subject.identifier`` whose system is looked up by issuer (:class:`PatientIdentity`);
the FHIR server resolves it to its own Patient.  No Patient resource is ever created or guessed,
and an image without Patient ID gives resources without ``subject`` (0..1 in R4 DiagnosticReport
and Observation): the report still names its study, and the EHR reconciles it.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydicom import Dataset

from models.finding import NOT_FOR_CLINICAL_USE, Finding

#: FHIR R4 terminologies-systems and DICOM PS3.16 Annex D / FHIR "DICOM" system.
CODE_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
}
#: FHIR R4 ImagingStudy.identifier: DICOM UIDs as ``urn:oid:`` in system ``urn:dicom:uid``.
DICOM_UID_SYSTEM = "urn:dicom:uid"
#: LOINC 18748-4 "Diagnostic imaging study" (DiagnosticReport.code of imaging reports).
REPORT_CODE = {"system": CODE_SYSTEMS["LN"], "code": "18748-4", "display": "Diagnostic imaging study"}
#: HL7 v2 table 0074 "RAD" (FHIR R4 diagnostic-service-sections value set).
RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
             "display": "Radiology"}
#: FHIR R4 observation-category "imaging".
IMAGING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
           "display": "Imaging"}
#: PS3.16 CID 241 present/absent and (122157, DCM, "Probability"), as in the SR.
PRESENT = {"system": CODE_SYSTEMS["SCT"], "code": "52101004", "display": "Present"}
ABSENT = {"system": CODE_SYSTEMS["SCT"], "code": "272519000", "display": "Absent"}
PROBABILITY = {"system": CODE_SYSTEMS["DCM"], "code": "122157", "display": "Probability"}
#: FHIR R4 v3 ObservationInterpretation POS/NEG.
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
#: Namespace of every resource id written here; changing it re-keys every stored report.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:imaging:report")


@dataclass(frozen=True)
class PatientIdentity:
    """How Patient ID / Issuer of Patient ID map to FHIR identifier systems.

    Parameters
    ----------
    issuers: Mapping[str, str]
        Issuer of Patient ID value (case-insensitive) -> identifier system URI.
    unqualified_system: str | None
        System for a Patient ID without (or with an unmapped) issuer; None leaves
        ``identifier.system`` out and keeps the issuer as ``assigner.display``.
    """

    issuers: Mapping[str, str] = field(default_factory=dict)
    unqualified_system: str | None = None

    def identifier(self, patient_id: str, issuer: str | None = None) -> dict[str, Any]:
        """The FHIR Identifier of one Patient ID."""
        if not isinstance(patient_id, str) or not patient_id.strip():
            raise ValueError(f"patient_id must be a non-blank string, {patient_id!r} is given.")
        lookup = {k.upper(): v for k, v in self.issuers.items()}
        system = lookup.get((issuer or "").strip().upper()) or self.unqualified_system
        out: dict[str, Any] = {"value": patient_id.strip()}
        if system:
            out = {"system": system, **out}
        if issuer and issuer.strip():
            out["assigner"] = {"display": issuer.strip()}
        return out

    @classmethod
    def vietnam(cls, citizen_id: str, social_insurance: str,
                unqualified: str | None = "citizen_id") -> "PatientIdentity":
        """Issuers ``CCCD`` (citizen identity card) and ``BHYT``/``BHXH`` (health insurance)."""
        systems = {"citizen_id": citizen_id, "social_insurance": social_insurance}
        return cls({"CCCD": citizen_id, "BHYT": social_insurance, "BHXH": social_insurance},
                   systems.get(unqualified, unqualified) if unqualified else None)


def _coding(scheme: str, value: str, meaning: str) -> dict[str, str]:
    system = CODE_SYSTEMS.get(scheme, f"urn:medgate:codes:{scheme.lower()}")
    return {"system": system, "code": value, "display": meaning}


def _effective(source: Dataset) -> str | None:
    """Study date/time as FHIR dateTime; the time only with Timezone Offset From UTC (0008,0201),
    because a FHIR dateTime with a time must carry an offset and DICOM DA/TM are local time."""
    date, time_ = str(source.get("StudyDate", "")), str(source.get("StudyTime", "")).split(".")[0]
    if len(date) != 8 or not date.isdigit():
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    offset = str(source.get("TimezoneOffsetFromUTC", ""))
    if len(time_) >= 4 and len(offset) == 5 and offset[0] in "+-":
        return f"{day}T{time_[:2]}:{time_[2:4]}:{time_[4:6] or '00'}{offset[:3]}:{offset[3:]}"
    return day


def report_id(study_uid: str, model: str, version: str) -> str:
    """Deterministic DiagnosticReport id of one model version's report on one study."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{study_uid}|{model}|{version}"))


def build_report_resources(
    findings: Sequence[Finding],
    source: Dataset,
    identity: PatientIdentity,
    *,
    sr_sop_instance_uid: str | None = None,
    issued: datetime | None = None,
) -> list[dict[str, Any]]:
    """The DiagnosticReport (first) and its Observations (one per finding) as FHIR R4 JSON.

    Parameters
    ----------
    findings: Sequence[models.finding.Finding]
        Findings of one model version about images of the study of ``source``.
    source: pydicom.Dataset
        One source image: patient identity, study UID and date are taken from it.
    identity: PatientIdentity
        Identifier systems for Patient ID.
    sr_sop_instance_uid: str | None, optional
        SOP Instance UID of the SR of the same findings (the report's identifier).
    issued: datetime.datetime | None, optional
        Report time (timezone-aware); now when None.

    Returns
    -------
    list[dict]
        ``[DiagnosticReport, Observation, ...]``, ready for a transaction Bundle.
    """
    if not findings:
        raise ValueError("findings must contain at least one Finding, an empty sequence is given.")
    study_uid = str(source.StudyInstanceUID)
    models = {(f.model, f.model_version) for f in findings}
    if len(models) != 1 or any(f.source.study_uid != study_uid for f in findings):
        raise ValueError(f"findings must come from one model version about study {study_uid}, "
                         f"{sorted(models)} are given.")
    model, version = next(iter(models))
    issued = issued or datetime.now(timezone.utc)
    if issued.tzinfo is None:
        raise ValueError(f"issued must be timezone-aware, {issued.isoformat()} is given.")
    rid = report_id(study_uid, model, version)
    patient_id = str(source.get("PatientID", "") or "").strip()
    common: dict[str, Any] = {}
    if patient_id:
        issuer = str(source.get("IssuerOfPatientID", "") or "") or None
        common["subject"] = {"type": "Patient", "identifier": identity.identifier(patient_id, issuer)}
    effective = _effective(source)
    if effective:
        common["effectiveDateTime"] = effective
    study_ref = {"type": "ImagingStudy",
                 "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}}
    device = {"display": f"medgate {model} {version} (AI algorithm)"}
    observations = []
    for index, f in enumerate(findings, start=1):
        code = _coding(f.code.scheme, f.code.value, f.code.meaning)
        location = f" at {f.location}" if f.location else ""
        observations.append({
            "resourceType": "Observation",
            "id": str(uuid.uuid5(ID_NAMESPACE, f"{rid}|{index}|{f.source.sop_instance_uid}")),
            "status": "preliminary",
            "category": [{"coding": [IMAGING]}],
            "code": {"coding": [code], "text": f.code.meaning},
            **common,
            "issued": issued.isoformat(),
            "device": device,
            "method": {"text": f"{model} {version}, operating point {f.threshold:g}"},
            "valueCodeableConcept": {"coding": [PRESENT if f.positive else ABSENT]},
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "POS" if f.positive else "NEG"}]}],
            "component": [{"code": {"coding": [PROBABILITY]},
                           "valueQuantity": {"value": round(float(f.probability), 6), "unit": "1",
                                             "system": CODE_SYSTEMS["UCUM"], "code": "1"}}],
            "derivedFrom": [study_ref],
            "note": [{"text": f"{note}"} for note in dict.fromkeys((NOT_FOR_CLINICAL_USE, *f.notes))]
            + ([{"text": f"located{location} on image urn:oid:{f.source.sop_instance_uid}"}] if location else []),
        })
    positives = [f for f in findings if f.positive]
    calls = "; ".join(f"{f.code.meaning}: {'present' if f.positive else 'absent'} (p={f.probability:.2f})"
                      for f in findings)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": "preliminary",
        "category": [{"coding": [RADIOLOGY]}],
        "code": {"coding": [REPORT_CODE], "text": f"AI {model} {version} result"},
        **common,
        "issued": issued.isoformat(),
        "performer": [device],
        "result": [{"reference": f"Observation/{o['id']}"} for o in observations],
        "imagingStudy": [study_ref],
        "conclusion": f"{calls}. {NOT_FOR_CLINICAL_USE}.",
    }
    if sr_sop_instance_uid:
        report["identifier"] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sr_sop_instance_uid}"}]
    if positives:
        report["conclusionCode"] = [{"coding": [_coding(f.code.scheme, f.code.value, f.code.meaning)]}
                                    for f in positives]
    return [report, *observations]


def patient_identity(settings) -> PatientIdentity:
    """The :class:`PatientIdentity` of a configuration: ``fhir.patient_issuers`` and
    ``fhir.unqualified_patient_id`` name a key of ``iomt.identifiers`` or give a system URI."""
    systems = settings.iomt.identifiers.model_dump()

    def system(name: str | None) -> str | None:
        return systems.get(name, name) if name else None

    issuers = {issuer: system(name) for issuer, name in settings.fhir.patient_issuers.items()}
    return PatientIdentity(issuers, system(settings.fhir.unqualified_patient_id))
