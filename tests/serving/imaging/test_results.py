"""The one result writer: a pipeline study and an HTTP upload get the same UIDs, results rows,
outbox items and FHIR destination."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from models.registry import ModelRegistry
from peers import dciodvfy_errors
from serving.delivery.outbox import Outbox
from serving.imaging.findings import finding_of
from serving.imaging.results import ResultWriter, sr_uid
from serving.store import Store
from training.synthetic.dicom import make_dx_dataset

FHIR_BASE = "https://ehr.hospital.example/fhir"
DESTINATIONS = {"pacs": ["sr", "seg", "sc"], "viewer": ["sc"]}


def _not_sent(destination, payload):  # the items are only queued here
    raise AssertionError(f"nothing is delivered in this test ({destination})")


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "medgate.sqlite3")
    yield store
    store.close()


@pytest.fixture
def tb():
    manifest = ModelRegistry().get("tb")
    info = {"name": "tb", "version": manifest.version, "threshold": manifest.threshold,
            "finding": {"value": manifest.finding.value, "scheme": manifest.finding.scheme,
                        "meaning": manifest.finding.meaning}}
    reply = {"probability": np.array([0.93], np.float32), "heatmap": np.eye(7, dtype=np.float32)[None]}
    ds = make_dx_dataset((np.random.default_rng(4).random((128, 128)) * 4000).astype(np.uint16))
    return ds, finding_of(ds, reply, info, manifest.serving), info, manifest.serving


def _writer(store, tmp_path, fhir_base_url=None):
    outbox = Outbox(store, {"dicom": _not_sent, "fhir": _not_sent})
    return ResultWriter(store, outbox, tmp_path / "results", destinations=DESTINATIONS,
                        fhir_base_url=fhir_base_url), outbox


def test_an_upload_with_a_fhir_server_queues_its_bundle_and_gets_a_results_row_and_dicom_items(
        store, tmp_path, tb):
    ds, finding, info, spec = tb
    writer, outbox = _writer(store, tmp_path, FHIR_BASE)
    links = writer.upload(ds, finding, info, spec)
    study = str(ds.StudyInstanceUID)
    [row] = store.results_of(study)  # recorded as a pipeline study's SR is
    assert row["kind"] == "sr" and row["summary"]["model"] == "tb" and row["summary"]["source"] == "upload"
    sr_name = f"SR-{sr_uid(ds.SOPInstanceUID, info)}.dcm"
    assert links["sr"] == f"/v1/results/{study}/{sr_name}" and row["path"].endswith(sr_name)
    assert dciodvfy_errors(row["path"]) == []
    items = {item["key"]: item for item in outbox.items()}
    assert f"dicom:{sr_uid(ds.SOPInstanceUID, info)}:pacs" in items  # viewer takes SC only
    assert not any(key.endswith(":viewer") for key in items)
    [bundle_item] = [item for item in items.values() if item["kind"] == "fhir"]
    assert bundle_item["destination"] == FHIR_BASE and bundle_item["status"] == "pending"
    bundle = json.loads(bundle_item["payload"])
    assert bundle["type"] == "transaction"
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert links["fhir"] == f"{FHIR_BASE}/DiagnosticReport/{report['id']}"
    assert store.resources("DiagnosticReport") == [] and store.resources("Observation") == []  # not local


def test_without_a_fhir_server_the_report_stays_in_the_store(store, tmp_path, tb):
    ds, finding, info, spec = tb
    writer, outbox = _writer(store, tmp_path)
    links = writer.upload(ds, finding, info, spec)
    [report] = store.resources("DiagnosticReport")
    assert links["fhir"] == f"/fhir/DiagnosticReport/{report['id']}"
    assert [item["kind"] for item in outbox.items()] == ["dicom"]


def test_a_study_and_an_upload_of_the_same_image_share_their_uids(store, tmp_path, tb):
    """Reprocessing replaces instead of adding: the SR of an image has one UID however it came."""
    ds, finding, info, spec = tb
    writer, outbox = _writer(store, tmp_path)
    study_paths = writer.image(ds, finding, info, spec)  # as the imaging pipeline writes a 2D study
    assert sorted(study_paths) == ["gsps", "sc", "sr"]  # a grayscale X-ray gets its presentation state
    writer.upload(ds, finding, info, spec)
    assert pydicom.dcmread(study_paths["sr"]).SOPInstanceUID == sr_uid(ds.SOPInstanceUID, info)
    assert pydicom.dcmread(study_paths["gsps"]).ReferencedSeriesSequence[0].ReferencedImageSequence[0] \
        .ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert len({item["key"] for item in outbox.items()}) == len(outbox.items()) == 3  # SR, SC pacs; SC viewer
    assert {r["kind"] for r in store.results_of(str(ds.StudyInstanceUID))} == {"gsps", "sc", "sr"}


def test_a_study_uid_that_is_not_a_uid_writes_nothing(store, tmp_path, tb):
    ds, finding, info, spec = tb
    ds.StudyInstanceUID = "../../etc"
    writer, outbox = _writer(store, tmp_path)
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        writer.upload(ds, finding, info, spec)
    assert outbox.items() == [] and not (tmp_path / "results").exists()


def test_delivering_needs_an_outbox(store, tmp_path):
    with pytest.raises(ValueError, match=r"an outbox is required to deliver to destinations \['pacs'\]"):
        ResultWriter(store, None, tmp_path, destinations={"pacs": ["sr"]})
