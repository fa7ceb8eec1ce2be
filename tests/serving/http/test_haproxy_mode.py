"""``http.proxy: haproxy``: Ray Serve's HAProxy mode in front of the ingress, as `medgate serve` runs it.

The same server must answer the same way as behind Ray Serve's proxy: tokens checked, uploads
inferred and audited, a C-STORE'd radiograph's SR at the PACS (the imaging pipeline calls the
model handles from its worker threads, which the throughput-optimised mode breaks unless the
router keeps its own loop), and haproxy, not a Python process, holds ``http.port``.
"""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from peers import DCMTK_ENV, find_peer, free_port, require_peer, stop_process, wait_until
from serving.config import load_config
from serving.http.proxy import haproxy_binary, proxy_environment
from server_process import MEDGATE, ServerProcess
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset


def test_the_ray_proxy_sets_nothing_and_haproxy_sets_ray_serves_switches(tmp_path):
    assert proxy_environment(load_config(None).http) == {}
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env = proxy_environment(load_config(None, http={"proxy": "haproxy", "haproxy_binary": str(fake)}).http)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(fake)
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"


def test_a_missing_haproxy_is_named_with_the_package_and_the_way_back(tmp_path):
    http = load_config(None, http={"proxy": "haproxy", "haproxy_binary": str(tmp_path / "none")}).http
    with pytest.raises(RuntimeError, match="Debian's haproxy package.*http.proxy: ray"):
        haproxy_binary(http)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_peer("haproxy", "haproxy")
    require_peer("storescp", "dcmtk")
    root = tmp_path_factory.mktemp("haproxy-mode")
    pacs_port, pacs_dir = free_port(), root / "pacs"
    pacs_dir.mkdir()
    pacs = subprocess.Popen([find_peer("storescp"), "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = {"state_dir": str(root / "var"), "dicom": {"ae_title": "MEDGATE", "port": free_port()},
              "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
              "http": {"port": free_port(), "proxy": "haproxy", "haproxy_binary": str(find_peer("haproxy"))},
              "mqtt": {"url": None, "embedded_port": free_port()}, "fhir": {"base_url": None},
              "auth": {"tokens": [{"token": "clinician-token-0123456789", "role": "clinician", "name": "dr-a"}]}}
    process = ServerProcess(config, root)
    try:
        process.start()
        yield {"process": process, "config": config, "pacs_dir": pacs_dir, "root": root}
    finally:
        process.stop()
        stop_process(pacs)
        print(process.log_tail())


def _png() -> bytes:
    image = (generate_cxr(np.random.default_rng(3), 224, tb=True).pixels >> 4).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def test_haproxy_holds_the_http_port(server):
    port = server["config"]["http"]["port"]
    holders = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert holders and all(Path(psutil.Process(pid).exe()).name == "haproxy" for pid in holders), holders


def test_uploads_are_inferred_checked_and_audited_through_haproxy(server):
    base = f"http://127.0.0.1:{server['config']['http']['port']}"
    assert requests.get(base + "/healthz", timeout=10).status_code == 200
    files = {"file": ("x.png", _png(), "image/png")}
    assert requests.post(base + "/v1/infer/tb", files=files, timeout=30).status_code == 401
    reply = requests.post(base + "/v1/infer/tb", files=files, timeout=30,
                          headers={"Authorization": "Bearer clinician-token-0123456789"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "tb" and 0.0 <= body["findings"][0]["probability"] <= 1.0
    assert reply.headers["Cache-Control"] == "no-store" and reply.headers["X-Content-Type-Options"] == "nosniff"
    rows = subprocess.run([*MEDGATE, "audit", "list", "--limit", "20"], env=server["process"].env,
                          capture_output=True, text=True, timeout=60)
    # haproxy sends no X-Forwarded-For: the row names the caller and its role, and haproxy's address
    # as the client (docs/security.md says so for this mode)
    assert rows.returncode == 0 and "dr-a (clinician) execute / success" in rows.stdout, rows.stdout + rows.stderr


def test_a_stored_radiograph_gets_its_sr_at_the_pacs(server, tmp_path):
    path = tmp_path / "cxr.dcm"
    make_dx_dataset(generate_cxr(np.random.default_rng(5), tb=True).pixels, patient_id="HAP-1").save_as(path)
    sent = subprocess.run([find_peer("storescu"), "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1",
                           str(server["config"]["dicom"]["port"]), str(path)], env=DCMTK_ENV, capture_output=True,
                          text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: any(p.name.startswith("SR") for p in server["pacs_dir"].iterdir()), timeout_s=60), \
        sorted(p.name for p in server["pacs_dir"].iterdir())
