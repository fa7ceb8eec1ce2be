"""The CDS Services medgate offers (CDS Hooks 2.0 "Discovery", ``GET /cds-services``).

Two services, one per hook, giving the same cards: ``patient-view`` (a chart is opened) and
``encounter-discharge`` (before the patient leaves).  Each declares the prefetch it needs: the
patient's FHIR Patient resource, whose identifiers (citizen ID, insurance number) find the
patient's data in medgate's store (:mod:`serving.cds.prefetch`).
"""
from __future__ import annotations

from dataclasses import dataclass

#: CDS Hooks 2.0 hooks served (https://cds-hooks.hl7.org/hooks/).
PATIENT_VIEW = "patient-view"
ENCOUNTER_DISCHARGE = "encounter-discharge"
#: The prefetch key of the patient and its template (CDS Hooks 2.0 "Prefetch Template").
PATIENT_PREFETCH = "patient"
PREFETCH = {PATIENT_PREFETCH: "Patient/{{context.patientId}}"}
#: Context fields each hook requires (the hooks' "Context" tables).
REQUIRED_CONTEXT = {PATIENT_VIEW: ("userId", "patientId"),
                    ENCOUNTER_DISCHARGE: ("userId", "patientId", "encounterId")}


@dataclass(frozen=True)
class CdsService:
    """One CDS Service: its ``id`` (the URL segment), hook, title and description."""

    id: str
    hook: str
    title: str
    description: str

    def __post_init__(self) -> None:
        if self.hook not in REQUIRED_CONTEXT:
            raise ValueError(f"hook must be one of {sorted(REQUIRED_CONTEXT)}, {self.hook!r} is given")

    def discovery(self) -> dict:
        return {"hook": self.hook, "id": self.id, "title": self.title, "description": self.description,
                "prefetch": dict(PREFETCH)}


SERVICES = {s.id: s for s in (
    CdsService("medgate-patient-view", PATIENT_VIEW, "medgate: vitals, alerts and AI imaging results",
               "Current NEWS2 band and trend, deterioration risk, open alerts and AI imaging findings of the "
               "patient, with links to the medgate worklist. NOT FOR CLINICAL USE."),
    CdsService("medgate-encounter-discharge", ENCOUNTER_DISCHARGE, "medgate: before discharge",
               "Open alerts, the latest NEWS2 and deterioration risk, and AI imaging findings not yet reviewed, "
               "shown before the patient is discharged. NOT FOR CLINICAL USE."),
)}


def discovery() -> dict:
    """The discovery response: ``{"services": [...]}``."""
    return {"services": [s.discovery() for s in SERVICES.values()]}
