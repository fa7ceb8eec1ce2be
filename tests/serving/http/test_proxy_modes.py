"""``http.proxy: direct`` and ``haproxy`` (serving.http.proxy), as `medgate serve` runs them.

Each must answer as behind Ray Serve's proxy: tokens checked, uploads inferred and audited, a
C-STORE'd radiograph's SR at the PACS (the imaging pipeline calls the model handles from its worker
threads, which the throughput-optimised mode breaks unless the router keeps its own loop).  With
``direct`` the ingress replica itself holds ``http.port`` and the audit names the caller's
address; with ``haproxy``, haproxy holds it and the audit names haproxy's (docs/security.md).
"""
from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from urllib3 import encode_multipart_formdata

from peers import DCMTK_ENV, find_peer, free_port, require_peer, stop_process, wait_until
from serving.config import ConfigError, load_config
from serving.http.proxy import check_port_free, haproxy_binary, proxy_environment, start_options
from server_process import MEDGATE, ServerProcess
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset

TOKEN = "clinician-token-0123456789"
#: The caller's address: another loopback address than the server's 127.0.0.1.
CALLER = "127.0.0.2"


def test_auto_is_direct_on_a_ray_of_our_own_and_rays_proxy_on_a_cluster_or_with_several_replicas():
    assert load_config(None).http.proxy == "direct"
    assert load_config(None, ray={"address": "auto"}).http.proxy == "ray"
    assert load_config(None, http={"ingress_replicas": 2}).http.proxy == "ray"


def test_the_ray_proxy_sets_nothing_and_haproxy_sets_ray_serves_switches(tmp_path):
    ray_proxy = load_config(None, http={"proxy": "ray"}).http
    assert proxy_environment(ray_proxy) == {}
    assert start_options(ray_proxy, on_cluster=True)["proxy_location"] == "EveryNode"
    direct = load_config(None, http={"proxy": "direct", "port": 8123}).http
    env = proxy_environment(direct)
    # Ray Serve's port range ends before its maximum: http.port and no other
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("8123", "8124")
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and "RAY_SERVE_ENABLE_HA_PROXY" not in env
    assert start_options(direct, on_cluster=False)["http_options"]["port"] == 0  # Ray's proxy actor: ephemeral
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env = proxy_environment(load_config(None, http={"proxy": "haproxy", "haproxy_binary": str(fake)}).http)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(fake)
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"


def test_direct_takes_one_ingress_replica():
    with pytest.raises(ConfigError, match=r"one \(http.ingress_replicas 1\); 2 are given"):
        load_config(None, http={"proxy": "direct", "ingress_replicas": 2})


def test_direct_is_for_a_ray_of_our_own_and_a_fixed_port():
    with pytest.raises(ConfigError, match="direct is for a Ray of medgate's own"):
        load_config(None, http={"proxy": "direct"}, ray={"address": "auto"})
    with pytest.raises(ConfigError, match="needs a fixed http.port"):
        load_config(None, http={"proxy": "direct", "port": 0})
    assert load_config(None, http={"port": 0}).http.proxy == "ray"


def test_a_taken_port_is_named_before_ray_starts():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        http = load_config(None, http={"proxy": "direct", "port": holder.getsockname()[1]}).http
        with pytest.raises(RuntimeError, match=f"http.port {http.port} on 127.0.0.1 is not free"):
            check_port_free(http, wait_s=0.5)
        release = threading.Timer(0.5, holder.close)  # a killed server's replica exits a moment later
        release.start()
        check_port_free(http, wait_s=10)  # waits for it
        release.join()


def test_a_missing_haproxy_is_named_with_the_package_and_the_way_back(tmp_path):
    http = load_config(None, http={"proxy": "haproxy", "haproxy_binary": str(tmp_path / "none")}).http
    with pytest.raises(RuntimeError, match="Debian's haproxy package.*http.proxy: ray"):
        haproxy_binary(http)


