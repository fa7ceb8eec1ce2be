"""The pipeline's vital-sign and NEWS2 Observations and Flags name the patient by literal
reference and by identifier, as the imaging DiagnosticReports do (serving.fhir.report)."""
from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.observation import Observation

from iomt.alerts import AlertPolicy
from iomt import vital_records
from iomt.config import IdentifierSystems
from iomt.identity import AdtEvent, DeviceRegistry, patient_reference
from iomt.pipeline import VitalsPipeline
from iomt.state import StateTable
from iomt.topics import Topics
from serving.store import Store

SYSTEMS = IdentifierSystems(citizen_id="urn:test:citizen", social_insurance="urn:test:insurance",
                            device="urn:test:device")
#: heart rate 135, SpO2 88 %, respiration 28: NEWS2 high (an alert with the default policy).
ALARMING = [[147842, 135], [150456, 88], [151562, 28]]
T0_MS = 1_795_000_000_000


@pytest.fixture
def pipeline(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    registry = DeviceRegistry(store.vitals, SYSTEMS)
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    registry.apply(AdtEvent("admit", "MON-1", since, patient_id="P1"))
    registry.apply(AdtEvent("admit", "MON-2", since, patient_id="P2", patient_system="urn:test:mrn"))
    yield VitalsPipeline(Topics("medgate"), store.vitals, registry, states=StateTable(), alerts=AlertPolicy())
    store.close()


def scored(pipeline, payload: dict) -> dict[str, dict]:
    out = pipeline.run([("medgate/h1/w1/b1/x/vitals", orjson.dumps(payload))])
    assert out.dead_letters == []
    return {r["resourceType"]: r for r in out.resources}


@pytest.mark.parametrize("device, patient, system", [("MON-1", "P1", "urn:test:citizen"),
                                                     ("MON-2", "P2", "urn:test:mrn")])
def test_news2_and_flag_carry_the_identifier_of_an_associated_patient(pipeline, device, patient, system):
    resources = scored(pipeline, {"d": device, "t": T0_MS, "v": ALARMING})
    for rtype in ("Observation", "Flag"):
        assert resources[rtype]["subject"] == {"reference": f"Patient/{patient}",
                                               "identifier": {"system": system, "value": patient}}
    Observation.model_validate(resources["Observation"])
    Flag.model_validate(resources["Flag"])


def test_a_patient_in_the_payload_without_a_system_is_a_citizen_id(pipeline):
    doc = {"patient": {"id": "P9"}, "device": "MON-9", "time": "2026-11-22T10:00:00Z",
           "vitals": [{"code": "8867-4", "value": 135, "unit": "/min"}, {"code": "59408-5", "value": 88, "unit": "%"},
                      {"code": "9279-1", "value": 28, "unit": "/min"}]}
    resources = scored(pipeline, doc)
    assert resources["Flag"]["subject"]["identifier"] == {"system": "urn:test:citizen", "value": "P9"}
    doc["patient"] = {"id": "P10", "system": "urn:test:mrn"}
    assert scored(pipeline, doc)["Observation"]["subject"]["identifier"] == {"system": "urn:test:mrn", "value": "P10"}


@pytest.mark.parametrize("payload, patient, system", [
    ({"d": "MON-1", "t": T0_MS, "v": ALARMING}, "P1", "urn:test:citizen"),  # ADT without a system
    ({"d": "MON-2", "t": T0_MS, "v": ALARMING}, "P2", "urn:test:mrn"),  # the admission's system
    ({"patient": {"id": "P 10", "system": "urn:test:mrn"}, "device": "MON-9", "time": "2026-11-22T10:00:00Z",
      "vitals": [{"code": "8867-4", "value": 135, "unit": "/min"}]}, "P 10", "urn:test:mrn"),  # the message's
    ({"patient": {"id": "P9"}, "device": "MON-9", "time": "2026-11-22T10:00:00Z",
      "vitals": [{"code": "8867-4", "value": 135, "unit": "/min"}]}, "P9", "urn:test:citizen"),
])
def test_vital_sign_observations_carry_the_identifier_the_news2_observation_carries(
        pipeline, payload, patient, system):
    out = pipeline.run([("medgate/h1/w1/b1/x/vitals", orjson.dumps(payload))])
    news2 = next(r for r in out.resources if r["resourceType"] == "Observation")
    expected = {"reference": patient_reference(patient, system),
                "identifier": {"system": system, "value": patient}}
    assert news2["subject"] == expected
    pipeline.store.commit_batch(out.resources, [], vitals=out.vitals)
    for built in (vital_records.observations(out.vitals),  # Bundles to a FHIR server, bridge.handle
                  vital_records.observations(vital_records.select(pipeline.store, expected["reference"]))):
        assert built and all(r["subject"] == expected for r in built)
        for resource in built:
            Observation.model_validate(resource)


@pytest.mark.parametrize("device, patient, system", [("MON-1", "P1", "urn:test:citizen"),
                                                     ("MON-2", "P2", "urn:test:mrn")])
def test_ecg_waveform_observations_carry_the_identifier_too(pipeline, device, patient, system):
    ecg = {"d": device, "t": T0_MS, "ecg": {"period_ms": 4, "factor": 0.005, "origin": 0,
                                            "leads": [{"code": 131330, "data": [0, 12, 40, -8]}]}}
    [waveform] = [r for r in scored(pipeline, ecg).values() if r["resourceType"] == "Observation"]
    assert waveform["code"]["text"] == "ECG waveform"
    assert waveform["subject"] == {"reference": f"Patient/{patient}",
                                   "identifier": {"system": system, "value": patient}}
    Observation.model_validate(waveform)
