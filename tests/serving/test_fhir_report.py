"""Imaging DiagnosticReport + Observations: valid R4 (fhir.resources R4B), stable ids, patient identity."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from dicom_gateway.testdata import make_dx_dataset
from models.finding import Concept, Finding, SourceImage
from serving.config import load_config
from serving.fhir_client import transaction_bundle
from serving.fhir_report import PatientIdentity, build_report_resources, patient_identity

TB = Concept("56717001", "SCT", "Tuberculosis")
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
BHYT = "http://fhir.hl7.org.vn/core/sid/bhyt"
WHEN = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)


def findings_for(ds, probabilities=(0.8, 0.2)):
    image = SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                        int(ds.Rows), int(ds.Columns))
    return [Finding(model="tb", model_version="1.0.0", code=TB, probability=p, threshold=0.5, source=image,
                    point=(3.0, 4.0) if i == 0 else None) for i, p in enumerate(probabilities)]


@pytest.fixture
def identity():
    return patient_identity(load_config(None))


def test_report_and_observations_are_valid_r4(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16), issuer="BHYT")
    report, *observations = build_report_resources(findings_for(ds), ds, identity,
                                                   sr_sop_instance_uid="1.2.3.4", issued=WHEN)
    DiagnosticReport.model_validate(report)
    for obs in observations:
        Observation.model_validate(obs)
    assert report["status"] == "preliminary"
    assert report["imagingStudy"][0]["identifier"] == {"system": "urn:dicom:uid",
                                                       "value": f"urn:oid:{ds.StudyInstanceUID}"}
    assert [r["reference"] for r in report["result"]] == [f"Observation/{o['id']}" for o in observations]
    assert "not for clinical use" in report["conclusion"]
    assert report["subject"]["identifier"] == {"system": BHYT, "value": ds.PatientID,
                                               "assigner": {"display": "BHYT"}}
    assert observations[0]["valueCodeableConcept"]["coding"][0]["code"] == "52101004"  # present
    assert observations[1]["component"][0]["valueQuantity"]["value"] == 0.2
    bundle = transaction_bundle([report, *observations], "http://fhir.example/r4")
    Bundle.model_validate(bundle)
    assert {e["request"]["method"] for e in bundle["entry"]} == {"PUT"}


def test_ids_are_deterministic(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16))
    first = build_report_resources(findings_for(ds), ds, identity)
    again = build_report_resources(findings_for(ds), ds, identity)
    assert [r["id"] for r in first] == [r["id"] for r in again]
    assert transaction_bundle(first, "http://x")["id"] == transaction_bundle(again, "http://x")["id"]


def test_patient_id_without_issuer_uses_the_unqualified_system(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16))
    report = build_report_resources(findings_for(ds), ds, identity)[0]
    assert report["subject"]["identifier"] == {"system": CCCD, "value": ds.PatientID}


def test_no_patient_id_means_no_subject_never_an_invented_patient(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16))
    ds.PatientID = ""
    resources = build_report_resources(findings_for(ds), ds, identity)
    assert all("subject" not in r for r in resources)
    DiagnosticReport.model_validate(resources[0])


def test_unmapped_issuer_without_default_keeps_the_issuer_as_assigner():
    identity = PatientIdentity({"CCCD": CCCD}, None)
    assert identity.identifier("MRN-1", "HOSPITAL-A") == {"value": "MRN-1", "assigner": {"display": "HOSPITAL-A"}}
    with pytest.raises(ValueError, match="patient_id must be a non-blank string"):
        identity.identifier(" ")


def test_findings_of_two_model_versions_are_refused(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16))
    a, b = findings_for(ds)
    from dataclasses import replace

    with pytest.raises(ValueError, match="one model version"):
        build_report_resources([a, replace(b, model_version="2.0.0")], ds, identity)
