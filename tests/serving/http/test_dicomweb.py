"""DICOMweb QIDO-RS and WADO-RS (PS3.18 10.6, 10.4) beside STOW-RS, with the real ``dicomweb-client``.

The web routes run without Ray (:class:`web_app.WebApp`) with the STOW-RS route added, as the ingress
mounts it: one client URL stores, searches and retrieves.  A result SR is written by the result
writer the pipeline uses, then the study is marked ``done`` as the pipeline marks it.
"""
from __future__ import annotations

import io
import time

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from models.registry import ModelRegistry
from peers import wait_until
from serving.governance.audit import AuditLog
from serving.http import dicomweb_index, stow
from serving.http.dicomweb_index import IndexWorker
from serving.imaging.findings import finding_of
from serving.imaging.results import ResultWriter
from serving.store import Store
from training.synthetic.dicom import make_dx_dataset
from web_app import WebApp, auth

STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"
PATIENT_ID, ACCESSION, STUDY_DATE, PIXEL_DATA = "00100020", "00080050", "00080020", "7FE00010"


def _value(dataset: dict, tag: str):
    return (dataset.get(tag, {}).get("Value") or [None])[0]


def _dx(patient_id: str, name: str, study_uid: str | None, accession: str, study_date: str, seed: int):
    pixels = (np.random.default_rng(seed).random((64, 64)) * 4000).astype(np.uint16)
    ds = make_dx_dataset(pixels, patient_id=patient_id, patient_name=name, study_uid=study_uid,
                         accession=accession)
    ds.StudyDate, ds.StudyDescription = study_date, "Chest PA"
    return ds


def _part10(ds) -> pydicom.Dataset:
    """``ds`` as read back from a Part 10 file (what a client sends)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.fixture
def server(tmp_path):
    web = WebApp(tmp_path)
    app = web.server.config.app
    app.include_router(stow.router)  # as the ingress mounts it, beside install_routes
    stow.configure(app, tmp_path, {"ae_title": "MEDGATE", "group_by": "study", "min_free_bytes": 0,
                                   "routes": [{"models": ["tb"], "modality": ["DX", "CR"]}]})
    with web:
        yield web


def _client(web, role: str = "clinician") -> DICOMwebClient:
    session = requests.Session()
    session.headers.update(auth(role))
    return DICOMwebClient(url=web.url + "/dicomweb", session=session)


@pytest.fixture
def stored(server):
    """Three studies stored by STOW-RS: two DX images of one patient, one DX of another, and
    pydicom's CT_small (stored in the transfer syntax it came in)."""
    first = _dx("P-001", "Nguyen^An", None, "ACC-1", "20240105", 1)
    second = _dx("P-001", "Nguyen^An", str(first.StudyInstanceUID), "ACC-1", "20240105", 2)
    second.SeriesInstanceUID, second.InstanceNumber = first.SeriesInstanceUID, 2
    other = _dx("P-002", "Tran^Binh", None, "ACC-2", "20240320", 3)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    datasets = [_part10(d) for d in (first, second, other)] + [ct]
    _client(server).store_instances(datasets)
    return server, first, second, other, ct


def _get(web, path: str, role: str | None = "clinician", **headers: str) -> requests.Response:
    return requests.get(web.url + path, headers={**(auth(role) if role else {}), **headers}, timeout=30)


