"""The imaging pipeline's handling of volumes and of several models at once.

* A whole-volume model call is allowed minutes, not the 2D models' timeout: on a CPU it is slow,
  not stuck, and a retry would only queue behind the first call.
* A CT with no nodule at the operating point still gets an SR and a FHIR report, "absent", so the
  radiologist and the EHR know the AI read it.
* Each model has its own worker: a chest X-ray is not held up behind a CT that takes minutes.
* A skin photo reaches the colour model as RGB (the model's metadata says 3 channels).
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicom_gateway.pixels import PixelDataError

from dicom_testdata import make_ct_series
from peers import dciodvfy_errors
from serving.imaging import pipeline as imaging_pipeline
from serving.store import Store

NODULE = {"name": "nodule", "version": "1.0.0", "threshold": 0.5,
          "finding": {"value": "786838002", "scheme": "SCT", "meaning": "Pulmonary nodule"}}


def _reply(value, timeouts=None):
    def result(timeout_s):
        if timeouts is not None:
            timeouts.append(timeout_s)
        return value
    return SimpleNamespace(result=result)


def test_volume_call_gets_the_volume_timeout(tmp_path):
    timeouts: list[float] = []

    def remote(item):
        assert item["volume"].shape == (4, 16, 16)
        return _reply({"candidates": []}, timeouts)

    store = Store(tmp_path / "db.sqlite3")
    try:
        pipeline = imaging_pipeline.ImagingPipeline(store, None, {"nodule": SimpleNamespace(remote=remote)},
                                           tmp_path / "results", timeout_s=60.0)
        series = make_ct_series(np.zeros((4, 16, 16), np.uint16))
        pipeline._process_volume(series[0].StudyInstanceUID, series, NODULE)
    finally:
        store.close()
    assert timeouts == [imaging_pipeline.VOLUME_TIMEOUT_S] and imaging_pipeline.VOLUME_TIMEOUT_S >= 600


def test_volume_without_nodule_is_reported_absent(tmp_path):
    reply = {"mask": np.zeros((4, 16, 16), np.int32), "candidates": [], "max_probability": 0.31}
    store = Store(tmp_path / "db.sqlite3")
    try:
        pipeline = imaging_pipeline.ImagingPipeline(
            store, None, {"nodule": SimpleNamespace(remote=lambda item: _reply(reply))}, tmp_path / "results")
        series = make_ct_series(np.zeros((4, 16, 16), np.uint16))
        study = series[0].StudyInstanceUID
        paths = pipeline._process_volume(study, series, NODULE)
        assert [p.name.split("-")[0] for p in paths] == ["SR"]  # no mask: no SEG, no overlay
        assert dciodvfy_errors(paths[0]) == []
        sr = pydicom.dcmread(paths[0])
        evaluations = [item for group in _groups(sr) for item in group.ContentSequence
                       if item.ValueType == "CODE"
                       and item.ConceptNameCodeSequence[0].CodeValue == NODULE["finding"]["value"]]
        assert [e.ConceptCodeSequence[0].CodeValue for e in evaluations] == [codes.SCT.Absent.value]
        referenced = {ref.ReferencedSOPInstanceUID for group in _groups(sr) for item in group.ContentSequence
                      if item.ValueType == "IMAGE" for ref in item.ReferencedSOPSequence}
        assert referenced == {ds.SOPInstanceUID for ds in series}  # the finding is about the whole series
        report, observation = _fhir(store, study)
        assert observation["valueCodeableConcept"]["coding"][0]["code"] == codes.SCT.Absent.value
        assert observation["component"][0]["valueQuantity"]["value"] == 0.31
        assert "absent" in report["conclusion"] and "conclusionCode" not in report
    finally:
        store.close()


def test_an_xray_does_not_wait_behind_a_volume(tmp_path, monkeypatch):
    release = threading.Event()
    done: list[tuple[str, float]] = []
    store = Store(tmp_path / "db.sqlite3")
    monkeypatch.setattr(imaging_pipeline, "mark_processed", lambda *args: None)
    pipeline = imaging_pipeline.ImagingPipeline(store, None, {"nodule": None, "tb": None}, tmp_path / "results")
    pipeline._info = {"nodule": NODULE, "tb": {**NODULE, "name": "tb"}}

    def process(study, model):
        if model == "nodule":
            release.wait(30)
        done.append((study, time.monotonic()))
        return []

    monkeypatch.setattr(pipeline, "process", process)
    monkeypatch.setattr(imaging_pipeline, "resume_dispatches", lambda *args: [])
    try:
        pipeline.start()
        pipeline.submit("1.2.3.ct", "nodule")
        pipeline.submit("1.2.3.cxr", "tb")
        deadline = time.monotonic() + 10
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [study for study, _ in done] == ["1.2.3.cxr"]  # the CT is still in its model call
        release.set()
        pipeline.stop()
        assert [study for study, _ in done] == ["1.2.3.cxr", "1.2.3.ct"]
    finally:
        release.set()
        store.close()


def test_dispatch_to_an_undeployed_model_fails_the_study(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        study = "1.2.3.4"
        with store.database.transaction() as db:
            db.execute("INSERT INTO studies(study_uid, status, route, received_at, updated_at)"
                       " VALUES (?, 'complete', 'derm', 0, 0)", (study,))
        pipeline = imaging_pipeline.ImagingPipeline(store, None, {"tb": None}, tmp_path / "results")
        pipeline.submit(study, "derm")
        assert store.study(study)["status"] == "failed"
        assert "no deployment for model 'derm'" in store.study(study)["detail"]
    finally:
        store.close()


def _groups(sr):
    container = sr.ContentSequence
    measurements = next(item for item in container if item.ValueType == "CONTAINER"
                        and item.ConceptNameCodeSequence[0].CodeValue == "126010")  # Imaging Measurements
    return [item for item in measurements.ContentSequence if item.ValueType == "CONTAINER"]


def _fhir(store, study):
    [report] = store.resources("DiagnosticReport")
    observations = store.resources("Observation")
    assert len(observations) == 1 and report["result"] == [{"reference": f"Observation/{observations[0]['id']}"}]
    return report, observations[0]


class _LocalDeployment:
    """A Ray-free stand-in for a deployment handle over the real :class:`ModelServer` (ONNX on CPU)."""

    def __init__(self, model: str) -> None:
        from serving.inference.deployments import ModelServer

        self.server = ModelServer(model, {"engine": "onnxruntime", "device": "cpu"})
        self.server.reconfigure({})
        self.info = SimpleNamespace(remote=lambda: _reply(self.server.info()))

    def remote(self, item):
        return _reply(self.server.run_batch([item])[0])


def test_a_dicom_skin_photo_reaches_derm_as_rgb(tmp_path):
    """The derm replica failed every DICOM photo: it was given the luminance, (1, S, S), where its
    ONNX input is (3, S, S) ("index: 1 Got: 1 Expected: 3")."""
    from dicom_testdata import make_photo_dataset

    rng = np.random.default_rng(3)
    rgb = np.clip(rng.normal(160, 30, (120, 120, 3)), 0, 255).astype(np.uint8)
    ds = pydicom.dcmread(_saved(make_photo_dataset(rgb, photometric="YBR_FULL_422"), tmp_path / "photo.dcm"))
    store = Store(tmp_path / "db.sqlite3")
    try:
        pipeline = imaging_pipeline.ImagingPipeline(store, None, {"derm": _LocalDeployment("derm")}, tmp_path / "results")
        info = pipeline.model_info("derm")
        assert info["input"]["num_channels"] == 3
        paths = pipeline._process_images(ds.StudyInstanceUID, [ds], info)
        assert sorted(p.name.split("-")[0] for p in paths) == ["SC", "SR"]
        for path in paths:
            assert dciodvfy_errors(path) == []
        mono = pydicom.dcmread(_saved(make_photo_dataset(rgb, photometric="MONOCHROME2"), tmp_path / "mono.dcm"))
        with pytest.raises(PixelDataError, match="colour .*MONOCHROME2 is given"):
            pipeline._process_images(mono.StudyInstanceUID, [mono], info)
    finally:
        store.close()


def _saved(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_blank_image_sent_to_tb_is_flagged_outside_in_every_result(tmp_path):
    """The replica's out-of-distribution verdict reaches the finding, the results row, the SR and
    the FHIR Observation through the pipeline (not only through the writers)."""
    from training.synthetic.dicom import make_dx_dataset

    ds = pydicom.dcmread(_saved(make_dx_dataset(np.zeros((256, 256), np.uint16)), tmp_path / "blank.dcm"))
    store = Store(tmp_path / "db.sqlite3")
    try:
        pipeline = imaging_pipeline.ImagingPipeline(store, None, {"tb": _LocalDeployment("tb")}, tmp_path / "results")
        paths = pipeline._process_images(ds.StudyInstanceUID, [ds], pipeline.model_info("tb"))
        [row] = [r for r in store.results_of(ds.StudyInstanceUID) if r["kind"] == "sr"]
        [finding] = row["summary"]["findings"]
        assert finding["ood"]["outside"] is True and finding["positive"] is False
        [sr_path] = [p for p in paths if p.name.startswith("SR-")]
        texts = [str(element.value) for element in pydicom.dcmread(sr_path).iterall()
                 if element.keyword == "TextValue"]
        assert any("outside the model's training distribution" in text for text in texts)
        [observation] = store.resources("Observation")
        assert "valueCodeableConcept" not in observation and "valueQuantity" not in observation
        assert observation["interpretation"][0]["coding"][0]["code"] == "IND"
    finally:
        store.close()
