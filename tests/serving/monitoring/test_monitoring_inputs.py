"""The imaging pipeline records each result's input features in its results row (``summary["inputs"]``,
:func:`models.reference.image_features` and :func:`~models.reference.volume_features`), the figures
input drift is measured on; a generated chest X-ray's features fall inside tb 1.1.0's reference."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pydicom

from dicom_testdata import make_ct_series
from models.reference import ModelReference
from models.registry import ModelRegistry
from serving.imaging import pipeline as imaging_pipeline
from serving.monitoring.drift import psi_of_values
from serving.store import Store
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset


def _reply(value):
    return SimpleNamespace(result=lambda timeout_s: value)


def test_a_chest_xray_result_records_its_input_features(tmp_path):
    from serving.inference.deployments import ModelServer

    server = ModelServer("tb", {"engine": "onnxruntime", "device": "cpu"})
    server.reconfigure({})
    handle = SimpleNamespace(remote=lambda item: _reply(server.run_batch([item])[0]),
                             info=SimpleNamespace(remote=lambda: _reply(server.info())))
    pixels = generate_cxr(np.random.default_rng(5), 256, tb=False).pixels
    path = tmp_path / "cxr.dcm"
    make_dx_dataset(pixels).save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    store = Store(tmp_path / "db.sqlite3")
    try:
        pipeline = imaging_pipeline.ImagingPipeline(store, None, {"tb": handle}, tmp_path / "results")
        info = pipeline.model_info("tb")
        pipeline._process_images(ds.StudyInstanceUID, [ds], info)
        rows = [r for r in store.results_of(ds.StudyInstanceUID) if r.kind == "sr"]
    finally:
        store.close()
    inputs = rows[0].summary["inputs"]
    assert set(inputs) == {"mean_intensity", "intensity_std", "source_size_px"} and inputs["source_size_px"] == 256
    reference = ModelReference.read(ModelRegistry().get("tb", info["version"]).folder)
    for name in ("mean_intensity", "intensity_std"):  # the generator the model was trained on
        lo, hi = reference.inputs[name].edges[1], reference.inputs[name].edges[-2]
        assert lo - 0.05 < inputs[name] < hi + 0.05, (name, inputs[name])
    assert psi_of_values(reference.inputs["source_size_px"], [inputs["source_size_px"]]) < 0.01


def test_a_ct_result_records_the_windowed_volume_features(tmp_path):
    info = {"name": "nodule", "version": "1.0.0", "threshold": 0.5, "input": {"window_hu": [-1000.0, 400.0]},
            "finding": {"value": "786838002", "scheme": "SCT", "meaning": "Pulmonary nodule"}}
    handle = SimpleNamespace(remote=lambda item: _reply({"candidates": [], "max_probability": 0.2}))
    series = make_ct_series(np.zeros((4, 16, 16), np.uint16))  # stored 0 with the series' rescale: air-ish HU
    store = Store(tmp_path / "db.sqlite3")
    try:
        pipeline = imaging_pipeline.ImagingPipeline(store, None, {"nodule": handle}, tmp_path / "results")
        pipeline._process_volume(series[0].StudyInstanceUID, series, info)
        row = next(r for r in store.results_of(series[0].StudyInstanceUID) if r.kind == "sr")
    finally:
        store.close()
    assert row.summary["inputs"]["slices"] == 4
    assert 0.0 <= row.summary["inputs"]["mean_intensity"] <= 1.0 and row.summary["inputs"]["intensity_std"] == 0.0
