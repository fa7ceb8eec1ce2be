"""DICOMweb through the Serve application (the Ray Serve proxy and the ingress replica): one
``dicomweb-client`` URL stores (STOW-RS), searches (QIDO-RS) and retrieves (WADO-RS)."""
from __future__ import annotations

import io

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from test_http_api import AUTH, CLINICIAN, PUBLIC_BASE_URL, app, dicom_bytes, records  # noqa: F401 - fixtures


def _client(app, headers: dict) -> DICOMwebClient:
    session = requests.Session()
    session.headers.update(headers)
    return DICOMwebClient(url=app["url"] + "/dicomweb", session=session)


def test_store_search_and_retrieve_through_the_ingress(app, records):
    data = dicom_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    client = _client(app, CLINICIAN)
    client.store_instances([ds])
    [study] = client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID})
    assert study["00081190"]["Value"] == [f"{PUBLIC_BASE_URL}/dicomweb/studies/{ds.StudyInstanceUID}"]
    [instance] = client.retrieve_study(ds.StudyInstanceUID)
    assert instance.SOPInstanceUID == ds.SOPInstanceUID and instance.PixelData == ds.PixelData
    [metadata] = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert "7FE00010" not in metadata and metadata["00100020"]["Value"] == [ds.PatientID]
    unknown = requests.get(f"{app['url']}/dicomweb/studies?NoSuchAttribute=1", headers=CLINICIAN, timeout=30)
    assert unknown.status_code == 400 and "NoSuchAttribute" in unknown.json()["error"]
    engineer = requests.get(f"{app['url']}/dicomweb/studies", headers=AUTH, timeout=30)  # AUTH: an engineer
    assert engineer.status_code == 403
    rows = records[1].rows(where={"study_uid": ds.StudyInstanceUID, "who": "api clinician"})
    assert {(r["action"], r["outcome"]) for r in rows} >= {("search", "success"), ("read", "success")}
