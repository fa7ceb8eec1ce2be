"""A fifth model served from its folder alone: no file under ``serving/`` names it.

The test writes a registry in a temporary folder holding one model, ``fracture`` (a bone-fracture
classifier of hand radiographs: a tiny ONNX network, its ``metadata.json`` and its ``serving.json``),
points ``models_root`` at it, routes DX/CR of the hand to it in ``dicom.routes``, and runs
``medgate serve`` with a DCMTK ``storescp`` PACS and a FHIR server.  The model is then served

* over HTTP: ``POST /v1/infer/fracture`` with a DICOM image by a clinician answers its finding, and
  its results are written by the one result writer as a study's are: the SR recorded and served at
  ``/v1/results``, queued to the PACS, and the DiagnosticReport sent as a Bundle to ``fhir.base_url``
  through the outbox (not kept in the local FHIR store);
* through DICOM routing: a hand radiograph sent by ``storescu`` is routed to it, processed by the
  imaging pipeline, and its SR and overlay reach the PACS (dciodvfy clean) and its report the FHIR
  server.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess

import numpy as np
import onnx
import pydicom
import pytest
import requests
from onnx import TensorProto, helper

from models.registry import ROOT_ENV
from peers import FhirRecorder, dciodvfy_errors, free_port, require_peer, start_storescp, stop_process, storescu, \
    wait_until
from server_process import ServerProcess
from training.synthetic.dicom import make_dx_dataset

MODEL = "fracture"
SIZE_PX = 32
CLINICIAN = "fifth-model-clinician-token-0123456789"
#: SNOMED CT 125605004 |Fracture of bone (disorder)|.
FRACTURE = {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"}
SERVING = {"input": "image", "preprocess": "models.transforms:to_model_input", "reply": "finding",
           "results": ["sr", "sc", "fhir"], "uploads": ["dicom", "png", "jpeg"], "runner": "stack"}


def write_fracture_model(registry) -> None:
    """``<registry>/fracture``: ``serving.json`` and version 1.0.0 (``model.onnx``: the sigmoid of
    the image mean, scaled; ``metadata.json`` with the MONAI bundle keys medgate reads)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE_PX, SIZE_PX])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "shift"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"])]
    constants = [helper.make_tensor("scale", TensorProto.FLOAT, [], [8.0]),
                 helper.make_tensor("shift", TensorProto.FLOAT, [], [-2.0])]
    graph = helper.make_graph(nodes, MODEL, [x], [y], initializer=constants)
    network = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    network.ir_version = 8
    onnx.checker.check_model(network)
    folder = registry / MODEL / "1.0.0"
    folder.mkdir(parents=True)
    data = network.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    metadata = {
        "version": "1.0.0", "changelog": {"1.0.0": "a test model"}, "name": MODEL, "file": "model.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "task": "Bone fracture on a hand radiograph", "description": "sigmoid(8 * mean - 2): a test network",
        "intended_use": "NOT FOR CLINICAL USE - a test model with no training.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "DX", "num_channels": 1,
                                 "spatial_shape": [SIZE_PX, SIZE_PX], "shape": [None, 1, SIZE_PX, SIZE_PX],
                                 "dtype": "float32", "value_range": [0, 1], "size_px": SIZE_PX}},
            "outputs": {"probability": {"type": "probabilities", "shape": [None, 1], "dtype": "float32"}}},
        "finding": FRACTURE, "threshold": 0.5, "operating_point": {"threshold": 0.5},
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (registry / MODEL / "serving.json").write_text(json.dumps(SERVING, indent=2))


def hand_radiograph(**kwargs) -> pydicom.Dataset:
    pixels = (np.random.default_rng(11).random((96, 80)) * 4000).astype(np.uint16)
    ds = make_dx_dataset(pixels, **kwargs)
    ds.BodyPartExamined = "HAND"  # PS3.16 CID 4031 defined term; the generator writes chest anatomy only
    return ds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for name, package in (("storescp", "dcmtk"), ("dciodvfy", "dicom3tools")):
        require_peer(name, package)
    root = tmp_path_factory.mktemp("fifth")
    write_fracture_model(root / "registry")
    pacs_port, fhir = free_port(), FhirRecorder(free_port())
    pacs = start_storescp(pacs_port, root / "pacs")
    fhir.start()
    config = {
        "state_dir": str(root / "var"),
        "models_root": str(root / "registry"),
        "dicom": {"ae_title": "MEDGATE", "port": free_port(),
                  "routes": [{"models": [MODEL], "modality": ["DX", "CR"], "body_part": ["HAND"]}]},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "http": {"port": free_port()},
        "mqtt": {"url": None, "embedded_port": free_port(), "topic_prefix": "medgate"},
        "fhir": {"base_url": f"http://127.0.0.1:{fhir.port}/fhir"},
        "auth": {"tokens": [{"token": CLINICIAN, "role": "clinician", "name": "fifth model test"}]},
    }
    process = ServerProcess(config, root)
    try:
        process.start()
        yield {"process": process, "config": config, "root": root, "pacs_dir": root / "pacs", "fhir": fhir}
    finally:
        process.stop()
        stop_process(pacs)
        fhir.stop()
        print(process.log_tail())


