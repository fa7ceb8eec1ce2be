"""Imaging results as an HL7 v2.5.1 ORU^R01 (HL7 v2.5.1 chapter 7, "Unsolicited transmission of an
observation message"), for a RIS/HIS that triages its worklist by them.

One message per model version per study::

    MSH  sending/receiving application and facility, ORU^R01^ORU_R01, MSH-10 derived from the result
    PID  PID-3 the image's Patient ID (+ Other Patient IDs) with assigning authority and type; name,
         birth date, sex
    ORC  RE (observations to follow), ORC-2 placer, ORC-3 filler order number
    OBR  OBR-2 placer order number (0040,2016), OBR-3 filler = Accession Number (0008,0050), OBR-4
         the report's LOINC code, OBR-7 study date/time, OBR-22 when the result was made, OBR-24
         RAD (or OTH), OBR-25 P: preliminary, an unverified AI result
    NTE  "not for clinical use"; the model, its version and operating point
    OBX  HD  113014^Study^DCM: the Study Instance UID (as IHE RAD TF-2 4.28 carries DICOM UIDs)
    OBX  CWE per finding: OBX-3 the finding's code, OBX-5 present/absent (SNOMED CT, as the SR),
         OBX-8 A/N (HL7 table 0078) at the model's operating point, OBX-9 the probability
    OBX  NM  per finding, same sub-ID (OBX-4): 122157^Probability^DCM, unit 1 (UCUM)

Every text is escaped (HL7 v2.5.1 2.7.4: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``).  MSH-10 (:func:`control_id`)
derives from the study, the model version, the destination and the images read, and MSH-7 is the
time the result was made: building it again gives the same message, so a RIS that receives it
twice (a lost ACK, a retry) can tell it is one.  MSH-15/16 are empty: original-mode acknowledgment
(HL7 v2.5.1 2.9.2).  The text is UTF-8, declared in MSH-18.
"""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom import Dataset

from models import coding_scheme
from models.finding import NOT_FOR_CLINICAL_USE, Concept, Finding
from serving.fhir.report import CODE_SYSTEMS as FHIR_SYSTEMS, ReportKind, report_kind

#: HL7 v2.5.1 2.5.4 message delimiters: field, then MSH-2 component, repetition, escape, subcomponent.
FIELD, COMPONENT, REPETITION, ESCAPE, SUBCOMPONENT = "|", "^", "~", "\\", "&"
ENCODING_CHARACTERS = COMPONENT + REPETITION + ESCAPE + SUBCOMPONENT
#: HL7 v2.5.1 2.7.4: each delimiter and its escape sequence.
ESCAPES = {ESCAPE: "\\E\\", FIELD: "\\F\\", COMPONENT: "\\S\\", SUBCOMPONENT: "\\T\\", REPETITION: "\\R\\"}
#: 2.7.5 hexadecimal escapes for the line breaks a text may hold (a bare CR ends a segment).
LINE_BREAKS = {"\r": "\\X0D\\", "\n": "\\X0A\\"}
SEGMENT_END = "\r"
VERSION = "2.5.1"  # MSH-12 (HL7 table 0104)
MESSAGE_TYPE = ("ORU", "R01", "ORU_R01")  # MSH-9 (tables 0076, 0003, 0354)
CHARACTER_SET = "UNICODE UTF-8"  # MSH-18 (HL7 table 0211)
#: MSH-10 is ST of at most 20 characters in v2.5.1 (2.15.9.10).
CONTROL_ID_CHARS = 20
ORDER_CONTROL_RESULTS = "RE"  # ORC-1 (table 0119): observations to follow
RESULT_STATUS_PRELIMINARY = "P"  # OBR-25 (table 0123) and OBX-11 (table 0085)
RESULT_STATUS_NO_RESULT = "X"  # OBX-11 (table 0085): results cannot be obtained for this observation
ABNORMAL, NORMAL = "A", "N"  # OBX-8 (table 0078)
COMMENT_SOURCE_FILLER = "L"  # NTE-2 (table 0105): ancillary (filler) department
COMMENT_TYPE_REMARK = "RE"  # NTE-4 (table 0364)
#: OBR-24 diagnostic service section (HL7 table 0074) of each report kind.
SERVICE_SECTION = {ReportKind.RADIOLOGY: "RAD", ReportKind.DERMATOLOGY: "OTH"}
#: Coding systems (HL7 table 0396) of the DICOM Coding Scheme Designators that findings use; a
#: private designator (``99...``, PS3.3 8.2.1.1) is a local code there too ("99zzz").
CODING_SYSTEMS = {"SCT": "SCT", "LN": "LN", "DCM": "DCM", "UCUM": "UCUM"}
#: PS3.16 Annex D (113014, DCM, "Study"): the OBX that carries the Study Instance UID.
STUDY = Concept("113014", "DCM", "Study")
#: PS3.16 CID 241 Present / Absent (SNOMED CT) and (122157, DCM, "Probability"), as in the SR.
PRESENT = Concept("52101004", "SCT", "Present")
ABSENT = Concept("272519000", "SCT", "Absent")
PROBABILITY = Concept("122157", "DCM", "Probability")
UNITY = Concept("1", "UCUM", "1")  # UCUM unity: a probability has no unit


