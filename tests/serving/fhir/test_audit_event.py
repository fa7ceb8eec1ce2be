"""Audit rows as FHIR R4 AuditEvents: each action gets its R4 action code and restful interaction."""
from __future__ import annotations

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from serving.fhir.audit_event import audit_event
from serving.governance.audit import ACTIONS


def _row(action: str) -> dict:
    return {"seq": 7, "hash": "ab" * 32, "recorded": "2026-12-03T10:00:00+00:00", "who": "Dr. An",
            "role": "clinician", "action": action, "resource_type": "DiagnosticReport", "resource_id": "r1",
            "study_uid": "1.2.3", "query": "model=tb", "client": "10.0.0.5", "outcome": "success",
            "detail": "HTTP 200"}


@pytest.mark.parametrize("action, code, interaction", [
    ("read", "R", "read"), ("stream", "R", "read"), ("export", "R", "read"),
    ("search", "E", "search-type"), ("execute", "E", "operation")])
def test_each_action_maps_to_its_r4_codes(action, code, interaction):
    event = audit_event(_row(action))
    AuditEvent.model_validate(event)
    assert event["action"] == code
    assert event["subtype"] == [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}]


def test_every_audit_action_is_mapped():
    assert set(ACTIONS) == {"read", "stream", "export", "search", "execute"}