def _at_pacs(pacs_dir, study_uid: str, prefix: str):
    for path in sorted(pacs_dir.iterdir()):
        if path.name.startswith(prefix) and not path.name.endswith(".tmp"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.StudyInstanceUID == study_uid:
                return path
    return None


def _report_of(fhir: FhirRecorder, study_uid: str):
    """The DiagnosticReport the FHIR server received about ``study_uid``, or None."""
    return next((r for r in fhir.resources("DiagnosticReport") if study_uid in json.dumps(r)), None)


def test_the_fifth_model_is_deployed_from_its_folder(server):
    status, models = server["process"].http_get("/v1/models")
    assert status == 200 and [m["name"] for m in models] == [MODEL], models
    assert models[0]["finding"] == FRACTURE


def test_an_upload_is_answered_and_its_results_written_as_a_studys(server):
    url = f"http://127.0.0.1:{server['config']['http']['port']}"
    auth = {"Authorization": f"Bearer {CLINICIAN}"}
    ds = hand_radiograph()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    response = requests.post(f"{url}/v1/infer/{MODEL}", files={"file": ("hand.dcm", buffer.getvalue())},
                             headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    [finding] = body["findings"]
    assert finding["code"] == FRACTURE and 0.0 <= finding["probability"] <= 1.0 and finding["threshold"] == 0.5
    study = str(ds.StudyInstanceUID)
    sr = requests.get(url + body["links"]["sr"], headers=auth, timeout=30)  # recorded in the results table
    assert sr.status_code == 200 and sr.content[128:132] == b"DICM"
    fhir_base = server["config"]["fhir"]["base_url"]
    assert body["links"]["fhir"].startswith(f"{fhir_base}/DiagnosticReport/")
    report_id = body["links"]["fhir"].rsplit("/", 1)[1]
    # the report went to the FHIR server through the outbox, not into the local store
    assert wait_until(lambda: any(r["id"] == report_id for r in server["fhir"].resources("DiagnosticReport")),
                      timeout_s=60)
    assert requests.get(f"{url}/fhir/DiagnosticReport/{report_id}", headers=auth, timeout=30).status_code == 404
    pacs_sr = wait_until(lambda: _at_pacs(server["pacs_dir"], study, "SR"), timeout_s=60)  # outbox -> PACS
    assert dciodvfy_errors(pacs_sr) == []

    png = requests.post(f"{url}/v1/infer/{MODEL}", files={"file": ("hand.png", _png())}, headers=auth, timeout=60)
    assert png.status_code == 200 and png.json()["links"] == {}  # no DICOM source: findings only


def test_a_routed_study_gets_sr_and_overlay_at_the_pacs_and_a_report_at_the_fhir_server(server, tmp_path):
    ds = hand_radiograph()
    path = tmp_path / "hand.dcm"
    ds.save_as(path, enforce_file_format=True)
    sent = storescu(server["config"]["dicom"]["port"], path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    study = str(ds.StudyInstanceUID)
    sr = wait_until(lambda: _at_pacs(server["pacs_dir"], study, "SR"), timeout_s=90)
    sc = wait_until(lambda: _at_pacs(server["pacs_dir"], study, "SC"), timeout_s=30)
    assert dciodvfy_errors(sr) == [] and dciodvfy_errors(sc) == []
    dump = subprocess.run([require_peer("dsrdump", "dcmtk"), str(sr)], capture_output=True, text=True)
    assert "Fracture of bone" in dump.stdout and f"medgate-{MODEL}" in dump.stdout
    results = server["root"] / "var" / "results" / study
    assert sorted(p.name.split("-")[0] for p in results.iterdir()) == ["SC", "SR"]
    assert wait_until(lambda: _report_of(server["fhir"], study), timeout_s=60)


def test_the_configuration_key_is_the_registrys_environment_variable():
    from serving.config import ENV_PREFIX, Settings

    assert "models_root" in Settings.model_fields and ENV_PREFIX + "MODELS_ROOT" == ROOT_ENV


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(5).random((64, 48)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
