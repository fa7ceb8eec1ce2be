"""FHIR R4 Observations from vitals: profile shape, R4B model validation, deterministic ids."""
from __future__ import annotations

import copy
import json

import pytest
from fhir.resources.R4B.observation import Observation

from iomt import news2
from iomt.news2 import score
from iomt.observations import news2_observation, observation_id, vital_observation_id, vital_observations
from iomt.payload import parse_payload
from models import clinical_codes as codes

PATIENT = "Patient/079123456789"
#: SNOMED CT UK Edition (module 83821000000107), as FHIR R4 Coding.version of an edition.
UK_EDITION = "http://snomed.info/sct/83821000000107"
DEVICE = "Device/MON-3-12"

FULL = {
    "patient": {"id": "079123456789"},
    "device": "MON-3-12",
    "time": "2026-11-22T10:15:00+07:00",
    "vitals": [
        {"code": "8867-4", "value": 92, "unit": "/min"},
        {"code": "150456", "system": "urn:iso:std:iso:11073:10101", "value": 0.95, "unit": "1"},
        {"code": "9279-1", "value": 22, "unit": "/min"},
        {"code": "150021", "value": 118, "unit": "mm[Hg]"},
        {"code": "150022", "value": 76, "unit": "mm[Hg]"},
        {"code": "8310-5", "value": 100.4, "unit": "[degF]"},
    ],
    "on_oxygen": False,
    "consciousness": "A",
}


def message(doc=FULL, **changes):
    doc = {**copy.deepcopy(doc), **changes}
    return parse_payload(json.dumps(doc).encode())


def all_resources(msg, device_ref=DEVICE):
    resources = vital_observations(msg, PATIENT, device_ref)
    resources.append(news2_observation(score(msg.news2_input()), msg, PATIENT))
    return resources


def by_code(resources):
    return {r["code"]["coding"][0]["code"]: r for r in resources}