def escape(text: object) -> str:
    """``text`` with each HL7 delimiter written as its escape sequence (HL7 v2.5.1 2.7.4), line
    breaks as hexadecimal escapes (2.7.5) and other control characters as spaces."""
    out = []
    for char in str(text):
        if char in ESCAPES:
            out.append(ESCAPES[char])
        elif char in LINE_BREAKS:
            out.append(LINE_BREAKS[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def components(*values: object) -> str:
    """Escaped components joined by ``^``, trailing empty ones left out."""
    return COMPONENT.join(escape(v) for v in values).rstrip(COMPONENT)


def coded(concept: Concept) -> str:
    """A CWE (HL7 v2.5.1 2.A.13): identifier ^ text ^ coding system (table 0396)."""
    system = CODING_SYSTEMS.get(concept.scheme)
    if system is None and coding_scheme.is_private(concept.scheme):
        system = concept.scheme
    if system is None:
        raise ValueError(f"coding scheme {concept.scheme!r} of code {concept.value!r} has no HL7 coding "
                         f"system; known: {', '.join(CODING_SYSTEMS)} and private 99... schemes.")
    return components(concept.value, concept.meaning, system)


def timestamp(when: datetime) -> str:
    """A TS (2.A.77) to the second with its UTC offset: ``YYYYMMDDHHMMSS+ZZZZ``."""
    if when.tzinfo is None:
        raise ValueError(f"`when` must be timezone-aware, {when!r} is given.")
    return when.strftime("%Y%m%d%H%M%S%z")


def study_timestamp(ds: Dataset) -> str:
    """Study Date and Time (DICOM local time) as a TS, with Timezone Offset From UTC (0008,0201)
    when the image gives one; empty without a valid Study Date."""
    date = str(ds.get("StudyDate", ""))
    if len(date) != 8 or not date.isdigit():
        return ""
    time_ = str(ds.get("StudyTime", "")).split(".")[0]
    time_ = time_ if time_.isdigit() and len(time_) in (2, 4, 6) else ""
    offset = str(ds.get("TimezoneOffsetFromUTC", ""))
    return date + time_ + (offset if time_ and len(offset) == 5 and offset[0] in "+-" else "")


@dataclass(frozen=True)
class MessageHeader:
    """MSH-3..6 and MSH-11 of one destination's messages (each an HD namespace, escaped)."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    processing_id: str = "P"

    def __post_init__(self) -> None:
        if self.processing_id not in ("P", "T", "D"):
            raise ValueError(f"processing_id must be P, T or D (HL7 table 0103), {self.processing_id!r} is given.")


def control_id(study_uid: str, model: str, version: str, destination: str, sources: Sequence[str]) -> str:
    """MSH-10 of one result: 20 base32 characters (100 bits) of a SHA-256 over the study, the model
    version, the destination and the SOP Instance UIDs read; the same result gives the same id."""
    seed = "\n".join(["medgate oru", study_uid, model, version, destination, *sorted(sources)])
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii")[:CONTROL_ID_CHARS]


def patient_identifiers(ds: Dataset, identifier_types: Mapping[str, str]) -> str:
    """PID-3: the Patient ID (0010,0020) and each Other Patient IDs item (0010,1002) as a CX
    (2.A.14): ID ^^^ assigning authority (HD: Issuer of Patient ID, its Universal Entity ID and
    type from (0010,0024)) ^ identifier type (0040,0035, else by issuer from ``identifier_types``)."""
    types = {k.upper(): v for k, v in identifier_types.items()}
    repetitions = []
    for item in [ds, *ds.get("OtherPatientIDsSequence", [])]:
        value = str(item.get("PatientID", "")).strip()
        if not value:
            continue
        issuer = str(item.get("IssuerOfPatientID", "")).strip()
        qualifiers = (item.get("IssuerOfPatientIDQualifiersSequence") or [Dataset()])[0]
        authority = SUBCOMPONENT.join(escape(v) for v in (
            issuer, qualifiers.get("UniversalEntityID", ""), qualifiers.get("UniversalEntityIDType", ""))
        ).rstrip(SUBCOMPONENT)
        kind = str(qualifiers.get("IdentifierTypeCode", "")) or types.get(issuer.upper(), "")
        repetitions.append(COMPONENT.join([escape(value), "", "", authority, escape(kind)]).rstrip(COMPONENT))
    return REPETITION.join(repetitions)


def patient_name(ds: Dataset) -> str:
    """PID-5 XPN (2.A.88) from Patient's Name (0010,0010), its alphabetic group: DICOM PN orders
    family ^ given ^ middle ^ prefix ^ suffix, XPN family ^ given ^ middle ^ suffix ^ prefix."""
    alphabetic = str(ds.get("PatientName", "")).split("=")[0]
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return components(family, given, middle, suffix, prefix)


def order_number(ds: Dataset, keyword: str, issuer_keyword: str | None = None) -> str:
    """An EI (2.A.28) from ``keyword``, with its issuer's Local Namespace Entity ID (0040,0031) as
    namespace when ``issuer_keyword`` names a sequence the image has."""
    value = str(ds.get(keyword, "")).strip()
    if not value:
        return ""
    issuer = (ds.get(issuer_keyword) or [Dataset()])[0] if issuer_keyword else Dataset()
    return components(value, issuer.get("LocalNamespaceEntityID", ""), issuer.get("UniversalEntityID", ""),
                      issuer.get("UniversalEntityIDType", ""))


def segment(name: str, *fields: str) -> str:
    """One segment: ``name`` and its fields (already encoded), trailing empty fields left out."""
    return FIELD.join([name, *fields]).rstrip(FIELD)


def build_oru(findings: Sequence[Finding], source: Dataset, header: MessageHeader, message_id: str,
              created_at: datetime, identifier_types: Mapping[str, str] | None = None) -> str:
    """The ORU^R01 of ``findings`` (one model version, one study) about the study of ``source``.

    Parameters
    ----------
    findings
        The model's findings about images of the study (at least one).
    source
        One source image: patient, order and study attributes are read from it.
    header
        Applications, facilities and processing id of MSH.
    message_id
        MSH-10 (:func:`control_id`), at most 20 characters.
    created_at
        When the result was made (timezone-aware): MSH-7, OBR-22, OBX-19.
    identifier_types
        Issuer of Patient ID -> PID-3 identifier type (HL7 table 0203).

    Raises
    ------
    ValueError
        No finding, findings of several models or studies, a ``message_id`` that is empty, too long
        or not plain text, or a finding code whose scheme has no HL7 coding system.
    """
    if not findings:
        raise ValueError("findings must hold at least one finding, none is given.")
    models = {(f.model, f.model_version) for f in findings}
    studies = {f.source.study_uid for f in findings}
    if len(models) != 1 or len(studies) != 1:
        raise ValueError(f"findings must be of one model version about one study, {sorted(models)} about "
                         f"{sorted(studies)} are given.")
    if not message_id or len(message_id) > CONTROL_ID_CHARS or escape(message_id) != message_id:
        raise ValueError(f"message_id must be 1-{CONTROL_ID_CHARS} characters without delimiters, "
                         f"{message_id!r} is given.")
    model, version = models.pop()
    study_uid = studies.pop()
    made = timestamp(created_at)
    kind = report_kind(source)
    placer = order_number(source, "PlacerOrderNumberImagingServiceRequest", "OrderPlacerIdentifierSequence")
    filler = order_number(source, "AccessionNumber", "IssuerOfAccessionNumberSequence")
    algorithm = f"medgate-{model} {version}"
    threshold = findings[0].threshold
    observed = study_timestamp(source)  # OBR-7, OBX-14
    segments = [
        segment("MSH", ENCODING_CHARACTERS, escape(header.sending_application), escape(header.sending_facility),
                escape(header.receiving_application), escape(header.receiving_facility), made, "",
                COMPONENT.join(MESSAGE_TYPE), message_id, header.processing_id, VERSION, *[""] * 5, CHARACTER_SET),
        segment("PID", "1", "", patient_identifiers(source, identifier_types or {}), "", patient_name(source), "",
                escape(str(source.get("PatientBirthDate", ""))[:8]), escape(_sex(source))),
        segment("ORC", ORDER_CONTROL_RESULTS, placer, filler),
        segment("OBR", "1", placer, filler, coded(_report_code(kind)), "", "",
                observed, *[""] * 14, made, "", SERVICE_SECTION[kind], RESULT_STATUS_PRELIMINARY),
        segment("NTE", "1", COMMENT_SOURCE_FILLER, escape(NOT_FOR_CLINICAL_USE), COMMENT_TYPE_REMARK),
        segment("NTE", "2", COMMENT_SOURCE_FILLER,
                escape(f"AI model {algorithm}, operating point {threshold:g}: a finding is present (OBX-8 A) "
                       f"when its probability reaches it"), COMMENT_TYPE_REMARK),
        segment("OBX", "1", "HD", coded(STUDY), "", escape(study_uid), *[""] * 5, RESULT_STATUS_PRELIMINARY),
    ]
    set_id = 1  # OBX-1 counts the message's OBX segments, the study's first
    for n, finding in enumerate(findings, start=1):
        observations = _finding_segments(finding, n, set_id, [observed, components("", algorithm),
                                                              escape(algorithm), made])
        segments += observations
        set_id += sum(1 for seg in observations if seg.startswith("OBX"))
    return SEGMENT_END.join(segments) + SEGMENT_END


def _finding_segments(finding: Finding, sub_id: int, last_set_id: int, context: list[str]) -> list[str]:
    """The OBX segments of one finding (OBX-4 ``sub_id``), numbered after ``last_set_id``; ``context``
    is OBX-14, 17, 18 and 19.  Inside the model's training distribution: the call (CWE) and the
    probability (NM), flagged A or N; outside it: no call and no probability (OBX-11 X, no flag),
    an NTE saying why."""
    observed, method, equipment, made = context

    def obx(offset: int, value_type: str, code: Concept, value: str, units: str, flag: str, probability: str,
            status: str) -> str:
        return segment("OBX", str(last_set_id + offset), value_type, coded(code), str(sub_id), value, units, "",
                       flag, probability, "", status, "", "", observed, "", "", method, equipment, made)

    if finding.outside:  # the positive call is withheld (models.finding)
        return [obx(1, "CWE", finding.code, "", "", "", "", RESULT_STATUS_NO_RESULT),
                segment("NTE", "1", COMMENT_SOURCE_FILLER, escape(finding.ood_note), COMMENT_TYPE_REMARK)]
    flag = ABNORMAL if finding.positive else NORMAL
    probability = f"{finding.probability:.4f}"
    return [obx(1, "CWE", finding.code, coded(PRESENT if finding.positive else ABSENT), "", flag, probability,
                RESULT_STATUS_PRELIMINARY),
            obx(2, "NM", PROBABILITY, probability, coded(UNITY), flag, "", RESULT_STATUS_PRELIMINARY)]


def _report_code(kind: ReportKind) -> Concept:
    """OBR-4: the code of the FHIR DiagnosticReport of ``kind`` (LOINC), by its DICOM designator."""
    designator = {system: scheme for scheme, system in FHIR_SYSTEMS.items()}[kind.code["system"]]
    return Concept(kind.code["code"], designator, kind.code["display"])


def _sex(ds: Dataset) -> str:
    """PID-8 (HL7 table 0001) from Patient's Sex (0010,0040): M, F, O as they are, else U."""
    sex = str(ds.get("PatientSex", "")).strip().upper()
    return sex if sex in ("M", "F", "O") else ("U" if sex else "")


def now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(timezone.utc)
