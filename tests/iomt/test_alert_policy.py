"""Alert de-duplication and escalation; the Flag and the MQTT alert message."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fhir.resources.R4B.flag import Flag

from iomt.alerts import AlertPolicy, alert_message, flag_resource
from iomt.news2 import News2Input, score

SCHEMA = Path(__file__).resolve().parents[2] / "iomt" / "schemas" / "alert.schema.json"
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
LOW = score(News2Input(16, 97, False, 120, 70, "A", 37.0))
RED = score(News2Input(16, 97, False, 120, 70, "V", 37.0))  # consciousness 3 only: low-medium
MEDIUM = score(News2Input(22, 94, False, 120, 115, "A", 37.0))  # 2+1+2 = 5
HIGH = score(News2Input(26, 90, True, 95, 120, "A", 39.5))


def test_bands_of_the_fixtures():
    assert [r.band.value for r in (LOW, RED, MEDIUM, HIGH)] == ["low", "low-medium", "medium", "high"]


def test_escalation_at_once_repeats_only_after_the_window():
    policy = AlertPolicy("low-medium", repeat_after_s=600)
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    assert policy.decide("P", LOW, at(0)) is None
    assert policy.decide("P", MEDIUM, at(10)).reason == "escalation"
    assert policy.decide("P", MEDIUM, at(20)) is None
    assert policy.decide("P", LOW, at(30)) is None
    assert policy.decide("P", MEDIUM, at(40)) is None  # flapping back within the window
    assert policy.decide("P", HIGH, at(50)).reason == "escalation"
    assert policy.decide("P", MEDIUM, at(500)) is None
    assert policy.decide("P", MEDIUM, at(651)).reason == "reminder"
    assert policy.decide("Q", RED, at(0)).red_flags == ("consciousness",)


def test_min_band_and_bad_arguments():
    policy = AlertPolicy("high", repeat_after_s=0)
    assert policy.decide("P", MEDIUM, T0) is None and policy.decide("P", HIGH, T0)
    with pytest.raises(ValueError, match="min_band"):
        AlertPolicy("low")
    with pytest.raises(ValueError, match="repeat_after_s"):
        AlertPolicy(repeat_after_s=-1)


def test_flag_validates_and_alert_matches_its_schema():
    jsonschema = pytest.importorskip("jsonschema")
    decision = AlertPolicy().decide("Patient/P", HIGH, T0)
    flag = flag_resource("Patient/P", HIGH, T0, decision, "obs-1")
    Flag.model_validate(flag)
    assert flag["id"] == flag_resource("Patient/P", HIGH, T0, decision, "obs-1")["id"]
    message = alert_message(patient_id="P", patient_ref="Patient/P",
                            location={"site": "h1", "ward": "w", "bed": "b"}, device="MON-1",
                            result=HIGH, at=T0, decision=decision, news2_id="obs-1", flag=flag["id"])
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads(json.dumps(message)), schema)


def test_flag_references_its_news2_observation():
    decision = AlertPolicy().decide("Patient/P", HIGH, T0)
    flag = flag_resource("Patient/P", HIGH, T0, decision, "obs-1")
    Flag.model_validate(flag)
    assert flag["extension"] == [{"url": "http://hl7.org/fhir/StructureDefinition/flag-detail",
                                  "valueReference": {"reference": "Observation/obs-1"}}]
    identified = flag_resource("Patient/P", HIGH, T0, decision, "obs-1",
                               patient_identifier={"system": "urn:x", "value": "P"})
    assert identified["subject"] == {"reference": "Patient/P", "identifier": {"system": "urn:x", "value": "P"}}
    assert identified["id"] == flag["id"]
