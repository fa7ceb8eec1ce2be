"""Two medgate nodes on one real Ray cluster: `ray start --head`, then `medgate serve --role models`
deploys the application there, and `medgate serve --role gateway` (another process, joining with
``ray.address``) takes the model handles and turns a C-STORE into a result in the shared PostgreSQL.

Both nodes run on this machine (a second machine would join with ``ray start --address`` first,
docs/deployment.md); the registry holds ``tb`` alone so that the cluster fits two cores.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dicom_gateway.scu import send_files
from kernel.database import open_database
from peers import free_port, wait_until
from server_process import MEDGATE, ServerProcess
from serving.components import read_components
from serving.store import Store
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
#: Ray as every node of the test cluster sees it: token authentication with one token (as nodes on
#: several machines share it), no usage report, and a SIGTERM that stops a node at once instead of
#: draining for 30 s.
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "ray-cluster-roles-test-token-0001",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def _processes_under(folder: str) -> list[int]:
    """Live processes whose command line names ``folder`` (the test cluster's Ray processes)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if folder.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def ray_head():
    """A Ray head of its own (`ray start --head --block`) in a temporary folder; yields its address.
    Stopped with SIGTERM, then whatever of it is left (by pid, found by its folder) is killed."""
    temp = tempfile.mkdtemp(prefix="mg-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    env = {**os.environ, **RAY_ENV}
    log = open(Path(temp) / "head.log", "wb")
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--temp-dir", temp, "--num-cpus", "4", "--include-dashboard", "false", "--block"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"Ray runtime started" in (Path(temp) / "head.log").read_bytes() or head.poll() is not None,
                   timeout_s=60, interval_s=0.2)
        assert head.poll() is None, (Path(temp) / "head.log").read_text(errors="replace")[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
        for pid in _processes_under(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _node_config(root: Path, name: str, role: str, ray_address: str, store_url: str, http_port: int,
                 registry: Path) -> dict:
    return {"state_dir": str(root / name), "models_root": str(registry),
            "node": {"id": name, "role": role, "lease_s": 10},
            "ray": {"address": ray_address}, "store": {"url": store_url},
            "http": {"port": http_port},
            "dicom": {"port": free_port(), "completion": {"quiet_period_s": 0.5},
                      "routes": [{"models": ["tb"], "modality": ["DX", "CR"], "body_part": ["CHEST"]}]},
            "mqtt": {"url": None, "embedded_port": free_port()},
            "auth": {"tokens": [{"token": "cluster-roles-admin-token-0001", "role": "admin", "name": "test"}]}}


def test_a_models_node_deploys_and_a_gateway_node_infers_through_the_cluster(ray_head, postgres_url, tmp_path):
    started = time.monotonic()
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "tb").symlink_to(ROOT / "models" / "tb")
    http_port = free_port()
    env = {**os.environ, **RAY_ENV}
    env.pop("MEDGATE_CONFIG", None)

    models = ServerProcess(_node_config(tmp_path, "models-1", "models", ray_head, postgres_url, http_port, registry),
                           tmp_path / "models-1", ready_timeout_s=150)
    models.env.update(env, MEDGATE_CONFIG=str(models.config_path))
    gateway_config = _node_config(tmp_path, "gateway-1", "gateway", ray_head, postgres_url, http_port, registry)
    gateway_root = tmp_path / "gateway-1"
    gateway_root.mkdir()
    (gateway_root / "medgate.yaml").write_text(yaml.safe_dump(gateway_config))
    gateway = None
    try:
        models.start()  # /readyz 200 through the proxy: the model answers, role models is live
        status, body = models.http_get("/readyz")
        assert status == 200 and body["checks"] == {"model:tb": "ok", "role:models": "ok"}, body
        # the application answers before the models node's start returns (serve.run waits for it)
        joined = wait_until(lambda: read_components(tmp_path / "models-1").get("ray_address"), timeout_s=60,
                            interval_s=0.5)
        assert joined.rsplit(":", 1)[1] == ray_head.rsplit(":", 1)[1]  # the head's GCS, no Ray of its own

        with open(gateway_root / "server.log", "wb") as log:
            gateway = subprocess.Popen(MEDGATE + ["serve"], stdout=log, stderr=subprocess.STDOUT, process_group=0,
                                       env={**env, "MEDGATE_CONFIG": str(gateway_root / "medgate.yaml")})

        def gateway_up():
            assert gateway.poll() is None, (gateway_root / "server.log").read_text(errors="replace")[-4000:]
            return read_components(tmp_path / "gateway-1").get("components", {}).get("dicom") == "ok"

        wait_until(gateway_up, timeout_s=120, interval_s=0.5)
        ds = make_dx_dataset(generate_cxr(np.random.default_rng(5), tb=True).pixels, accession="ACC-CLUSTER")
        ds.save_as(tmp_path / "cxr.dcm", enforce_file_format=True)
        send_files([tmp_path / "cxr.dcm"], ae_title="MEDGATE", host="127.0.0.1",
                   port=gateway_config["dicom"]["port"], calling_ae_title="MODALITY")
        store = Store(open_database(postgres_url))
        try:
            results = wait_until(lambda: store.results_of(str(ds.StudyInstanceUID)), timeout_s=60, interval_s=0.5)
        finally:
            store.close()
        assert {r.summary.get("model") for r in results} == {"tb"}, [r.summary for r in results]

        status, body = models.http_get("/readyz")  # the ingress reads both nodes from the cluster table
        assert status == 200 and body["checks"]["role:gateway"] == "ok", body
        status, system = models.http_get("/v1/system")
        assert status == 200 and set(system["components"]) == {"node:gateway-1 (gateway)", "node:models-1 (models)"}
        print(f"two nodes, one inference through the cluster: {time.monotonic() - started:.1f} s")
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGINT)
            try:
                gateway.wait(60)
            except subprocess.TimeoutExpired:
                gateway.kill()
        models.stop()
        for root in (tmp_path / "models-1", gateway_root):
            log = root / "server.log"
            if log.exists():
                print(f"--- {root.name}\n" + log.read_text(errors="replace")[-3000:])
    assert gateway.returncode == 0
