"""`medgate serve` as a subprocess, driven by real peers: DCMTK (modality and PACS), MQTT, HTTP.

One server is started for the module (Ray start-up costs seconds); each test drives one path.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from peers import DCMTK_ENV, find_peer, free_port, require_peer, stop_process, wait_until
from server_process import MEDGATE, ServerProcess
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for name, package in (("storescp", "dcmtk"), ("dciodvfy", "dicom3tools")):
        require_peer(name, package)
    root = tmp_path_factory.mktemp("medgate")
    pacs_port, pacs_dir = free_port(), root / "pacs"
    pacs_dir.mkdir()
    pacs = subprocess.Popen([find_peer("storescp"), "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = {
        "state_dir": str(root / "var"),
        "dicom": {"ae_title": "MEDGATE", "port": free_port()},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "http": {"port": free_port()},
        "mqtt": {"url": None, "embedded_port": free_port(), "topic_prefix": "medgate"},
        "fhir": {"base_url": None},
    }
    process = ServerProcess(config, root)
    try:
        process.start()
        yield {"process": process, "proc": process.proc, "config": config, "env": process.env,
               "root": root, "pacs_dir": pacs_dir}
    finally:
        process.stop()
        stop_process(pacs)
        print(process.log_tail())


def storescu(server, *files: Path, called: str = "MEDGATE") -> subprocess.CompletedProcess:
    port = server["config"]["dicom"]["port"]
    return subprocess.run([find_peer("storescu"), "-aet", "MODALITY", "-aec", called, "127.0.0.1",
                           str(port), *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True,
                          timeout=60)


def test_health_ready_and_models(server):
    http_get = server["process"].http_get
    assert http_get("/healthz") == (200, {"status": "ok"})
    status, body = http_get("/readyz")
    assert status == 200 and body["ready"], body
    assert {"model:tb", "dicom", "mqtt", "outbox"} <= set(body["checks"])
    status, models = http_get("/v1/models")
    assert status == 200
    tb = next(m for m in models if m["name"] == "tb")
    assert tb["device"] in ("cpu", "cuda")
    assert "not for clinical use" in tb["intended_use"].lower()
    assert http_get("/v1/models", token=False)[0] == 401  # every route but health checks needs a token
    assert http_get("/healthz", token=False)[0] == 200


def test_echoscu_and_called_ae_check(server):
    port = str(server["config"]["dicom"]["port"])
    echo = [find_peer("echoscu"), "-aet", "MODALITY", "127.0.0.1", port]
    assert subprocess.run(echo + ["-aec", "MEDGATE"], env=DCMTK_ENV, timeout=30).returncode == 0
    assert subprocess.run(echo + ["-aec", "NOT-MEDGATE"], env=DCMTK_ENV, capture_output=True,
                          timeout=30).returncode != 0


def test_storescu_cxr_gives_valid_sr_at_pacs(server, tmp_path):
    ds = make_dx_dataset(generate_cxr(np.random.default_rng(3), tb=True).pixels)
    path = tmp_path / "cxr.dcm"
    ds.save_as(path, enforce_file_format=True)
    start = time.monotonic()
    result = storescu(server, path)
    assert result.returncode == 0, result.stderr

    def sr_at_pacs():
        for f in server["pacs_dir"].iterdir():
            if f.name.startswith("SR") and not f.name.endswith(".tmp"):
                dump = subprocess.run([find_peer("dcmdump"), str(f)], capture_output=True, text=True)
                if ds.StudyInstanceUID in dump.stdout:
                    return f
        return None

    sr = wait_until(sr_at_pacs, timeout_s=60)
    print(f"C-STORE -> SR received at PACS: {time.monotonic() - start:.3f} s")
    check = subprocess.run([find_peer("dciodvfy"), str(sr)], capture_output=True, text=True)
    errors = [line for line in (check.stdout + check.stderr).splitlines() if "Error" in line]
    assert not errors, "\n".join(errors)
    dump = subprocess.run([find_peer("dsrdump"), str(sr)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout
    assert "tuberculosis" in dump.stdout.lower()


def test_bad_dicom_is_refused_and_server_stays_up(server, tmp_path):
    from pydicom.data import get_testdata_file
    from pynetdicom import AE

    ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data: cannot be decoded
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server["config"]["dicom"]["port"], ae_title="MEDGATE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert 0xC000 <= status.Status <= 0xCFFF
    # An SR is a SOP class medgate does not accept for storage: the context is refused.
    sr = get_testdata_file("reportsi.dcm")
    assert storescu(server, Path(sr)).returncode != 0
    assert server["proc"].poll() is None
    echo = [find_peer("echoscu"), "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1",
            str(server["config"]["dicom"]["port"])]
    assert subprocess.run(echo, env=DCMTK_ENV, timeout=30).returncode == 0


def test_bad_mqtt_payload_goes_to_dead_letter(server):
    port = server["config"]["mqtt"]["embedded_port"]
    letters: list[dict] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-deadletter")
    sub.on_message = lambda c, u, m: letters.append(json.loads(m.payload))
    sub.connect("127.0.0.1", port)
    sub.subscribe("medgate/deadletter", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.5)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-badpub")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish("medgate/ward-x/bed-9/vitals", b"{not json", qos=1).wait_for_publish(10)
        pub.publish("medgate/ward-x/bed-9/vitals", json.dumps({"time": "2026-11-22T10:00:00+07:00"}),
                    qos=1).wait_for_publish(10)
        pub.loop_stop()
        wait_until(lambda: len(letters) >= 2, timeout_s=30)
    finally:
        sub.loop_stop()
    assert all(letter["topic"] == "medgate/ward-x/bed-9/vitals" and letter["reason"] for letter in letters)
    assert server["proc"].poll() is None


def test_demo_reports_both_paths(server):
    result = subprocess.run(MEDGATE + ["demo", "--timeout-s", "90"], env=server["env"], capture_output=True,
                            text=True, timeout=180)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "SR (TID 1500)" in result.stdout
    assert "SR sent to PACS PACS@127.0.0.1" in result.stdout and ": yes" in result.stdout
    assert "alerts received" in result.stdout


def test_models_deploy_swaps_and_rolls_back(server):
    from models.registry import ModelRegistry

    versions = ModelRegistry().versions("tb")
    if len(versions) < 2:
        pytest.skip(reason=f"one registered tb version ({versions}); swapping needs two")
    http_get = server["process"].http_get
    for version in (versions[0], versions[-1]):  # deploy the older one, then roll back
        result = subprocess.run(MEDGATE + ["models", "deploy", f"tb@{version}"], env=server["env"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        models = {m["name"]: m for m in http_get("/v1/models")[1]}
        assert models["tb"]["version"] == version
    assert http_get("/readyz")[0] == 200


def test_ctrl_c_shuts_down_cleanly(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    log = (server["root"] / "server.log").read_text()
    assert "medgate stopped" in log