def test_studies_are_found_with_the_standard_matching(stored):
    web, first, _, other, ct = stored
    client = _client(web)
    studies = client.search_for_studies()
    assert {_value(s, STUDY_UID) for s in studies} == {first.StudyInstanceUID, other.StudyInstanceUID,
                                                      ct.StudyInstanceUID}
    mine = next(s for s in studies if _value(s, STUDY_UID) == first.StudyInstanceUID)
    assert mine["00201208"]["Value"] == [2] and mine["00201206"]["Value"] == [1]  # instances, series
    assert mine["00080061"]["Value"] == ["DX"] and _value(mine, "00080056") == "ONLINE"
    assert _value(mine, "00081190") == f"{web.url}/dicomweb/studies/{first.StudyInstanceUID}"
    assert mine["00100010"]["Value"] == [{"Alphabetic": "Nguyen^An"}] and _value(mine, ACCESSION) == "ACC-1"
    assert "00081030" not in mine  # Study Description is not a required return attribute ...
    assert "00200010" in mine and "00100030" in mine  # Study ID, Birth Date: required, empty when absent

    def found(**filters) -> set:
        return {_value(s, STUDY_UID) for s in client.search_for_studies(search_filters=filters)}

    assert found(PatientID="P-001") == {first.StudyInstanceUID}
    assert found(PatientName="nguyen*") == {first.StudyInstanceUID}  # PN: wildcard, any case
    assert found(PatientID="P-00?") == {first.StudyInstanceUID, other.StudyInstanceUID}
    assert found(PatientID="p-001") == set()  # LO: case-sensitive
    assert len(found(AccessionNumber="*")) == 3  # "*" alone is universal: CT_small has no accession
    assert found(StudyDate="20240101-20240131") == {first.StudyInstanceUID}
    assert found(StudyDate="20240301-") == {other.StudyInstanceUID}
    assert found(StudyDate="-20051231") == {ct.StudyInstanceUID}
    assert found(ModalitiesInStudy="CT") == {ct.StudyInstanceUID}
    assert found(AccessionNumber="ACC-2") == {other.StudyInstanceUID}
    assert found(StudyInstanceUID=f"{first.StudyInstanceUID},{ct.StudyInstanceUID}") == {
        first.StudyInstanceUID, ct.StudyInstanceUID}
    assert found(**{"00100020": "P-002"}) == {other.StudyInstanceUID}  # a tag as the key
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []  # 204
    assert _get(web, "/dicomweb/studies?PatientID=nobody").status_code == 204

    [described] = client.search_for_studies(search_filters={"PatientID": "P-002"}, fields=["StudyDescription"])
    assert _value(described, "00081030") == "Chest PA"
    [everything] = client.search_for_studies(search_filters={"PatientID": "P-002"}, fields=["all"])
    assert _value(everything, "00081030") == "Chest PA" and "00280010" not in everything  # Rows: instance-level
    assert client.search_for_studies(fuzzymatching=False, search_filters={"PatientID": "P-002"})


def test_limit_and_offset_page_through_the_studies(stored):
    web, *_ = stored
    client = _client(web)
    every = [_value(s, STUDY_UID) for s in client.search_for_studies()]
    pages = [_value(s, STUDY_UID) for offset in range(3) for s in client.search_for_studies(limit=1, offset=offset)]
    assert pages == every and len(every) == 3
    assert client.search_for_studies(limit=2, offset=3) == []
    response = _get(web, "/dicomweb/studies?limit=2")
    assert len(response.json()) == 2 and "additional results" in response.headers["Warning"]
    assert "fuzzymatching" in _get(web, "/dicomweb/studies?fuzzymatching=true").headers["Warning"]


