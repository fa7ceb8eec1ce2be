"""The Serve application in-process: HTTP API, limits, back-pressure, metrics, version swap under load."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from dicom_gateway.testdata import make_dx_dataset
from models.registry import ModelRegistry
from peers import free_port, wait_until
from serving.config import load_config

MAX_UPLOAD = 2 * 1024 * 1024
TOKEN = "http-api-test-token-0123456789"
ADMIN_TOKEN = "http-api-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import ray
    from ray import serve

    from serving.app import APP_NAME, build_app

    root = tmp_path_factory.mktemp("api")
    settings = load_config(None, state_dir=str(root), http={"port": free_port(), "max_upload_bytes": MAX_UPLOAD},
                           serving={"max_ongoing_requests": 2, "max_queued_requests": 2, "num_cpus": 0.5},
                           auth={"tokens": [{"token": TOKEN, "role": "engineer", "name": "api test"},
                                             {"token": ADMIN_TOKEN, "role": "admin", "name": "api admin"}]})
    ray.init(include_dashboard=False, num_cpus=4, namespace="medgate-test", logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": settings.http.port})
    serve.run(build_app(settings, versions={}), name=APP_NAME, route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{settings.http.port}", "settings": settings, "build": build_app}
    finally:
        serve.shutdown()
        ray.shutdown()


def dicom_bytes() -> bytes:
    pixels = (np.random.default_rng(1).random((256, 256)) * 4000).astype(np.uint16)
    buffer = io.BytesIO()
    make_dx_dataset(pixels).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(2).random((200, 180)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def infer(app, model: str, data: bytes, name: str = "x") -> requests.Response:
    return requests.post(f"{app['url']}/v1/infer/{model}", files={"file": (name, data)},
                         data={"patient_id": "079123456789"}, headers=AUTH, timeout=60)


def test_tokens_are_required_except_for_health_checks(app):
    assert requests.get(f"{app['url']}/healthz", timeout=30).status_code == 200
    for path in ("/v1/models", "/metrics", "/fhir/metadata", "/v1/system"):
        response = requests.get(app["url"] + path, timeout=30)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{app['url']}/fhir/Observation", headers=AUTH, timeout=30).status_code == 403
    system = requests.get(f"{app['url']}/v1/system", headers=AUTH, timeout=30).json()
    assert {m["name"] for m in system["models"]} >= {"tb"} and "outbox" in system


def test_models_listing(app):
    models = requests.get(f"{app['url']}/v1/models", headers=AUTH, timeout=30).json()
    tb = next(m for m in models if m["name"] == "tb")
    assert tb["device"] == "cpu" and tb["engine"].startswith("onnxruntime")
    assert tb["version"] == ModelRegistry().get("tb").version


def test_dicom_upload_gives_findings_and_an_sr(app):
    response = infer(app, "tb", dicom_bytes(), "cxr.dcm")
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["findings"][0]["probability"] <= 1.0
    assert body["context"] == {"patient_id": "079123456789"}
    assert "not for clinical use" in body["intended_use"].lower()
    sr = requests.get(app["url"] + body["links"]["sr"], headers=AUTH, timeout=30)
    assert sr.status_code == 403  # results are patient data: clinicians and admins only
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    sr = requests.get(app["url"] + body["links"]["sr"], headers=admin, timeout=30)
    assert sr.status_code == 200 and sr.content[128:132] == b"DICM"
    report = requests.get(app["url"] + body["links"]["fhir"], headers=admin, timeout=30)
    assert report.status_code == 200, report.text
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    assert DiagnosticReport.model_validate(report.json()).status == "preliminary"


def test_derm_photo_upload_gives_seven_calibrated_classes(app):
    from PIL import Image

    if "derm" not in ModelRegistry().names():
        pytest.skip(reason="no derm model registered")
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(4).random((150, 160, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    response = infer(app, "derm", buffer.getvalue(), "lesion.jpg")
    assert response.status_code == 200, response.text
    findings = response.json()["findings"]
    assert len(findings) == 7 and abs(sum(f["probability"] for f in findings) - 1.0) < 1e-3


def test_png_upload(app):
    response = infer(app, "tb", png_bytes(), "cxr.png")
    assert response.status_code == 200, response.text
    assert response.json()["links"] == {}


@pytest.mark.parametrize("data, status", [
    (b"\xff\xd8\xff\xe0" + b"\x00" * 200, 422),          # a JPEG header and nothing decodable
    (b"hello, this is not an image", 415),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_UPLOAD + 10), 413),
])
def test_bad_uploads_get_4xx_with_a_reason(app, data, status):
    response = infer(app, "tb", data)
    assert response.status_code == status
    assert response.json()["error"]


def test_unknown_model_and_wrong_content_type(app):
    assert requests.post(f"{app['url']}/v1/infer/xray9000", files={"file": ("x", b"x")}, headers=AUTH,
                         timeout=30).status_code == 404
    response = requests.post(f"{app['url']}/v1/infer/tb", data=b"raw",
                             headers={"content-type": "text/plain", **AUTH}, timeout=30)
    assert response.status_code == 415


def test_back_pressure_answers_429_with_retry_after(app):
    data = dicom_bytes()
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: infer(app, "tb", data), range(48)))
    codes = {r.status_code for r in responses}
    assert codes <= {200, 429}, codes
    assert 429 in codes and 200 in codes
    assert all(r.headers["Retry-After"] == "1" for r in responses if r.status_code == 429)


def test_concurrent_requests_are_batched(app):
    from ray import serve

    from serving.app import APP_NAME

    data = png_bytes()
    with ThreadPoolExecutor(2) as pool:  # max_ongoing_requests is 2 in this app
        codes = [r.status_code for r in pool.map(lambda _: infer(app, "tb", data), range(20))]
    assert set(codes) == {200}
    stats = serve.get_deployment_handle("tb", app_name=APP_NAME).stats.remote().result()
    assert max(stats["batch_sizes"]) > 1


def test_metrics(app):
    text = requests.get(f"{app['url']}/metrics", headers=AUTH, timeout=30).text
    assert 'medgate_http_requests_total{model="tb",status="200"}' in text
    assert "medgate_model_batch_size_bucket" in text
    assert "medgate_model_queue_depth" in text


def test_version_swap_under_load_loses_no_request(app):
    from ray import serve

    from serving.app import APP_NAME

    versions = ModelRegistry().versions("tb")
    if len(versions) < 2:
        pytest.skip(reason=f"one registered tb version ({versions}); swapping needs two")
    data, codes, seen, stop, failed = png_bytes(), [], set(), threading.Event(), []

    def load():
        while not stop.is_set():
            response = infer(app, "tb", data)
            codes.append(response.status_code)
            if response.status_code == 200:
                seen.add(response.json()["version"])
            else:
                failed.append((response.status_code, response.text[:500]))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: versions[-1] in seen, timeout_s=60)  # the current version answers first
        serve.run(app["build"](app["settings"], versions={"tb": {"version": versions[0]}}), name=APP_NAME,
                  route_prefix="/")
        wait_until(lambda: versions[0] in seen, timeout_s=60)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(60)
    assert codes and set(codes) == {200}, failed
    assert {versions[0], versions[-1]} <= seen
