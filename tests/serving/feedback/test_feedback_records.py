"""Feedback records refuse what the rules forbid, naming the bad value; the FHIR Observation is valid R4."""
from __future__ import annotations

import pytest
from fhir.resources.R4B.observation import Observation

from iomt.retention import BRIDGE_CATEGORIES
from serving.feedback.fhir import feedback_observation
from serving.feedback.records import Feedback


def finding(**changes) -> Feedback:
    fields = dict(id="f1", kind="finding", verdict="disagree", model="tb", model_version="1.0.0",
                  target="Observation/o1", who="dr a", role="clinician", recorded_at=1.8e9,
                  reason="false-positive")
    return Feedback(**{**fields, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"verdict": "helpful"}, "a finding verdict must be one of ['agree', 'disagree'], 'helpful' is given"),
    ({"reason": None}, "a disagreement needs a reason"),
    ({"verdict": "agree"}, "an agreement takes no reason, 'false-positive' is given"),
    ({"reason": "looks odd"}, "reason must be a code"),
    ({"reason": "too-dark"}, "'too-dark' is not a valid FindingReason"),
    ({"reason": "missed-finding", "point_x": 1.5, "point_y": 0.2}, "in [0, 1], (1.5, 0.2) is given"),
    ({"who": ""}, "who must not be empty"),
    ({"kind": "card", "verdict": "agree"}, "a card verdict must be one of ['accepted', 'overridden']"),
    ({"comment": "x" * 1001}, "comment must be at most 1000 characters"),
])
def test_bad_feedback_is_refused_naming_the_value(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
                       .replace("]", r"\]")):
        finding(**changes)


def test_a_missed_finding_with_its_point_is_a_valid_r4_observation():
    item = finding(reason="missed-finding", target="DiagnosticReport/r1", point_x=0.25, point_y=0.75,
                   comment="nodule right upper zone")
    resource = feedback_observation(item, "dev-1", {"reference": "Patient/p1"})
    Observation.model_validate(resource)
    assert resource["focus"] == [{"reference": "DiagnosticReport/r1"}] and "derivedFrom" not in resource
    assert [c["valueQuantity"]["value"] for c in resource["component"][1:]] == [0.25, 0.75]
    assert resource["device"]["reference"] == "Device/dev-1"


def test_a_finding_verdict_is_derived_from_the_findings_observation():
    resource = feedback_observation(finding(), None, None)
    Observation.model_validate(resource)
    assert resource["derivedFrom"] == [{"reference": "Observation/o1"}]
    assert resource["valueCodeableConcept"]["coding"][0]["code"] == "disagree"


def test_a_verdict_outlives_the_vitals_retention():
    """The bridge's retention deletes old Observations of its categories (vital-signs, survey)."""
    resource = feedback_observation(finding(), None, None)
    assert not {c["code"] for cat in resource["category"] for c in cat["coding"]} & set(BRIDGE_CATEGORIES)
