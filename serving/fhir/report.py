"""Findings of one study to FHIR R4: a DiagnosticReport, one Observation per finding, the Device.

This lives in ``serving`` rather than ``dicom_gateway`` because it is an EHR-side output: it needs
the site's patient identifier systems (configuration) and is delivered by the outbox through
:mod:`serving.delivery.fhir_sender`, while ``dicom_gateway`` only speaks DICOM.

* ``DiagnosticReport``: status ``preliminary`` (an unverified AI result); category and code by
  :class:`ReportKind` (radiology: HL7 v2-0074 RAD, LOINC 18748-4 "Diagnostic imaging study";
  dermatology: v2-0074 OTH plus SNOMED CT 394582007 "Dermatology", LOINC 34759-1 "Dermatology
  Note"), ``imagingStudy`` a logical reference by the Study Instance UID (identifier system
  ``urn:dicom:uid``, value ``urn:oid:<uid>``; FHIR R4 ImagingStudy), ``identifier`` the SR's SOP
  Instance UID, ``result`` the Observations, ``conclusion`` each distinct finding once (present
  when any finding of that code reaches the operating point, with the count and probability
  range) and :data:`~models.finding.NOT_FOR_CLINICAL_USE`, ``conclusionCode`` each positive
  code once.  No ``performer``: R4 allows only Practitioner, PractitionerRole, Organization or
  CareTeam there, and an algorithm is none of them.
* ``Observation`` (category ``imaging``): code the finding type, value present/absent at the
  model's operating point (SNOMED CT, as the SR's qualitative evaluation; for an input outside the
  model's training distribution none: ``dataAbsentReason`` as-text, interpretation IND and a note), a component with the
  probability (DCM 122157, UCUM "1"), ``device`` a literal reference to the algorithm's
  ``Device`` and ``method`` the model, version and operating point.
* ``Device``: the algorithm (model name and version, manufacturer medgate), one per model
  version, the same id on every report.

Ids are UUID 5 of (study, model, version[, finding index]): a resend or a rerun of the same model
version PUTs the same resources.

Codes: SNOMED CT, LOINC and DICOM (DCM) by their FHIR system URIs; medgate's private scheme
``99MEDGATE`` by ``urn:oid:`` of its own UID (:mod:`models.coding_scheme`); any other scheme is
refused by name.

Patient identity: Patient ID (0010,0020) with Issuer of Patient ID (0010,0021) becomes
``subject`` with both a literal reference ``Patient/<id>`` and the ``identifier``, exactly as the
IoMT vital signs write it (:func:`iomt.identity.patient_reference` over the same identifier
system), so one patient's images and vitals share one Patient.  The identifier system is looked
up by issuer (:class:`PatientIdentity`).  No Patient resource is created here: the id is the one
the ADT feed writes, and an EHR with its own Patient ids re-links by the identifier.  An image
without Patient ID gives resources without ``subject`` (0..1 in R4 DiagnosticReport and
Observation): the report still names its study, and the EHR reconciles it.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from datetime import datetime, timezone
from typing import Any

from pydicom import Dataset

from iomt.identity import patient_reference
from models import coding_scheme
from models.finding import NOT_FOR_CLINICAL_USE, OUTSIDE_TRAINING_DISTRIBUTION, Concept, Finding

#: FHIR R4 terminologies-systems, DICOM PS3.16 Annex D / FHIR "DICOM" system, and medgate's
#: private scheme (:mod:`models.coding_scheme`), by DICOM Coding Scheme Designator.
CODE_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    coding_scheme.DESIGNATOR: coding_scheme.SYSTEM_URI,
}
#: FHIR R4 ImagingStudy.identifier: DICOM UIDs as ``urn:oid:`` in system ``urn:dicom:uid``.
DICOM_UID_SYSTEM = "urn:dicom:uid"
#: HL7 v2 table 0074 (FHIR R4 diagnostic-service-sections value set, an example binding).
SERVICE_SECTIONS = "http://terminology.hl7.org/CodeSystem/v2-0074"
#: LOINC 18748-4 "Diagnostic imaging study" (DiagnosticReport.code of imaging reports).
REPORT_CODE = {"system": CODE_SYSTEMS["LN"], "code": "18748-4", "display": "Diagnostic imaging study"}
#: v2-0074 "RAD".
RADIOLOGY = {"system": SERVICE_SECTIONS, "code": "RAD", "display": "Radiology"}
#: LOINC 34759-1 "Dermatology Note" (LOINC Document Ontology: kind of document Note, subject
#: matter domain Dermatology; the general term, not the setting-specific 84080-1 "Dermatology
#: Outpatient Note").  Source: LOINC document ontology listings (loinc.org).
DERMATOLOGY_REPORT_CODE = {"system": CODE_SYSTEMS["LN"], "code": "34759-1", "display": "Dermatology Note"}
#: v2-0074 has no dermatology section: "OTH" (Other) keeps the report out of RAD for systems that
#: filter by v2-0074, and a second category names the specialty: SNOMED CT 394582007
#: "Dermatology" (the FHIR practice-setting value set's concept; pydicom's codes.SCT.Dermatology
#: is 309923008, the department as an environment, which is a place, not a service).
OTHER_SECTION = {"system": SERVICE_SECTIONS, "code": "OTH", "display": "Other"}
DERMATOLOGY = {"system": CODE_SYSTEMS["SCT"], "code": "394582007", "display": "Dermatology"}
#: FHIR R4 observation-category "imaging".
IMAGING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
           "display": "Imaging"}
#: PS3.16 CID 241 present/absent and (122157, DCM, "Probability"), as in the SR.
PRESENT = {"system": CODE_SYSTEMS["SCT"], "code": "52101004", "display": "Present"}
ABSENT = {"system": CODE_SYSTEMS["SCT"], "code": "272519000", "display": "Absent"}
PROBABILITY = {"system": CODE_SYSTEMS["DCM"], "code": "122157", "display": "Probability"}
#: FHIR R4 v3 ObservationInterpretation POS/NEG.
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
#: v3 ObservationInterpretation "IND" (Indeterminate): the interpretation of a finding whose input lies
#: outside the model's training distribution, where no call is made.
INDETERMINATE = {"system": INTERPRETATION, "code": "IND", "display": "Indeterminate"}
#: FHIR R4 data-absent-reason "as-text": the value of such a finding is withheld and said in text
#: (obs-6: dataAbsentReason only without value[x]).
DATA_ABSENT_AS_TEXT = {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "as-text",
                       "display": "As Text"}
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


class ReportKind(Enum):
    """Which service files the report: ``(category, code)`` of the DiagnosticReport."""

    RADIOLOGY = "radiology"
    DERMATOLOGY = "dermatology"

    @property
    def category(self) -> list[dict[str, Any]]:
        if self is ReportKind.DERMATOLOGY:
            return [{"coding": [OTHER_SECTION], "text": "Dermatology"},
                    {"coding": [DERMATOLOGY], "text": "Dermatology"}]
        return [{"coding": [RADIOLOGY]}]

    @property
    def code(self) -> dict[str, str]:
        return DERMATOLOGY_REPORT_CODE if self is ReportKind.DERMATOLOGY else REPORT_CODE


#: Photographs (PS3.4 B.5 VL Photographic, Video Photographic, VL Microscopic, VL
#: Slide-Coordinates Microscopic, Dermoscopic Photography) and Modality XC (External-camera
#: Photography, PS3.3 C.7.3.1.1.1): the skin photos that medgate routes to dermatology.
PHOTOGRAPH_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1",
    "1.2.840.10008.5.1.4.1.1.77.1.2", "1.2.840.10008.5.1.4.1.1.77.1.3",
    "1.2.840.10008.5.1.4.1.1.77.1.7",
})


def report_kind(source: Dataset, kind: ReportKind | str | None = None) -> ReportKind:
    """``kind`` as a :class:`ReportKind`; when None, dermatology for photographs (see
    :data:`PHOTOGRAPH_SOP_CLASSES`), radiology for everything else."""
    if kind is not None:
        try:
            return ReportKind(kind.value if isinstance(kind, ReportKind) else kind)
        except ValueError:
            raise ValueError(f"kind must be one of {[k.value for k in ReportKind]}, {kind!r} is given.") from None
    photo = str(source.get("SOPClassUID", "")) in PHOTOGRAPH_SOP_CLASSES or source.get("Modality") == "XC"
    return ReportKind.DERMATOLOGY if photo else ReportKind.RADIOLOGY


def _coding(scheme: str, value: str, meaning: str) -> dict[str, str]:
    system = CODE_SYSTEMS.get(scheme)
    if system is None:
        raise ValueError(f"coding scheme {scheme!r} of code {value!r} has no FHIR system; "
                         f"known schemes: {', '.join(CODE_SYSTEMS)}.")
    return {"system": system, "code": value, "display": meaning}


def _call(finding: Finding) -> dict[str, Any]:
    """The Observation's value and interpretation: present / absent at the operating point (POS /
    NEG), or for an input outside the model's training distribution no value (data-absent-reason
    as-text, the text saying why) and "Indeterminate"."""
    if finding.outside:
        return {"dataAbsentReason": {"coding": [DATA_ABSENT_AS_TEXT], "text": finding.ood_note},
                "interpretation": [{"coding": [INDETERMINATE], "text": OUTSIDE_TRAINING_DISTRIBUTION}]}
    return {"valueCodeableConcept": {"coding": [PRESENT if finding.positive else ABSENT]},
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "POS" if finding.positive else "NEG"}]}]}


def _conclusion(findings: Sequence[Finding]) -> tuple[str, list[Concept]]:
    """Each distinct finding code once: present (the positive findings' count and probability
    range) when any reaches the operating point, else absent (the highest probability); no call
    for the findings whose input lies outside the model's training distribution; and the positive
    codes."""
    by_code: dict[Concept, list[Finding]] = {}
    for f in findings:
        by_code.setdefault(f.code, []).append(f)
    calls, positive_codes = [], []
    for code, everything in by_code.items():
        group = [f for f in everything if not f.outside]
        outside = len(everything) - len(group)
        if outside:
            calls.append(f"{code.meaning}: no call on {outside} input{'s' if outside > 1 else ''} "
                         f"{OUTSIDE_TRAINING_DISTRIBUTION}")
        if not group:
            continue
        positives = [f.probability for f in group if f.positive]
        if positives:
            positive_codes.append(code)
            count = f"{len(positives)} findings, " if len(positives) > 1 else ""
            spread = f"p={positives[0]:.2f}" if len(positives) == 1 else \
                f"p={min(positives):.2f}-{max(positives):.2f}"
            calls.append(f"{code.meaning}: present ({count}{spread})")
        else:
            highest = max(f.probability for f in group)
            count = f"{len(group)} findings, highest " if len(group) > 1 else ""
            calls.append(f"{code.meaning}: absent ({count}p={highest:.2f})")
    return f"{'; '.join(calls)}. {NOT_FOR_CLINICAL_USE}.", positive_codes


def device_resource(model: str, version: str) -> dict[str, Any]:
    """The FHIR R4 Device of one model version (the algorithm that made the Observations)."""
    return {
        "resourceType": "Device",
        "id": str(uuid.uuid5(ID_NAMESPACE, f"device|{model}|{version}")),
        "status": "active",
        "manufacturer": "medgate",
        "deviceName": [{"name": f"medgate {model}", "type": "model-name"}],
        "modelNumber": model,
        "type": {"text": "AI algorithm (software)"},
        "version": [{"value": version}],
        "note": [{"text": NOT_FOR_CLINICAL_USE}],
    }


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
    kind: ReportKind | str | None = None,
) -> list[dict[str, Any]]:
    """The DiagnosticReport (first), its Observations (one per finding) and the algorithm's Device
    (last) as FHIR R4 JSON.

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
    kind: ReportKind | str | None, optional
        ``"radiology"`` or ``"dermatology"``; by the source's SOP class when None (:func:`report_kind`).

    Returns
    -------
    list[dict]
        ``[DiagnosticReport, Observation, ..., Device]``, ready for a transaction Bundle.

    Raises
    ------
    ValueError
        No findings, findings of several model versions or another study, a naive ``issued``, an
        unknown ``kind``, or a finding code in a scheme with no FHIR system.
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
    kind = report_kind(source, kind)
    rid = report_id(study_uid, model, version)
    patient_id = str(source.get("PatientID", "") or "").strip()
    common: dict[str, Any] = {}
    if patient_id:
        issuer = str(source.get("IssuerOfPatientID", "") or "") or None
        identifier = identity.identifier(patient_id, issuer)
        common["subject"] = {"type": "Patient",
                             "reference": patient_reference(identifier["value"], identifier.get("system")),
                             "identifier": identifier}
    effective = _effective(source)
    if effective:
        common["effectiveDateTime"] = effective
    study_ref = {"type": "ImagingStudy",
                 "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}}
    algorithm = device_resource(model, version)
    device = {"reference": f"Device/{algorithm['id']}", "display": f"medgate {model} {version} (AI algorithm)"}
    observations = []
    for index, f in enumerate(findings, start=1):
        code = _coding(f.code.scheme, f.code.value, f.code.meaning)
        on = " ".join(f"urn:oid:{image.sop_instance_uid}" for image in f.located_sources) \
            if f.mask is not None else f"urn:oid:{f.source.sop_instance_uid}"
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
            **_call(f),
            "component": [{"code": {"coding": [PROBABILITY]},
                           "valueQuantity": {"value": round(float(f.probability), 6), "unit": "1",
                                             "system": CODE_SYSTEMS["UCUM"], "code": "1"}}],
            "derivedFrom": [study_ref],
            "note": [{"text": f"{note}"} for note in dict.fromkeys((NOT_FOR_CLINICAL_USE, *f.notes,
                                                                  *([f.ood_note] if f.outside else [])))]
            + ([{"text": f"located at {f.location} on image(s) {on}"}] if f.location else []),
        })
    conclusion, positive_codes = _conclusion(findings)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": "preliminary",
        "category": kind.category,
        "code": {"coding": [kind.code], "text": f"AI {model} {version} result"},
        **common,
        "issued": issued.isoformat(),
        "result": [{"reference": f"Observation/{o['id']}"} for o in observations],
        "imagingStudy": [study_ref],
        "conclusion": conclusion,
    }
    if sr_sop_instance_uid:
        report["identifier"] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sr_sop_instance_uid}"}]
    if positive_codes:
        report["conclusionCode"] = [{"coding": [_coding(c.scheme, c.value, c.meaning)]} for c in positive_codes]
    return [report, *observations, algorithm]


def patient_identity(settings) -> PatientIdentity:
    """The :class:`PatientIdentity` of a configuration: ``fhir.patient_issuers`` and
    ``fhir.unqualified_patient_id`` name a key of ``iomt.identifiers`` or give a system URI."""
    systems = settings.iomt.identifiers.model_dump()

    def system(name: str | None) -> str | None:
        return systems.get(name, name) if name else None

    issuers = {issuer: system(name) for issuer, name in settings.fhir.patient_issuers.items()}
    return PatientIdentity(issuers, system(settings.fhir.unqualified_patient_id))
