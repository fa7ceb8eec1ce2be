"""A clinician's verdict as a FHIR R4 Observation, served by the FHIR read API (``/fhir/Observation``).

- ``code``: ``urn:medgate:feedback|ai-output-review`` "Clinician review of an AI output" (no LOINC
  or SNOMED CT concept names this; the local code system is documented in docs/cds-hooks.md);
- ``category``: ``urn:medgate:feedback|ai-output-review`` (no R4 observation-category fits, and the
  vitals bridge's retention deletes old ``survey`` Observations);
- ``focus``: what was judged (the finding's Observation, the alert's Flag); ``derivedFrom``: the
  finding's Observation (R4 allows Observation there, not Flag);
- ``device``: the model version's Device (:func:`serving.fhir.report.device_resource`);
- ``performer``: who, by display name and role (no Practitioner resource is held);
- ``valueCodeableConcept``: the verdict; ``component``: the reason, and for a missed finding the
  point as fractions of the image width and height (UCUM ``1``).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from serving.feedback.records import Feedback, Kind

FEEDBACK_SYSTEM = "urn:medgate:feedback"
REVIEW_CODE = {"system": FEEDBACK_SYSTEM, "code": "ai-output-review", "display": "Clinician review of an AI output"}
#: The category of a verdict.  None of FHIR R4's observation-category codes fits (and the vitals
#: bridge's retention deletes old ``vital-signs`` and ``survey`` Observations, iomt.retention).
CATEGORY = {"system": FEEDBACK_SYSTEM, "code": "ai-output-review", "display": "Review of AI output"}
REASON_CODE = {"system": FEEDBACK_SYSTEM, "code": "reason", "display": "Reason"}
POINT_X = {"system": FEEDBACK_SYSTEM, "code": "point-x", "display": "Missed finding x (fraction of width)"}
POINT_Y = {"system": FEEDBACK_SYSTEM, "code": "point-y", "display": "Missed finding y (fraction of height)"}
UCUM = "http://unitsofmeasure.org"
#: Where a CDS Hooks override reason's code lives when the EHR gave no system of its own.
OVERRIDE_SYSTEM = "urn:medgate:cds:override-reason"


def _fraction(code: dict, value: float) -> dict[str, Any]:
    return {"code": {"coding": [code]},
            "valueQuantity": {"value": round(float(value), 6), "unit": "1", "system": UCUM, "code": "1"}}


def feedback_observation(feedback: Feedback, device_id: str | None = None,
                         subject: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Observation of ``feedback``; ``device_id``: the model version's Device id; ``subject``:
    the judged resource's subject (copied so that a patient's search finds it)."""
    issued = datetime.fromtimestamp(feedback.recorded_at, timezone.utc).isoformat(timespec="milliseconds")
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": feedback.id,
        "status": "final",
        "category": [{"coding": [CATEGORY]}],
        "code": {"coding": [REVIEW_CODE],
                 "text": f"Review of {feedback.model} {feedback.model_version} {feedback.kind}"},
        "effectiveDateTime": issued,
        "issued": issued,
        "performer": [{"display": f"{feedback.who} ({feedback.role})" if feedback.role else feedback.who}],
        "valueCodeableConcept": {"coding": [{"system": FEEDBACK_SYSTEM, "code": feedback.verdict}],
                                 "text": feedback.verdict},
    }
    if subject:
        resource["subject"] = subject
    if feedback.kind != Kind.CARD.value:
        resource["focus"] = [{"reference": feedback.target}]
    else:
        resource["focus"] = [{"display": feedback.target}]  # a card is not a FHIR resource
    if feedback.target.startswith("Observation/"):
        resource["derivedFrom"] = [{"reference": feedback.target}]
    if device_id:
        resource["device"] = {"reference": f"Device/{device_id}",
                              "display": f"medgate {feedback.model} {feedback.model_version} (AI algorithm)"}
    components = []
    if feedback.reason:
        system = OVERRIDE_SYSTEM if feedback.kind == Kind.CARD.value else FEEDBACK_SYSTEM
        components.append({"code": {"coding": [REASON_CODE]},
                           "valueCodeableConcept": {"coding": [{"system": system, "code": feedback.reason}]}})
    if feedback.point_x is not None:
        components += [_fraction(POINT_X, feedback.point_x), _fraction(POINT_Y, feedback.point_y)]
    if components:
        resource["component"] = components
    if feedback.comment:
        resource["note"] = [{"text": feedback.comment}]
    return resource