def test_series_and_instances_are_found_at_every_level(stored):
    web, first, second, other, ct = stored
    client = _client(web)
    [series] = client.search_for_series(first.StudyInstanceUID)
    assert _value(series, SERIES_UID) == first.SeriesInstanceUID and _value(series, MODALITY) == "DX"
    assert series["00201209"]["Value"] == [2] and _value(series, STUDY_UID) == first.StudyInstanceUID
    assert _value(series, "00081190").endswith(f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}")
    assert {_value(s, SERIES_UID) for s in client.search_for_series(search_filters={"Modality": "CT"})} == {
        ct.SeriesInstanceUID}
    unscoped = client.search_for_series(search_filters={"Modality": "DX", "PatientID": "P-002"})
    assert [_value(s, PATIENT_ID) for s in unscoped] == ["P-002"]  # study attributes at the top level

    instances = client.search_for_instances(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert {_value(i, SOP_UID) for i in instances} == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert all(_value(i, "00280010") == 64 and _value(i, "00080016") for i in instances)
    [numbered] = client.search_for_instances(first.StudyInstanceUID, first.SeriesInstanceUID,
                                             search_filters={"InstanceNumber": 2})
    assert _value(numbered, SOP_UID) == second.SOPInstanceUID
    [by_uid] = client.search_for_instances(search_filters={"SOPInstanceUID": ct.SOPInstanceUID})
    assert _value(by_uid, PATIENT_ID) == ct.PatientID and _value(by_uid, MODALITY) == "CT"
    assert len(client.search_for_instances(first.StudyInstanceUID)) == 2


def test_studies_series_and_instances_are_retrieved_as_stored(stored):
    web, first, second, _, ct = stored
    client = _client(web)
    study = client.retrieve_study(first.StudyInstanceUID)
    assert {d.SOPInstanceUID for d in study} == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert {d.PixelData for d in study} == {first.PixelData, second.PixelData}
    instance = client.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID,
                                        media_types=(("application/dicom", "*"),))
    assert instance.file_meta.TransferSyntaxUID == ct.file_meta.TransferSyntaxUID
    assert instance.PixelData == ct.PixelData and instance.PatientID == ct.PatientID
    series = client.retrieve_series(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert len(series) == 2

    metadata = client.retrieve_series_metadata(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert {_value(m, SOP_UID) for m in metadata} == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert all(PIXEL_DATA not in m and _value(m, "00280010") == 64 for m in metadata)  # no bulk data inline
    response = _get(web, f"/dicomweb/studies/{ct.StudyInstanceUID}/metadata")
    assert response.headers["content-type"].startswith("application/dicom+json")
    [ct_metadata] = response.json()
    assert _value(ct_metadata, PATIENT_ID) == ct.PatientID and PIXEL_DATA not in ct_metadata

    refused = _get(web, f"/dicomweb/studies/{ct.StudyInstanceUID}",
                   accept='multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50')
    assert refused.status_code == 406 and "not transcoded" in refused.json()["error"]
    assert _get(web, f"/dicomweb/studies/{ct.StudyInstanceUID}", accept="application/json").status_code == 406
    assert _get(web, "/dicomweb/studies/1.2.3.4.5").status_code == 404


def test_a_result_sr_of_a_processed_study_is_found_and_retrieved(stored):
    web, first, *_ = stored
    manifest = ModelRegistry().get("tb")
    info = {"name": "tb", "version": manifest.version, "threshold": manifest.threshold,
            "finding": {"value": manifest.finding.value, "scheme": manifest.finding.scheme,
                        "meaning": manifest.finding.meaning}}
    reply = {"probability": np.array([0.93], np.float32), "heatmap": np.eye(7, dtype=np.float32)[None]}
    source = _part10(first)
    finding = finding_of(source, reply, info, manifest.serving)
    client = _client(web)
    assert client.search_for_studies()  # the study is indexed before it has results
    store = Store(web.state_dir / "medgate.sqlite3")  # the server process's connection
    try:
        paths = ResultWriter(store, None, web.state_dir / "results").image(source, finding, info, manifest.serving)
        time.sleep(0.01)
        store.set_study_status(str(first.StudyInstanceUID), "done", detail="1 SR")  # as the pipeline does
    finally:
        store.close()
    sr = pydicom.dcmread(paths["sr"])
    [found] = client.search_for_series(first.StudyInstanceUID, search_filters={"Modality": "SR"})
    assert _value(found, SERIES_UID) == sr.SeriesInstanceUID
    [mine] = client.search_for_studies(search_filters={"PatientID": "P-001"})
    assert "SR" in mine["00080061"]["Value"] and mine["00201208"]["Value"] == [2 + len(paths)]
    retrieved = client.retrieve_instance(first.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert retrieved.SOPInstanceUID == sr.SOPInstanceUID and retrieved.ContentSequence == sr.ContentSequence
    metadata = client.retrieve_instance_metadata(first.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert "0040A730" in metadata  # the SR content tree, from the file


@pytest.mark.parametrize("query, named", [
    ("PatientWeight=70", "PatientWeight"), ("NoSuchAttribute=1", "NoSuchAttribute"),
    ("00991234x=1", "00991234x"), ("includefield=Bogus", "Bogus"), ("StudyDate=2024-01-05", "StudyDate"),
    ("StudyInstanceUID=1.2.03", "StudyInstanceUID"), ("limit=-1", "limit"), ("Modality=CT", "Modality"),
    ("fuzzymatching=maybe", "fuzzymatching"), ("PatientID=a&PatientID=b", "PatientID"),
])
def test_a_bad_query_is_400_naming_what_was_given(stored, query, named):
    web, *_ = stored
    response = _get(web, f"/dicomweb/studies?{query}")
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]


def test_uids_in_paths_are_checked_against_the_grammar(stored):
    web, first, *_ = stored
    for path in ("/dicomweb/studies/1.2.03/series", f"/dicomweb/studies/{first.StudyInstanceUID}/series/x.y",
                 "/dicomweb/studies/..%2F..%2Fetc/metadata", "/dicomweb/studies/1.2.3/series/1.2/instances/1.02"):
        response = _get(web, path)
        assert response.status_code in (400, 404), (path, response.status_code)
        if response.status_code == 400:
            assert "must be a DICOM UID" in response.json()["error"]
    assert _get(web, "/dicomweb/studies/1.2.03").status_code == 400


def test_tokens_roles_and_the_audit_rows(stored):
    web, first, *_ = stored
    study = f"/dicomweb/studies/{first.StudyInstanceUID}"
    assert _get(web, "/dicomweb/studies", role=None).status_code == 401
    for path in ("/dicomweb/studies", study, f"{study}/metadata"):
        denied = _get(web, path, role="engineer")  # may store (STOW-RS), not read
        assert denied.status_code == 403 and "engineer" in denied.json()["error"]
    assert _get(web, "/dicomweb/studies", role="admin").status_code == 200
    assert _get(web, f"{study}/series").status_code == 200
    assert _get(web, study).status_code == 200
    audit = AuditLog(web.state_dir / "medgate.sqlite3")
    try:
        rows = audit.rows()
    finally:
        audit.close()
    denied = [r for r in rows if r["outcome"] == "denied"]
    anonymous = [r for r in denied if r["role"] is None]  # the guard audits a 401 on patient data too
    denied = [r for r in denied if r["role"] is not None]
    assert len(anonymous) == 1 and len(denied) == 3 and {r["role"] for r in denied} == {"engineer"}
    assert {r["study_uid"] for r in denied} == {None, first.StudyInstanceUID}
    reads = [r for r in rows if r["outcome"] == "success" and r["study_uid"] == first.StudyInstanceUID]
    assert {r["action"] for r in reads} == {"search", "read"} and all(r["who"] == "clinician user" for r in reads)
    [listing] = [r for r in rows if r["role"] == "admin"]
    assert listing["action"] == "search" and first.StudyInstanceUID in listing["detail"]
    assert audit_verifies(web)


def audit_verifies(web) -> bool:
    audit = AuditLog(web.state_dir / "medgate.sqlite3")
    try:
        return audit.verify().ok
    finally:
        audit.close()


def test_an_unreadable_file_is_left_out_and_the_rest_still_found(stored):
    web, first, second, *_ = stored
    spool = web.state_dir / "spool" / str(first.StudyInstanceUID) / f"{second.SOPInstanceUID}.dcm"
    spool.unlink()  # gone before it was ever indexed
    client = _client(web)
    instances = client.search_for_instances(first.StudyInstanceUID)
    assert {_value(i, SOP_UID) for i in instances} == {first.SOPInstanceUID}
    assert [d.SOPInstanceUID for d in client.retrieve_study(first.StudyInstanceUID)] == [first.SOPInstanceUID]


def test_the_server_process_indexes_arrivals_before_any_query(server):
    store = Store(server.state_dir / "medgate.sqlite3")
    worker = IndexWorker(store, interval_s=0.05)
    worker.start()
    try:
        ds = _dx("P-009", "Le^Chi", None, "ACC-9", "20240607", 9)
        _client(server).store_instances([_part10(ds)])
        wait_until(lambda: store.gateway.query_objects([]), timeout_s=10)  # no DICOMweb request made
        [indexed] = store.gateway.query_objects([])
        assert (indexed.sop_instance_uid, indexed.patient_id, indexed.source) == (ds.SOPInstanceUID, "P-009", "received")
    finally:
        worker.stop()
        store.close()


def test_a_study_deleted_by_retention_is_no_longer_found(stored):
    web, first, *_ = stored
    client = _client(web)
    assert client.search_for_instances(first.StudyInstanceUID)  # indexed
    store = Store(web.state_dir / "medgate.sqlite3")
    try:
        assert store.gateway.delete_study(str(first.StudyInstanceUID), ("receiving", "complete", "unrouted"))
    finally:
        store.close()
    assert client.search_for_studies(search_filters={"PatientID": "P-001"}) == []
    assert _get(web, f"/dicomweb/studies/{first.StudyInstanceUID}").status_code == 404


def test_a_backlog_is_indexed_a_batch_a_request_and_says_so(stored, monkeypatch):
    web, *_ = stored
    monkeypatch.setattr(dicomweb_index, "REFRESH_BATCH", 3)  # 4 instances wait (a database of before the index)
    first = _get(web, "/dicomweb/instances")
    assert len(first.json()) == 3 and "still being indexed" in first.headers["Warning"]
    second = _get(web, "/dicomweb/instances")
    assert len(second.json()) == 4 and "Warning" not in second.headers
