"""/v1/infer through the Serve application: every call audited whatever its end, image bombs and
nested JSON refused before decoding, no result filed under another patient's study."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
from pydicom import dcmread
from test_http_api import AUTH, CLINICIAN, app, audit_rows, dicom_bytes, infer, records  # noqa: F401 - fixtures
from test_uploads import bilevel_png

from models.registry import ModelRegistry


def test_a_form_starlette_refuses_is_audited(app, records):
    before = len(audit_rows(records, "api test"))
    fields = {f"f{i}": "x" for i in range(1001)}  # over Starlette's max_fields (1000): its HTTPException 400
    response = requests.post(f"{app['url']}/v1/infer/tb", files={"file": ("x.png", b"x")}, data=fields,
                             headers=AUTH, timeout=60)
    assert response.status_code == 400, response.text
    rows = audit_rows(records, "api test")[before:]
    assert [(r["query"], r["outcome"]) for r in rows] == [("model=tb", "error")]
    assert rows[0]["detail"].startswith("HTTP 400")


def test_deeply_nested_vitals_json_is_422_and_audited(app, records):
    if "vitals" not in ModelRegistry().names():
        pytest.skip(reason="no vitals model registered")
    before = len(audit_rows(records, "api test"))
    body = b'{"window": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = requests.post(f"{app['url']}/v1/infer/vitals", data=body, headers=AUTH, timeout=60)
    assert response.status_code == 422 and "nested" in response.json()["error"], response.text
    [row] = audit_rows(records, "api test")[before:]
    assert row["outcome"] == "error" and row["detail"].startswith("HTTP 422")


@pytest.mark.parametrize("side", [20_000, 9_500])
def test_png_bombs_are_422_before_decoding(app, side):
    start = time.perf_counter()
    response = infer(app, "tb", bilevel_png(side, side), "bomb.png")
    assert response.status_code == 422, response.text
    assert time.perf_counter() - start < 5
    assert str(side) in response.json()["error"] or "too large" in response.json()["error"]


def _received(records, tmp_path, data: bytes) -> None:
    """``data`` recorded in the store as a received instance (as the intake records one)."""
    ds = dcmread(io.BytesIO(data))
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(data)
    records[0].add_instance({"sop_instance_uid": ds.SOPInstanceUID, "study_uid": ds.StudyInstanceUID,
                             "series_uid": ds.SeriesInstanceUID, "sop_class_uid": ds.SOPClassUID,
                             "modality": "DX", "path": str(path), "calling_ae": "MODALITY"})


def _with(data: bytes, **attributes: str) -> bytes:
    ds = dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("other", [{"PatientID": "OTHER-PATIENT-9"}, {"IssuerOfPatientID": "ANOTHER-HOSPITAL"}])
def test_no_result_is_filed_under_another_patients_study(app, records, tmp_path, other):
    study_uid = f"1.2.826.0.1.3680043.10.{np.random.default_rng().integers(1 << 40)}"
    received = _with(dicom_bytes(study_uid), PatientID="079123456789")
    _received(records, tmp_path, received)
    before = len(audit_rows(records, "api clinician"))
    upload = _with(received, SOPInstanceUID=f"{study_uid}.9", **other)
    response = infer(app, "tb", upload, "other.dcm", headers=CLINICIAN)
    assert response.status_code == 409, response.text
    assert "another patient" in response.json()["error"]
    assert records[0].results_of(study_uid) == []
    [row] = audit_rows(records, "api clinician")[before:]
    assert row["outcome"] == "error" and row["study_uid"] == study_uid and row["detail"].startswith("HTTP 409")
    same = infer(app, "tb", _with(received, SOPInstanceUID=f"{study_uid}.8"), "same.dcm", headers=CLINICIAN)
    assert same.status_code == 200 and same.json()["links"]["sr"].startswith(f"/v1/results/{study_uid}/")
