"""The Serve application in-process: HTTP API, limits, back-pressure, metrics, version swap under load."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from models.registry import ModelRegistry
from peers import free_port, wait_until
from serving.config import load_config
from training.synthetic.dicom import make_dx_dataset

MAX_UPLOAD = 2 * 1024 * 1024
TOKEN = "http-api-test-token-0123456789"
ADMIN_TOKEN = "http-api-admin-token-0123456789"
CLINICIAN_TOKEN = "http-api-clinician-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CLINICIAN = {"Authorization": f"Bearer {CLINICIAN_TOKEN}"}
PUBLIC_BASE_URL = "https://medgate.hospital.example"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import ray
    from ray import serve

    from serving.app import APP_NAME, build_app

    root = tmp_path_factory.mktemp("api")
    settings = load_config(None, state_dir=str(root), http={"port": free_port(), "max_upload_bytes": MAX_UPLOAD,
                                                               "public_base_url": PUBLIC_BASE_URL},
                           serving={"max_ongoing_requests": 2, "max_queued_requests": 2, "num_cpus": 0.5,
                                    # batches of two callers: a lone request waits up to 50 ms for a second
                                    # (at the default 0 a 1 ms model is idle again before it comes)
                                    "batch_wait_timeout_s": 0.05},
                           hl7={"destinations": [{"name": "ris", "port": free_port()}]},  # an upload's ORU^R01
                           auth={"tokens": [{"token": TOKEN, "role": "engineer", "name": "api test"},
                                             {"token": ADMIN_TOKEN, "role": "admin", "name": "api admin"},
                                             {"token": CLINICIAN_TOKEN, "role": "clinician", "name": "api clinician"}]})
    ray.init(include_dashboard=False, num_cpus=4, namespace="medgate-test", logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": settings.http.port})
    serve.run(build_app(settings, versions={}), name=APP_NAME, route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{settings.http.port}", "settings": settings, "build": build_app}
    finally:
        serve.shutdown()
        ray.shutdown()


def dicom_bytes(study_uid: str | None = None) -> bytes:
    pixels = (np.random.default_rng(1).random((256, 256)) * 4000).astype(np.uint16)
    buffer = io.BytesIO()
    make_dx_dataset(pixels, study_uid=study_uid).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(2).random((200, 180)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def infer(app, model: str, data: bytes, name: str = "x", headers: dict | None = None) -> requests.Response:
    return requests.post(f"{app['url']}/v1/infer/{model}", files={"file": (name, data)},
                         data={"patient_id": "079123456789"}, headers=headers or AUTH, timeout=60)


@pytest.fixture(scope="module")
def records(app):
    """The store and the audit log, read by this process over one connection each, kept open
    (opening and closing connections per check would let SQLite checkpoint the write-ahead log
    away from the server's connections, see the report on kernel.state_permissions)."""
    from serving.governance.audit import AuditLog
    from serving.store import Store

    store, audit = Store(app["settings"].state_dir / "medgate.sqlite3"), AuditLog(
        app["settings"].state_dir / "medgate.sqlite3")
    yield store, audit
    audit.close()
    store.close()


def audit_rows(records, who: str) -> list[dict]:
    return records[1].rows(where={"who": who})


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


def test_dicom_upload_gives_findings_and_an_sr(app, records):
    response = infer(app, "tb", dicom_bytes(), "cxr.dcm", headers=CLINICIAN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["findings"][0]["probability"] <= 1.0
    assert body["context"] == {"patient_id": "079123456789"}
    assert "not for clinical use" in body["intended_use"].lower()
    sr = requests.get(app["url"] + body["links"]["sr"], headers=AUTH, timeout=30)
    assert sr.status_code == 403  # results are patient data: clinicians and admins only
    sr = requests.get(app["url"] + body["links"]["sr"], headers=CLINICIAN, timeout=30)
    assert sr.status_code == 200 and sr.content[128:132] == b"DICM"
    report = requests.get(app["url"] + body["links"]["fhir"], headers=ADMIN, timeout=30)
    assert report.status_code == 200, report.text
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    assert DiagnosticReport.model_validate(report.json()).status == "preliminary"
    study_uid = body["links"]["sr"].split("/")[3]
    [result] = records[0].results_of(study_uid)  # recorded as a result of the study, as the gateway's are
    assert result["kind"] == "sr" and result["summary"]["model"] == "tb"
    assert result["summary"]["inputs"].keys() == {"mean_intensity", "intensity_std", "source_size_px"}  # monitored
    [row] = [r for r in audit_rows(records, "api clinician") if r["study_uid"] == study_uid and r["query"] == "model=tb"]
    assert (row["action"], row["outcome"], row["resource_type"]) == ("execute", "success", "DiagnosticReport")
    assert "SR and DiagnosticReport written" in row["detail"]
    oru = [i for i in records[0].outbox.items() if i.kind == "hl7"]  # queued for the server's outbox to send
    assert len(oru) == 1 and oru[0].destination == "ris" and "ORU^R01" in oru[0].payload


def test_an_engineer_gets_findings_but_writes_no_patient_results(app, records):
    data = dicom_bytes()
    response = infer(app, "tb", data, "cxr.dcm", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["findings"] and body["links"] == {}
    assert "clinical role (admin, clinician, nurse, radiologist)" in body["results_not_written"]
    assert "role is engineer" in body["results_not_written"]
    study_uid = pydicom_study_uid(data)
    assert records[0].results_of(study_uid) == []
    assert not (app["settings"].state_dir / "results" / study_uid).exists()
    rows = [r for r in audit_rows(records, "api test") if r["study_uid"] == study_uid and r["query"] == "model=tb"]
    assert rows and all(r["outcome"] == "success" and "results not written (role)" in r["detail"] for r in rows)


def pydicom_study_uid(data: bytes) -> str:
    from pydicom import dcmread

    return str(dcmread(io.BytesIO(data)).StudyInstanceUID)


def test_every_infer_call_is_audited(app, records):
    before = len(audit_rows(records, "api test"))
    assert infer(app, "tb", png_bytes(), "cxr.png").status_code == 200
    assert infer(app, "tb", b"hello, this is not an image").status_code == 415
    assert infer(app, "xray9000", png_bytes()).status_code == 404
    rows = audit_rows(records, "api test")[before:]
    assert [(r["query"], r["outcome"]) for r in rows] == [
        ("model=tb", "success"), ("model=tb", "error"), ("model=xray9000", "not-found")]
    assert rows[1]["detail"].startswith("HTTP 415: `file` must be")


@pytest.mark.parametrize("study_uid", ["{outside}/x", "../../../../tmp/x", "../spool/1.2.999.777"])
def test_uploads_whose_study_uid_leaves_the_results_folder_write_nothing(app, tmp_path, study_uid):
    study_uid = study_uid.format(outside=tmp_path)  # an absolute path: the test's own folder
    state_dir = app["settings"].state_dir
    target = (state_dir / "results" / study_uid).resolve()
    before = set(target.glob("SR-*.dcm"))
    response = infer(app, "tb", dicom_bytes(study_uid), "cxr.dcm", headers=ADMIN)  # a role that writes results
    assert response.status_code == 422, response.text
    assert "StudyInstanceUID must be a DICOM UID" in response.json()["error"]
    assert set(target.glob("SR-*.dcm")) == before and not list(tmp_path.rglob("*.dcm"))
    assert not (state_dir / "spool" / "1.2.999.777").exists()


def _raw_get(app, path: str, headers: dict) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", int(app["url"].rsplit(":", 1)[1]), timeout=30)
    try:
        connection.request("GET", path, headers=headers)  # sent as written: no dot-segment removal
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", [
    "/v1/results/%2e%2e/medgate.sqlite3", "/v1/results/%2E%2E/medgate.sqlite3-wal",
    "/v1/results/%2e%2e/components.json", "/v1/results/../medgate.sqlite3", "/v1/results/./medgate.sqlite3",
    "/v1/results/1.2.3/%2e%2e", "/v1/results/1.2.3/..%2f..%2fmedgate.sqlite3", "/v1/results/1.2.3/SR-1.2.4.dcm",
    "/v1/overlay/%2e%2e/SC-1.2.png", "/v1/overlay/1.2.3/SC-1.2.4.png",
])
def test_result_downloads_serve_only_recorded_results(app, path):
    state_dir = app["settings"].state_dir
    (state_dir / "components.json").write_text('{"components": {"secret": "ok"}}')
    planted = state_dir / "results" / "1.2.3"
    planted.mkdir(parents=True, exist_ok=True)
    (planted / "SR-1.2.4.dcm").write_bytes(b"\0" * 128 + b"DICM planted, never recorded")
    (planted / "SC-1.2.4.dcm").write_bytes(b"\0" * 128 + b"DICM planted, never recorded")
    status, body = _raw_get(app, path, CLINICIAN)
    assert status in (400, 404), (status, body[:200])
    assert b"SQLite format" not in body and b"secret" not in body and b"planted" not in body


def test_a_chunked_upload_over_the_limit_is_refused_while_it_streams(app):
    from chunked_upload import post_chunked

    head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n")
    sent = post_chunked(f"{app['url']}/v1/infer/tb", {**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
                        head, total_bytes=256 * 1024 * 1024)
    print(f"/v1/infer: 413 after {sent.body_bytes_sent / 2**20:.1f} MiB of a 256 MiB chunked body (limit 2 MiB)")
    assert sent.status == 413, sent.response[:300]
    assert sent.body_bytes_sent < 64 * 1024 * 1024


def test_vitals_windows_of_another_shape_are_422_without_model_internals(app):
    url = f"{app['url']}/v1/infer/vitals"
    if "vitals" not in ModelRegistry().names():
        pytest.skip(reason="no vitals model registered")
    good = requests.post(url, json={"window": np.zeros((12, 10)).tolist()}, headers=AUTH, timeout=60)
    assert good.status_code == 200, good.text
    for window in (np.zeros((5, 3)), np.zeros((12, 11)), np.zeros((10, 12)), np.zeros((12, 10, 1))):
        response = requests.post(url, json={"window": window.tolist()}, headers=AUTH, timeout=60)
        assert response.status_code == 422, response.text
        assert "onnx" not in response.text.lower() and "INVALID_ARGUMENT" not in response.text
    assert "(12, 10)" in response.text or "2D" in response.text


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
    data = png_bytes()  # the lightest upload: the model's queue, not the ingress, must be what fills
    responses = []
    for _ in range(3):  # a burst on a loaded machine may not fill the queue; a few bursts do
        with ThreadPoolExecutor(24) as pool:
            responses += pool.map(lambda _: infer(app, "tb", data), range(48))
        if any(r.status_code == 429 for r in responses):
            break
    codes = {r.status_code for r in responses}
    assert codes <= {200, 429}, codes
    assert 429 in codes and 200 in codes
    assert all(r.headers["Retry-After"] == "1" for r in responses if r.status_code == 429)


def test_concurrent_requests_are_batched(app):
    from ray import serve

    from serving.app import APP_NAME

    data = png_bytes()
    with ThreadPoolExecutor(2) as pool:  # max_ongoing_requests is 2 in this app; batch_wait_timeout_s 50 ms
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


def test_fhir_links_come_from_the_configured_base_url_not_the_host_header(app):
    response = requests.get(f"{app['url']}/fhir/Observation?patient=p1",
                            headers={**CLINICIAN, "Host": "attacker.example"}, timeout=30)
    assert response.status_code == 200, response.text
    links = [link["url"] for link in response.json()["link"]]
    assert links and all(url.startswith(f"{PUBLIC_BASE_URL}/fhir/") for url in links), links