@pytest.fixture(scope="module", params=["direct", "haproxy"])
def server(request, tmp_path_factory):
    proxy = request.param
    http = {"port": free_port(), "proxy": proxy}
    if proxy == "haproxy":
        require_peer("haproxy", "haproxy")
        http["haproxy_binary"] = str(find_peer("haproxy"))
    require_peer("storescp", "dcmtk")
    root = tmp_path_factory.mktemp(f"proxy-{proxy}")
    pacs_port, pacs_dir = free_port(), root / "pacs"
    pacs_dir.mkdir()
    pacs = subprocess.Popen([find_peer("storescp"), "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = {"state_dir": str(root / "var"), "dicom": {"ae_title": "MEDGATE", "port": free_port()},
              "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
              "http": http,
              "mqtt": {"url": None, "embedded_port": free_port()}, "fhir": {"base_url": None},
              "auth": {"tokens": [{"token": TOKEN, "role": "clinician", "name": "dr-a"}]}}
    process = ServerProcess(config, root)
    try:
        process.start()
        yield {"process": process, "config": config, "pacs_dir": pacs_dir, "root": root, "proxy": proxy}
    finally:
        process.stop()
        stop_process(pacs)
        print(process.log_tail())


def _png() -> bytes:
    image = (generate_cxr(np.random.default_rng(3), 224, tb=True).pixels >> 4).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def test_the_port_is_held_by_haproxy_or_by_the_ingress_replica(server):
    port = server["config"]["http"]["port"]
    holders = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    names = {Path(psutil.Process(pid).exe()).name for pid in holders}
    titles = {" ".join(psutil.Process(pid).cmdline()) for pid in holders}
    if server["proxy"] == "haproxy":
        assert names == {"haproxy"}, titles
    else:  # no Ray Serve proxy actor: the ingress replica's own server
        assert len(holders) == 1 and all("ServeReplica:medgate:ingress" in t for t in titles), titles


def _post(port: int, path: str, body: bytes, content_type: str, token: str | None, source: str):
    """POST from the local address ``source`` (another loopback address than the server's)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    connection.request("POST", path, body=body, headers=headers)
    reply = connection.getresponse()
    return reply.status, reply.headers, reply.read()  # headers: case-insensitive


def test_uploads_are_inferred_checked_and_audited(server):
    port = server["config"]["http"]["port"]
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    body, content_type = encode_multipart_formdata({"file": ("x.png", _png(), "image/png")})
    assert _post(port, "/v1/infer/tb", body, content_type, None, CALLER)[0] == 401
    status, headers, raw = _post(port, "/v1/infer/tb", body, content_type, TOKEN, CALLER)
    assert status == 200, raw
    reply = json.loads(raw)
    assert reply["model"] == "tb" and 0.0 <= reply["findings"][0]["probability"] <= 1.0
    assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff"
    rows = subprocess.run([*MEDGATE, "audit", "list", "--limit", "20"], env=server["process"].env,
                          capture_output=True, text=True, timeout=60)
    assert rows.returncode == 0, rows.stderr
    # direct: the caller's address; haproxy: haproxy's (its configuration sends no X-Forwarded-For)
    client = CALLER if server["proxy"] == "direct" else "127.0.0.1"
    assert f"dr-a (clinician) execute / success from {client}" in rows.stdout, rows.stdout


def test_a_stored_radiograph_gets_its_sr_at_the_pacs(server, tmp_path):
    path = tmp_path / "cxr.dcm"
    make_dx_dataset(generate_cxr(np.random.default_rng(5), tb=True).pixels, patient_id="HAP-1").save_as(path)
    sent = subprocess.run([find_peer("storescu"), "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1",
                           str(server["config"]["dicom"]["port"]), str(path)], env=DCMTK_ENV, capture_output=True,
                          text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: any(p.name.startswith("SR") for p in server["pacs_dir"].iterdir()), timeout_s=60), \
        sorted(p.name for p in server["pacs_dir"].iterdir())
