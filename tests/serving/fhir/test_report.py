"""Imaging DiagnosticReport + Observations: valid R4 (fhir.resources R4B), stable ids, patient identity."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from dicom_testdata import chest_ct, make_ct_series
from iomt.identity import Association, patient_reference
from kernel.fhir_bundle import transaction_bundle
from models import coding_scheme
from models.finding import Concept, Finding, SourceImage
from serving.config import load_config
from serving.fhir.report import PatientIdentity, build_report_resources, patient_identity
from training.synthetic.dicom import make_dx_dataset

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
    report, *observations, device = build_report_resources(findings_for(ds), ds, identity,
                                                           sr_sop_instance_uid="1.2.3.4", issued=WHEN)
    DiagnosticReport.model_validate(report)
    Device.model_validate(device)
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
    bundle = transaction_bundle([report, *observations, device], "http://fhir.example/r4")
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
    assert report["subject"]["reference"] == patient_reference(ds.PatientID, CCCD)


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


VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
MELANOMA = Concept("372244006", "SCT", "Malignant melanoma")


def photo_of(ds):
    """``ds`` relabelled as a skin photograph (VL Photographic Image, Modality XC)."""
    ds.SOPClassUID, ds.Modality = VL_PHOTOGRAPHIC, "XC"
    return ds


def test_dermatology_reports_are_filed_as_dermatology_not_radiology(identity):
    ds = photo_of(make_dx_dataset(np.zeros((32, 32), np.uint16)))
    image = SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, 32, 32)
    finding = Finding(model="derm", model_version="1.0.0", code=MELANOMA, probability=0.9, threshold=0.77,
                      source=image)
    report = build_report_resources([finding], ds, identity, issued=WHEN)[0]
    DiagnosticReport.model_validate(report)
    assert report["code"]["coding"] == [{"system": "http://loinc.org", "code": "34759-1",
                                         "display": "Dermatology Note"}]
    codings = [c for category in report["category"] for c in category["coding"]]
    assert {(c["system"], c["code"]) for c in codings} == {
        ("http://terminology.hl7.org/CodeSystem/v2-0074", "OTH"), ("http://snomed.info/sct", "394582007")}
    assert all(c["code"] != "RAD" for c in codings)
    # a chest X-ray stays radiology, and the kind can be given explicitly
    dx = make_dx_dataset(np.zeros((32, 32), np.uint16))
    radiology = build_report_resources(findings_for(dx), dx, identity)[0]
    assert radiology["category"][0]["coding"][0]["code"] == "RAD"
    assert radiology["code"]["coding"][0]["code"] == "18748-4"
    explicit = build_report_resources(findings_for(dx), dx, identity, kind="dermatology")[0]
    assert explicit["code"]["coding"][0]["code"] == "34759-1"
    with pytest.raises(ValueError, match="kind must be one of"):
        build_report_resources(findings_for(dx), dx, identity, kind="cardiology")


def test_the_algorithm_is_the_observations_device_never_the_reports_performer(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16))
    resources = build_report_resources(findings_for(ds), ds, identity, issued=WHEN)
    report = resources[0]
    assert "performer" not in report, "R4 performer: Practitioner, PractitionerRole, Organization, CareTeam"
    (device,) = [r for r in resources if r["resourceType"] == "Device"]
    Device.model_validate(device)
    assert device["version"] == [{"value": "1.0.0"}]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert observations and all(o["device"]["reference"] == f"Device/{device['id']}" for o in observations)
    again = build_report_resources(findings_for(ds), ds, identity)
    assert [r["id"] for r in again if r["resourceType"] == "Device"] == [device["id"]]


def test_private_codes_use_the_projects_own_code_system(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16))
    image = SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, 32, 32)
    finding = Finding(model="derm", model_version="1.0.0", code=Concept("df", "99MEDGATE", "Dermatofibroma"),
                      probability=0.9, threshold=0.5, source=image)
    report, observation, _ = build_report_resources([finding], ds, identity)
    (coding,) = observation["code"]["coding"]
    assert coding["system"] == coding_scheme.SYSTEM_URI == f"urn:oid:{coding_scheme.UID}"
    assert report["conclusionCode"][0]["coding"][0]["system"] == coding_scheme.SYSTEM_URI
    assert "urn:medgate:codes" not in str([report, observation])
    unknown = Finding(model="derm", model_version="1.0.0", code=Concept("x", "99OTHER", "Something"),
                      probability=0.9, threshold=0.5, source=image)
    with pytest.raises(ValueError, match="99OTHER"):
        build_report_resources([unknown], ds, identity)


def test_subjects_are_literal_patient_references_with_the_identifier_as_the_vitals_use(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16), issuer="BHYT")
    resources = build_report_resources(findings_for(ds), ds, identity)
    expected = {"type": "Patient", "reference": patient_reference(ds.PatientID, BHYT),
                "identifier": {"system": BHYT, "value": ds.PatientID, "assigner": {"display": "BHYT"}}}
    for resource in resources:
        if resource["resourceType"] != "Device":
            assert resource["subject"] == expected, resource["resourceType"]
    # the same Patient the IoMT bridge's ADT admission writes for this identifier
    admitted = Association(device="MON-1", patient_id=ds.PatientID, patient_system=BHYT, spo2_scale=1, since=WHEN)
    assert resources[0]["subject"]["reference"] == admitted.patient_ref


def test_the_report_concludes_each_distinct_finding_once(identity):
    volume, _ = chest_ct()
    series = make_ct_series(volume)
    images = [SourceImage(s.StudyInstanceUID, s.SeriesInstanceUID, s.SOPInstanceUID, s.SOPClassUID,
                          int(s.Rows), int(s.Columns)) for s in series]
    nodule = Concept("786838002", "SCT", "Pulmonary nodule")
    findings = [Finding(model="nodule", model_version="1.0.0", code=nodule, probability=p, threshold=0.985,
                        source=images[0], other_sources=tuple(images[1:])) for p in np.linspace(0.985, 0.9997, 16)]
    report, *rest = build_report_resources(findings, series[0], identity, issued=WHEN)
    DiagnosticReport.model_validate(report)
    assert report["conclusion"].count("Pulmonary nodule") == 1
    assert "16 findings" in report["conclusion"] and "p=0.98-1.00" in report["conclusion"]
    assert report["conclusionCode"] == [{"coding": [{"system": "http://snomed.info/sct", "code": "786838002",
                                                     "display": "Pulmonary nodule"}]}]
    assert len([r for r in rest if r["resourceType"] == "Observation"]) == 16, "every finding keeps its Observation"


def test_a_code_with_positive_and_negative_findings_is_concluded_present_once(identity):
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16))
    report = build_report_resources(findings_for(ds, (0.8, 0.2)), ds, identity)[0]
    assert report["conclusion"].startswith("Tuberculosis: present (p=0.80).")
    assert len(report["conclusionCode"]) == 1
    absent = build_report_resources(findings_for(ds, (0.3, 0.2)), ds, identity)[0]
    assert absent["conclusion"].startswith("Tuberculosis: absent (2 findings, highest p=0.30).")
    assert "conclusionCode" not in absent
