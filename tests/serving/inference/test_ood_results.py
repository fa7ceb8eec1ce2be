"""From pixels to result objects: a CT slice sent to tb as a chest X-ray reaches the served model,
which flags it outside its training distribution; the SR (both writers, valid for dciodvfy and read
by DCMTK dsrdump) and the FHIR DiagnosticReport say so and make no positive call, while a generated
chest radiograph keeps its present/absent call."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from pydicom.uid import generate_uid

from dicom_gateway.pixels import model_input
from dicom_gateway.sr import build_measurement_report, reference_measurement_report
from models.finding import OUTSIDE_TRAINING_DISTRIBUTION, OutOfDistribution
from peers import dciodvfy_errors
from serving.fhir.report import PatientIdentity, build_report_resources
from serving.http.worklist import OUTSIDE, with_call
from serving.imaging.findings import finding_of
from serving.inference.deployments import ModelServer
from training.synthetic.ct import generate_ct
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset

PRESENT_ABSENT = {"52101004", "272519000"}  # SCT Present, Absent (PS3.16 CID 241)


@pytest.fixture(scope="module")
def tb():
    server = ModelServer("tb", {"version": "1.1.0", "device": "cpu", "engine": "onnxruntime"})
    server.reconfigure({})
    return server


def _finding(tb: ModelServer, ds):
    """What the imaging pipeline makes of ``ds``: the model's reply read into a finding, with the
    reply's out-of-distribution verdict."""
    info = tb.info()
    reply = tb.run_batch([model_input(ds, info["input_size_px"], 1)])[0]
    finding = finding_of(ds, reply, info, tb.active.manifest.serving)
    return replace(finding, ood=OutOfDistribution.from_dict(reply["ood"])), reply


def _ct_as_xray():
    volume = generate_ct(np.random.default_rng(11)).volume_hu
    stored = np.clip(volume[volume.shape[0] // 2] + 1024, 0, 4095).astype(np.uint16)
    return make_dx_dataset(stored, accession="ACC-OOD", issuer="CCCD")


def _codes(item) -> list[str]:
    out = [c.CodeValue for c in item.get("ConceptCodeSequence", [])]
    for child in item.get("ContentSequence", []):
        out += _codes(child)
    return out


def _texts(sr) -> list[str]:
    def walk(item):
        yield from ([item.TextValue] if "TextValue" in item else [])
        for child in item.get("ContentSequence", []):
            yield from walk(child)
    return [t for item in sr.ContentSequence for t in walk(item)]


def test_a_ct_slice_sent_as_a_chest_xray_is_reported_outside_the_training_distribution(tb, tmp_path):
    ds = _ct_as_xray()
    finding, reply = _finding(tb, ds)
    assert reply["ood"]["outside"] and finding.outside and not finding.positive
    uids = {"series_instance_uid": generate_uid(), "sop_instance_uid": generate_uid()}
    for build in (build_measurement_report, reference_measurement_report):
        sr = build([finding], ds, algorithm_name="medgate-tb", algorithm_version="1.1.0", **uids)
        groups = sr.ContentSequence[-2].ContentSequence
        assert len(groups) == 1 and not PRESENT_ABSENT & set(_codes(groups[0]))  # no call is made
        assert any(OUTSIDE_TRAINING_DISTRIBUTION in t for t in _texts(sr))
        path = tmp_path / f"{build.__name__}.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
    if shutil.which("dsrdump"):
        dump = subprocess.run(["dsrdump", "+Pl", str(path)], capture_output=True, text=True, check=True).stdout
        assert OUTSIDE_TRAINING_DISTRIBUTION in dump and "Present" not in dump and "Absent" not in dump

    report, observation, _device = build_report_resources([finding], ds, PatientIdentity(),
                                                           sr_sop_instance_uid=uids["sop_instance_uid"])
    DiagnosticReport.model_validate(report)
    Observation.model_validate(observation)
    assert "valueCodeableConcept" not in observation
    assert observation["dataAbsentReason"]["coding"][0]["code"] == "as-text"
    assert observation["interpretation"][0]["coding"][0]["code"] == "IND"
    assert any(OUTSIDE_TRAINING_DISTRIBUTION in n["text"] for n in observation["note"])
    assert f"no call on 1 input {OUTSIDE_TRAINING_DISTRIBUTION}" in report["conclusion"]
    assert "present" not in report["conclusion"] and "conclusionCode" not in report


def test_a_generated_chest_radiograph_keeps_its_call(tb):
    pixels = generate_cxr(np.random.default_rng(100), 256, tb=False).pixels
    ds = make_dx_dataset(pixels, accession="ACC-IN")
    finding, reply = _finding(tb, ds)
    assert not reply["ood"]["outside"] and finding.ood is not None and not finding.outside
    sr = build_measurement_report([finding], ds, algorithm_name="medgate-tb", algorithm_version="1.1.0",
                                  series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    assert PRESENT_ABSENT & set(_codes(sr.ContentSequence[-2]))
    assert not any(OUTSIDE_TRAINING_DISTRIBUTION in t for t in _texts(sr))
    report, observation, _ = build_report_resources([finding], ds, PatientIdentity())
    assert observation["interpretation"][0]["coding"][0]["code"] in ("POS", "NEG")
    assert OUTSIDE_TRAINING_DISTRIBUTION not in report["conclusion"]


def test_the_worklist_shows_no_call_for_an_input_outside_the_training_distribution():
    outside = {"probability": 0.96, "positive": False, "ood": {"score": 30.8, "threshold": 7.34, "outside": True}}
    assert with_call(outside)["call"] == OUTSIDE
    assert with_call({"probability": 0.9, "positive": True, "ood": None})["call"] == "positive"
    assert with_call({"probability": 0.1, "positive": False})["call"] == "negative"
