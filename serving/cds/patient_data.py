"""What medgate holds about a patient, read from the server's store for the cards.

- NEWS2: the latest total-score Observations (SNOMED CT 1104051000000101, written by the vitals
  bridge, :mod:`iomt.observations`), their band from the interpretation, and the trend between
  the latest and the one before;
- deterioration risk: the latest RiskAssessment (:mod:`iomt.risk`);
- open alerts: active Flags (:mod:`iomt.alerts`);
- AI imaging results: the DiagnosticReports medgate wrote for the patient's studies
  (:mod:`serving.fhir.report`) with their result Observations.

Resources are looked up by subject reference (``Patient/<id>``) for each of the patient's
references (:class:`serving.cds.prefetch.PatientLookup`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from models import clinical_codes as codes

#: Observations read per patient reference to find the latest NEWS2 scores.
MAX_OBSERVATIONS = 500
#: Reports (and alerts) read per patient reference.
MAX_REPORTS = 20
MAX_FLAGS = 20
_BAND = re.compile(r"(low-medium|low|medium|high)")
_STUDY_OID = re.compile(r"^urn:oid:([0-9.]{1,64})$")
_METHOD = re.compile(r"model (\S+) (\S+) on")
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
_OBSERVATION_REF = re.compile(r"\s*\(Observation/[^)]*\)")  # an alert's text names its NEWS2 Observation


@dataclass(frozen=True)
class News2Score:
    total: int
    band: str | None
    time: str | None
    complete: bool


@dataclass(frozen=True)
class Risk:
    probability: float
    time: str | None
    model: str
    version: str


@dataclass(frozen=True)
class Alert:
    id: str
    text: str
    time: str | None


@dataclass(frozen=True)
class ImagingResult:
    """One model version's report on one study: its findings as ``(text, positive, probability)``."""

    report_id: str
    study_uid: str | None
    model: str
    version: str
    conclusion: str
    findings: tuple[tuple[str, bool, float | None], ...]
    issued: str | None

    @property
    def positive(self) -> bool:
        return any(f[1] for f in self.findings)


@dataclass(frozen=True)
class PatientData:
    references: tuple[str, ...]
    news2: tuple[News2Score, ...] = ()        # newest first
    risk: Risk | None = None
    alerts: tuple[Alert, ...] = ()
    imaging: tuple[ImagingResult, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.news2 or self.risk or self.alerts or self.imaging)


def _instant(when: str | None) -> datetime:
    """A FHIR dateTime as the instant it names (as text, +07:00 sorts after every Z); the earliest
    instant when absent or unreadable."""
    try:
        instant = datetime.fromisoformat(when) if when else _EARLIEST
    except ValueError:
        return _EARLIEST
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=timezone.utc)


def _codes(resource: dict) -> set[str]:
    return {c.get("code") for c in (resource.get("code") or {}).get("coding", [])}


def _news2(observations: Iterable[dict]) -> list[News2Score]:
    scores = []
    for obs in observations:
        if codes.NEWS2_TOTAL_SCORE in _codes(obs) and isinstance(obs.get("valueInteger"), int):
            text = " ".join(i.get("text", "") for i in obs.get("interpretation", []))
            band = _BAND.search(text)
            scores.append(News2Score(obs["valueInteger"], band[1] if band else None, obs.get("effectiveDateTime"),
                                     obs.get("status") == "final"))
    return sorted(scores, key=lambda s: _instant(s.time), reverse=True)


def _risk(resource: dict) -> Risk | None:
    prediction = (resource.get("prediction") or [{}])[0]
    probability = prediction.get("probabilityDecimal")
    if not isinstance(probability, (int, float)):
        return None
    method = _METHOD.search((resource.get("method") or {}).get("text", ""))
    model, version = (method[1], method[2]) if method else ("unnamed model", "?")  # method text not ours
    return Risk(float(probability), resource.get("occurrenceDateTime"), model, version)


def _imaging(store, report: dict) -> ImagingResult | None:
    device = None
    findings = []
    for ref in report.get("result") or []:
        obs_id = str(ref.get("reference", "")).removeprefix("Observation/")
        obs = store.resource("Observation", obs_id) if obs_id else None
        if obs is None:
            continue
        device = device or (obs.get("device") or {}).get("reference")
        interpretation = {c.get("code") for i in obs.get("interpretation", []) for c in i.get("coding", [])}
        probability = next((c["valueQuantity"].get("value") for c in obs.get("component", [])
                            if "valueQuantity" in c), None)
        findings.append(((obs.get("code") or {}).get("text") or "finding", "POS" in interpretation, probability))
    algorithm = store.resource("Device", device.removeprefix("Device/")) if device else None
    if algorithm is None:
        return None  # not a medgate AI report
    study = next((_STUDY_OID.match(str((s.get("identifier") or {}).get("value", "")))
                  for s in report.get("imagingStudy") or []), None)
    return ImagingResult(report["id"], study[1] if study else None, algorithm.get("modelNumber", "?"),
                         ((algorithm.get("version") or [{}])[0]).get("value", "?"), report.get("conclusion", ""),
                         tuple(findings), report.get("issued"))


def patient_data(store, references: Iterable[str]) -> PatientData:
    """What ``store`` (:class:`serving.store.Store`) holds about the patient of ``references``."""
    references = tuple(references)
    scores: list[News2Score] = []
    risks: list[tuple[str, dict]] = []
    alerts: dict[str, Alert] = {}
    imaging: dict[str, ImagingResult] = {}
    for ref in references:
        scores += _news2(store.latest_resources("Observation", ref, MAX_OBSERVATIONS))
        risks += [(_instant(r.get("occurrenceDateTime")), r) for r in store.latest_resources("RiskAssessment", ref, 1)]
        for flag in store.latest_resources("Flag", ref, MAX_FLAGS):
            if flag.get("status") == "active":
                text = _OBSERVATION_REF.sub("", (flag.get("code") or {}).get("text") or "") or "alert"
                alerts[flag["id"]] = Alert(flag["id"], text,
                                           (flag.get("period") or {}).get("start"))
        for report in store.latest_resources("DiagnosticReport", ref, MAX_REPORTS):
            result = _imaging(store, report)
            if result is not None:
                imaging[result.report_id] = result
    risk = _risk(max(risks, key=lambda r: r[0])[1]) if risks else None
    return PatientData(references, tuple(sorted(scores, key=lambda s: _instant(s.time), reverse=True)), risk,
                       tuple(sorted(alerts.values(), key=lambda a: _instant(a.time), reverse=True)),
                       tuple(sorted(imaging.values(), key=lambda r: _instant(r.issued), reverse=True)))