VARIANTS = {
    "full": message(),
    "no-device-field": parse_payload(json.dumps(
        {k: v for k, v in FULL.items() if k != "device"}).encode()),
    "lone-systolic": message(vitals=[{"code": "8480-6", "value": 85, "unit": "mm[Hg]"}]),
    "lone-diastolic": message(vitals=[{"code": "8462-4", "value": 50, "unit": "mm[Hg]"}]),
    "out-of-range": message(vitals=[{"code": "8867-4", "value": 350, "unit": "/min"},
                                    {"code": "8480-6", "value": 45, "unit": "kPa"},
                                    {"code": "2708-6", "value": 40, "unit": "%"}]),
    "incomplete": message(vitals=[{"code": "8867-4", "value": 135, "unit": "/min"}],
                          on_oxygen=None, consciousness=None),
    "scale-2-on-oxygen": message(on_oxygen=True, spo2_scale=2, consciousness="C"),
    "fractional-time": message(time="2026-11-22T03:15:00.125Z"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("device_ref", [DEVICE, None])
def test_every_observation_validates(name, device_ref):
    resources = all_resources(VARIANTS[name], device_ref)
    ids = [r["id"] for r in resources]
    assert len(ids) == len(set(ids))
    for resource in resources:
        assert resource["resourceType"] == "Observation" and resource["id"]
        json.dumps(resource)  # plain JSON
        model = Observation.model_validate(resource)
        assert model.id == resource["id"]


def test_vital_sign_shape():
    resources = vital_observations(message(), PATIENT, DEVICE)
    assert [r["code"]["coding"][0]["code"] for r in resources] == [
        codes.HEART_RATE, codes.OXYGEN_SATURATION, codes.RESPIRATORY_RATE,
        codes.BLOOD_PRESSURE_PANEL, codes.BODY_TEMPERATURE]
    hr = resources[0]
    assert hr["meta"]["profile"] == [codes.VITAL_SIGNS_PROFILE, codes.HEART_RATE_PROFILE]
    assert hr["status"] == "final"
    assert hr["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "vital-signs", "display": "Vital Signs"}
    assert hr["code"]["coding"][0]["system"] == "http://loinc.org"
    assert hr["code"]["text"] == "Heart rate"
    assert hr["subject"] == {"reference": PATIENT}
    assert hr["effectiveDateTime"] == "2026-11-22T10:15:00+07:00"
    assert hr["valueQuantity"] == {"value": 92, "unit": "beats/minute",
                                   "system": "http://unitsofmeasure.org", "code": "/min"}
    assert hr["device"] == {"reference": DEVICE, "display": "MON-3-12"}
    assert "note" not in hr


def test_spo2_carries_both_loinc_codes_and_percent():
    spo2 = by_code(vital_observations(message(), PATIENT))[codes.OXYGEN_SATURATION]
    assert [c["code"] for c in spo2["code"]["coding"]] == ["2708-6", "59408-5"]
    assert spo2["meta"]["profile"][1] == codes.OXYGEN_SATURATION_PROFILE
    assert spo2["valueQuantity"]["code"] == "%" and spo2["valueQuantity"]["value"] == 95


def test_temperature_is_celsius():
    temp = by_code(vital_observations(message(), PATIENT))[codes.BODY_TEMPERATURE]
    assert temp["valueQuantity"]["code"] == "Cel"
    assert temp["valueQuantity"]["value"] == pytest.approx(38.0)


def test_blood_pressure_panel_combines_systolic_and_diastolic():
    resources = vital_observations(message(), PATIENT)
    codes_sent = [r["code"]["coding"][0]["code"] for r in resources]
    assert codes.SYSTOLIC_BP not in codes_sent and codes.DIASTOLIC_BP not in codes_sent
    panel = by_code(resources)[codes.BLOOD_PRESSURE_PANEL]
    assert panel["meta"]["profile"] == [codes.VITAL_SIGNS_PROFILE, codes.BLOOD_PRESSURE_PROFILE]
    assert "valueQuantity" not in panel
    systolic, diastolic = panel["component"]
    assert systolic["code"]["coding"][0]["code"] == codes.SYSTOLIC_BP
    assert systolic["valueQuantity"]["value"] == 118 and systolic["valueQuantity"]["code"] == "mm[Hg]"
    assert diastolic["code"]["coding"][0]["code"] == codes.DIASTOLIC_BP
    assert diastolic["valueQuantity"]["value"] == 76


@pytest.mark.parametrize("present, absent", [("8480-6", "8462-4"), ("8462-4", "8480-6")])
def test_lone_pressure_is_a_component_only_panel(present, absent):
    msg = message(vitals=[{"code": present, "value": 100, "unit": "mm[Hg]"}])
    (panel,) = vital_observations(msg, PATIENT)
    assert panel["code"]["coding"][0]["code"] == codes.BLOOD_PRESSURE_PANEL
    components = {c["code"]["coding"][0]["code"]: c for c in panel["component"]}
    assert components[present]["valueQuantity"]["value"] == 100
    assert "valueQuantity" not in components[absent]
    assert components[absent]["dataAbsentReason"]["coding"][0]["code"] == "unknown"


def test_out_of_range_gets_a_note():
    resources = by_code(vital_observations(VARIANTS["out-of-range"], PATIENT))
    hr_note = resources["8867-4"]["note"][0]["text"]
    assert "outside the plausible physiological range 20-300 /min" in hr_note
    assert "40-300 mm[Hg]" in resources["85354-9"]["note"][0]["text"]
    assert "50-100 %" in resources["2708-6"]["note"][0]["text"]
    assert resources["8867-4"]["valueQuantity"]["value"] == 350  # flagged, kept


def test_last_reading_wins():
    msg = message(vitals=[{"code": "8867-4", "value": 80, "unit": "/min"},
                          {"code": "147842", "value": 84, "unit": "/min"}])
    (hr,) = vital_observations(msg, PATIENT)
    assert hr["valueQuantity"]["value"] == 84


def test_no_device_reference_when_not_given():
    for resource in vital_observations(message(), PATIENT, None):
        assert "device" not in resource


# --- deterministic ids ----------------------------------------------------------------------------

def ids(msg, patient=PATIENT):
    resources = vital_observations(msg, patient, DEVICE)
    resources.append(news2_observation(score(msg.news2_input()), msg, patient))
    return [r["id"] for r in resources]


def test_ids_are_deterministic():
    assert ids(message()) == ids(message())


def test_same_instant_in_another_offset_gives_the_same_ids():
    assert ids(message(time="2026-11-22T03:15:00Z")) == ids(message())


def test_ids_change_with_time_patient_and_code():
    base = ids(message())
    assert set(base).isdisjoint(ids(message(time="2026-11-22T10:16:00+07:00")))
    assert set(base).isdisjoint(ids(message(), patient="Patient/other"))
    assert observation_id(PATIENT, codes.LOINC_SYSTEM, codes.HEART_RATE, message().time) != \
        observation_id(PATIENT, codes.LOINC_SYSTEM, codes.RESPIRATORY_RATE, message().time)


def test_ids_are_uuids_and_identifiers_match():
    for resource in all_resources(message()):
        assert len(resource["id"]) == 36
        assert resource["identifier"] == [{"system": "urn:ietf:rfc:3986",
                                           "value": f"urn:uuid:{resource['id']}"}]


def test_observation_id_needs_an_aware_time():
    naive = message().time.replace(tzinfo=None)
    with pytest.raises(ValueError, match="effective"):
        observation_id(PATIENT, codes.LOINC_SYSTEM, codes.HEART_RATE, naive)


# --- NEWS2 ----------------------------------------------------------------------------------------

def test_news2_complete():
    msg = message()
    result = score(msg.news2_input())
    assert result.complete
    obs = news2_observation(result, msg, PATIENT)
    assert obs["status"] == "final"
    assert obs["code"]["coding"] == [{
        "system": "http://snomed.info/sct", "version": UK_EDITION, "code": "1104051000000101",
        "display": "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score"}]
    assert obs["category"][0]["coding"][0]["code"] == "survey"
    assert obs["valueInteger"] == result.total == 4  # RR 22: 2, SpO2 95 %: 1, pulse 92: 1
    assert obs["interpretation"][0]["text"] == "NEWS2 clinical risk: low"
    assert "Incomplete" not in obs["note"][0]["text"]
    components = {c["code"]["coding"][0]["code"]: c["valueInteger"] for c in obs["component"]}
    assert components == {
        codes.NEWS2_RESPIRATION_RATE_SCORE: 2, codes.NEWS2_SPO2_SCALE_1_SCORE: 1,
        codes.NEWS2_AIR_OR_OXYGEN_SCORE: 0, codes.NEWS2_SYSTOLIC_BP_SCORE: 0,
        codes.NEWS2_PULSE_SCORE: 1, codes.NEWS2_CONSCIOUSNESS_SCORE: 0,
        codes.NEWS2_TEMPERATURE_SCORE: 0}  # 100.4 [degF] = 38.0 Cel
    assert sum(components.values()) == obs["valueInteger"]


def test_news2_incomplete_is_preliminary_and_names_what_is_missing():
    msg = VARIANTS["incomplete"]
    result = score(msg.news2_input())
    obs = news2_observation(result, msg, PATIENT)
    assert obs["status"] == "preliminary"
    assert obs["valueInteger"] == 3
    assert obs["interpretation"][0]["text"] == "NEWS2 clinical risk: at least low-medium"
    note = obs["note"][0]["text"]
    for label in ("respiration rate", "SpO2", "air or oxygen", "systolic blood pressure",
                  "consciousness", "temperature"):
        assert label in note
    assert "lower bounds" in note
    scored = [c for c in obs["component"] if "valueInteger" in c]
    absent = [c for c in obs["component"] if "dataAbsentReason" in c]
    assert [c["code"]["coding"][0]["code"] for c in scored] == [codes.NEWS2_PULSE_SCORE]
    assert len(absent) == len(news2.PARAMETERS) - 1  # never scored as 0


def test_news2_spo2_component_follows_the_scale():
    msg = VARIANTS["scale-2-on-oxygen"]
    obs = news2_observation(score(msg.news2_input()), msg, PATIENT)
    component_codes = [c["code"]["coding"][0]["code"] for c in obs["component"]]
    assert codes.NEWS2_SPO2_SCALE_2_SCORE in component_codes
    assert codes.NEWS2_SPO2_SCALE_1_SCORE not in component_codes


def test_news2_derived_from_the_vital_observations():
    msg = message()
    vitals = by_code(vital_observations(msg, PATIENT, DEVICE))
    obs = news2_observation(score(msg.news2_input()), msg, PATIENT)
    expected = [f"Observation/{vitals[c]['id']}" for c in
                (codes.RESPIRATORY_RATE, codes.OXYGEN_SATURATION, codes.BLOOD_PRESSURE_PANEL,
                 codes.HEART_RATE, codes.BODY_TEMPERATURE)]
    assert [d["reference"] for d in obs["derivedFrom"]] == expected


def test_news2_not_derived_from_diastolic_only():
    msg = VARIANTS["lone-diastolic"]
    obs = news2_observation(score(msg.news2_input()), msg, PATIENT)
    assert "derivedFrom" not in obs
    assert obs["valueInteger"] == 0 and obs["status"] == "preliminary"


# --- arguments --------------------------------------------------------------------------------------

@pytest.mark.parametrize("patient_ref", ["", "  ", None, 42])
def test_patient_ref_is_required(patient_ref):
    msg = message()
    with pytest.raises(ValueError, match="patient_ref"):
        vital_observations(msg, patient_ref)
    with pytest.raises(ValueError, match="patient_ref"):
        news2_observation(score(msg.news2_input()), msg, patient_ref)


def test_device_ref_must_be_a_reference_when_given():
    with pytest.raises(ValueError, match="device_ref"):
        vital_observations(message(), PATIENT, "")


def test_wrong_argument_types():
    msg = message()
    with pytest.raises(TypeError, match="VitalsMessage"):
        vital_observations({"vitals": []}, PATIENT)
    with pytest.raises(TypeError, match="News2Result"):
        news2_observation({"total": 0}, msg, PATIENT)
    with pytest.raises(TypeError, match="VitalsMessage"):
        news2_observation(score(msg.news2_input()), {"time": None}, PATIENT)


def test_news2_snomed_codes_name_the_uk_edition():
    msg = message()
    news2_obs = news2_observation(score(msg.news2_input()), msg, PATIENT)
    Observation.model_validate(news2_obs)
    codings = news2_obs["code"]["coding"] + [c for comp in news2_obs["component"] for c in comp["code"]["coding"]]
    snomed = [c for c in codings if c["system"] == codes.SNOMED_SYSTEM]
    assert len(snomed) == 1 + len(news2.PARAMETERS)
    assert all(c["version"] == UK_EDITION for c in snomed)
    # LOINC codings of the vital signs carry no edition
    assert all("version" not in c for r in vital_observations(msg, PATIENT) for c in r["code"]["coding"])


def test_subject_carries_the_patient_identifier_when_given():
    msg = message()
    identifier = {"system": "http://fhir.hl7.org.vn/core/sid/cccd", "value": "079123456789"}
    resources = vital_observations(msg, PATIENT, DEVICE, patient_identifier=identifier)
    resources.append(news2_observation(score(msg.news2_input()), msg, PATIENT, patient_identifier=identifier))
    for resource in resources:
        Observation.model_validate(resource)
        assert resource["subject"] == {"reference": PATIENT, "identifier": identifier}
    plain = vital_observations(msg, PATIENT, DEVICE)
    assert [r["id"] for r in plain] == [r["id"] for r in resources[:-1]], "ids do not depend on it"
    assert all(r["subject"] == {"reference": PATIENT} for r in plain)


def test_vital_observation_id_is_the_id_vital_observations_writes():
    msg = message()
    written = by_code(vital_observations(msg, PATIENT))
    assert vital_observation_id(PATIENT, "8867-4", msg.time) == written["8867-4"]["id"]
    assert vital_observation_id(PATIENT, "8480-6", msg.time) == written["85354-9"]["id"]  # the BP panel
    assert vital_observation_id(PATIENT, "8462-4", msg.time) == written["85354-9"]["id"]
    assert vital_observation_id(PATIENT, "0000-0", msg.time) is None


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_vital_sign_shape_carries_the_identifier_and_only_its_subject_changes(name):
    msg = VARIANTS[name]
    identifier = {"system": "urn:oid:1.2.3.4.5", "value": "MRN 42/7"}
    plain = vital_observations(msg, PATIENT, DEVICE)
    given = vital_observations(msg, PATIENT, DEVICE, patient_identifier=identifier)
    assert len(given) == len(plain)
    for resource, without in zip(given, plain):
        Observation.model_validate(resource)
        assert resource["subject"] == {"reference": PATIENT, "identifier": identifier}
        assert {**resource, "subject": without["subject"]} == without
