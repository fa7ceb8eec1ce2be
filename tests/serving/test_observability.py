"""Observability: JSON log lines, one correlation id per study and per MQTT message, ``medgate status``.

In process: the real SCP, study completion, imaging pipeline (the registered ``tb`` model through
:class:`serving.inference.deployments.ModelServer`, no Ray) and outbox delivering to a DCMTK ``storescp``;
the vitals bridge on messages handed to it.  Then one ``medgate serve`` with
``MEDGATE_LOGGING__FORMAT=json``: its log file and ``medgate status`` against it.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from dicom_gateway.scp import StorageScp
from dicom_gateway.scu import send_files
from iomt.bridge import VitalsBridge
from iomt.message_id import message_id
from kernel.correlation import bound, current_id
from kernel.logs import JsonFormatter, TextFormatter
from peers import DCMTK_ENV, find_peer, free_port, start_storescp, stop_process, wait_for_port, wait_until
from server_process import MEDGATE, ServerProcess
from serving.cli import status as status_cli
from serving.config import load_config
from serving.delivery.outbox import Outbox
from serving.http.headers import CONTENT_SECURITY_POLICY
from serving.imaging.pipeline import ImagingPipeline
from serving.store import Store
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset
from training.synthetic.vitals import vitals_course

KEEP_ALIVE_S = 2  # http.keep_alive_timeout_s of the real server below
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STUDY_LOGGERS = {"medgate.dicom", "medgate.imaging", "medgate.outbox"}


@pytest.fixture
def json_log():
    """Every ``medgate.*`` record, DEBUG and up, as JSON lines; returns a function parsing them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("medgate")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def dx_file(folder: Path, seed: int) -> tuple[Path, str]:
    ds = make_dx_dataset(generate_cxr(np.random.default_rng(seed), tb=True).pixels)
    path = folder / f"cxr-{seed}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


class _Done:
    def __init__(self, value) -> None:
        self.value = value

    def result(self, timeout_s: float | None = None):
        return self.value


class LocalHandle:
    """The part of a Ray Serve deployment handle the imaging pipeline uses, over a ModelServer."""

    def __init__(self, server) -> None:
        self.server = server
        self.info = SimpleNamespace(remote=lambda: _Done(server.info()))

    def remote(self, item):
        return _Done(self.server.run_batch([item])[0])


def test_formatters_carry_the_correlation_id_and_extra_fields():
    record = logging.LogRecord("medgate.test", logging.WARNING, __file__, 1, "sent %s", ("x",), None)
    record.destination = "pacs"
    with bound("1.2.840.99"):
        line = json.loads(JsonFormatter().format(record))
        text = TextFormatter().format(record)
    assert ISO_UTC.match(line["time"])
    assert line["level"] == "WARNING" and line["logger"] == "medgate.test" and line["message"] == "sent x"
    assert line["correlation_id"] == "1.2.840.99" and line["destination"] == "pacs"
    assert "medgate.test [1.2.840.99]: sent x" in text
    assert "correlation_id" not in json.loads(JsonFormatter().format(record))  # none in effect now
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("medgate.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(failed))["exception"]


def test_a_study_keeps_one_correlation_id_from_intake_to_delivery(tmp_path, pacs, json_log):
    from serving.inference.deployments import ModelServer

    pacs_port, pacs_dir = pacs
    store = Store(tmp_path / "medgate.sqlite3")
    bundles = []

    def send_dicom(destination: str, payload: dict) -> None:
        send_files(payload["paths"], ae_title="PACS", host="127.0.0.1", port=pacs_port)

    outbox = Outbox(store, {"dicom": send_dicom, "fhir": lambda url, bundle: bundles.append(bundle)},
                    backoff_base_s=0.1, poll_interval_s=0.05)
    model = ModelServer("tb", {"device": "cpu"})
    model.reconfigure({})
    pipeline = ImagingPipeline(store, outbox, {"tb": LocalHandle(model)}, tmp_path / "results",
                               destinations={"pacs": ["sr", "sc"]}, fhir_base_url="http://fhir.test/fhir")
    scp = StorageScp("MEDGATE", "127.0.0.1", free_port(), store.gateway, tmp_path / "spool", pipeline.submit,
                     quiet_period_s=0.5, poll_interval_s=0.05)
    outbox.start()
    pipeline.start()
    scp.start()
    try:
        path, study = dx_file(tmp_path, seed=5)
        send_files([path], ae_title="MEDGATE", host="127.0.0.1", port=scp.port, calling_ae_title="MODALITY")
        wait_until(lambda: len(outbox.items("sent")) == 3, timeout_s=120)  # SR, SC, FHIR Bundle
    finally:
        scp.stop()
        pipeline.stop()
        outbox.stop()
    lines = json_log()
    assert lines and all(ISO_UTC.match(line["time"]) and line["message"] for line in lines)
    ours = [line for line in lines if line.get("correlation_id") == study]
    assert STUDY_LOGGERS <= {line["logger"] for line in ours}, ours
    messages = [line["message"] for line in ours]
    assert any(m.startswith("stored ") for m in messages)  # intake (association thread)
    assert any(" complete: " in m for m in messages)  # completion (assembler thread)
    assert any(m.startswith(f"study {study}: tb@") for m in messages)  # model call and results
    assert sum(m.startswith("delivered ") for m in messages) == 3  # outbox thread: SR, SC, Bundle
    assert {line["thread"] for line in ours} >= {"medgate-assembler", "medgate-imaging-tb", "medgate-outbox"}
    assert all(line.get("correlation_id") == study for line in lines
               if line["logger"] in ("medgate.imaging", "medgate.outbox"))
    assert {item["correlation_id"] for item in outbox.items()} == {study}
    assert len(list(pacs_dir.iterdir())) == 2 and len(bundles) == 1
    assert current_id() is None  # nothing leaked into the test's own context
    store.close()


def test_a_delivery_after_a_restart_logs_under_the_id_it_was_enqueued_with(tmp_path, json_log):
    store = Store(tmp_path / "medgate.sqlite3")
    with bound("1.2.826.0.1.3680043.8.498.1"):
        Outbox(store, {"dicom": lambda d, p: None}).enqueue("dicom:1:pacs", "dicom", "pacs", {"paths": []})
    attempts = []

    def flaky(destination: str, payload: dict) -> None:
        attempts.append(current_id())
        if len(attempts) == 1:
            raise ConnectionRefusedError("PACS down")

    restarted = Outbox(store, {"dicom": flaky}, backoff_base_s=0.05, poll_interval_s=0.05)
    restarted.start()
    try:
        wait_until(lambda: restarted.items("sent"), timeout_s=20)
    finally:
        restarted.stop()
    assert attempts == ["1.2.826.0.1.3680043.8.498.1"] * 2
    outbox_lines = [line for line in json_log() if line["logger"] == "medgate.outbox"]
    assert [line["level"] for line in outbox_lines] == ["WARNING", "INFO"]
    assert {line["correlation_id"] for line in outbox_lines} == {"1.2.826.0.1.3680043.8.498.1"}
    assert {line["thread"] for line in outbox_lines} == {"medgate-outbox"}
    store.close()


def test_each_mqtt_message_logs_under_its_own_id(tmp_path, json_log):
    store = Store(tmp_path / "medgate.sqlite3")
    published = []
    outbox = Outbox(store, {"mqtt": lambda topic, payload: published.append(topic)})
    bridge = VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals, outbox=outbox)
    bad_topic, bad = "medgate/ward-x/bed-9/vitals", b"{not json"
    topic = "medgate/ward-1/bed-2/vitals"
    payloads = [json.dumps(p).encode() for p in vitals_course(10, patient_id="079123456789",
                                                              deteriorating=True, seed=3)]
    bridge._commit(bridge.pipeline.run([(bad_topic, bad), *((topic, p) for p in payloads)]))
    assert current_id() is None  # restored after the batch
    outbox.deliver_due()
    lines = json_log()
    dead = [line for line in lines if "dead-lettered" in line["message"]]
    assert [line["correlation_id"] for line in dead] == [message_id(bad_topic, bad)]
    assert dead[0]["correlation_id"].startswith(f"mqtt:{bad_topic}#")
    ids = {message_id(topic, p) for p in payloads}
    assert len(ids) == len(payloads)
    assert all(re.match(r"^mqtt:.+@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", i) for i in ids)
    alerts = [line for line in lines if "alert queued" in line["message"]]
    assert alerts and {line["correlation_id"] for line in alerts} <= ids
    items = outbox.items()
    assert published and {i["correlation_id"] for i in items} <= {line["correlation_id"] for line in alerts}
    delivered = [line for line in lines if line["message"].startswith("delivered alert:")]
    assert {line["correlation_id"] for line in delivered} == {i["correlation_id"] for i in items}
    store.close()


def test_status_without_a_server_reads_the_state_dir_and_exits_1(tmp_path):
    settings = load_config(None, state_dir=str(tmp_path / "var"), http={"port": free_port()})
    store = Store(settings.db_path)
    with store.database.transaction() as db:
        db.executemany("INSERT INTO studies(study_uid, status, received_at, updated_at) VALUES (?,?,0,0)",
                       [("1.1", "receiving"), ("1.2", "complete"), ("1.3", "done"), ("1.4", "failed")])
    def refused(destination: str, payload: dict) -> None:
        raise ConnectionRefusedError("PACS down")

    outbox = Outbox(store, {"dicom": refused}, max_attempts=1)
    outbox.enqueue("dicom:a:pacs", "dicom", "pacs", {})
    outbox.deliver_due()  # dead after one attempt
    outbox.enqueue("dicom:b:pacs", "dicom", "pacs", {})
    store.vitals.add_dead_letter("mqtt:medgate/w/b/vitals", "unknown device", b"{}", device="MON-7")
    store.close()
    out = io.StringIO()
    args = argparse.Namespace(json=True, url=None, token=None, timeout_s=2.0)
    assert status_cli.run(settings, args, out) == 1
    report = json.loads(out.getvalue())
    assert report["healthy"] is False and report["server"]["reachable"] is False
    assert report["studies"] == {"in_progress": 2, "by_status": {"receiving": 1, "complete": 1, "done": 1,
                                                                 "failed": 1}}
    [pacs] = report["outbox"]["destinations"]
    assert (pacs["destination"], pacs["pending"], pacs["dead"]) == ("pacs", 1, 1)
    assert report["dead_letters"] == {"total": 1, "parked": 1}
    assert report["disk"]["ok"] is True
    assert any("does not answer" in p for p in report["problems"])
    assert any("dead outbox" in p for p in report["problems"])
    text = io.StringIO()
    assert status_cli.run(settings, argparse.Namespace(**{**vars(args), "json": False}), text) == 1
    assert "DEGRADED" in text.getvalue() and "pacs" in text.getvalue()


# -- one real server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if find_peer("storescp") is None:
        pytest.skip(reason="storescp not installed (Debian package dcmtk; `make test` installs it as root)")
    root = tmp_path_factory.mktemp("observed")
    pacs_port, pacs_dir = free_port(), root / "pacs"
    pacs = start_storescp(pacs_port, pacs_dir)
    config = {
        "state_dir": str(root / "var"),
        "dicom": {"ae_title": "MEDGATE", "port": free_port()},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "http": {"port": (http_port := free_port()), "keep_alive_timeout_s": KEEP_ALIVE_S,
                 "public_base_url": f"http://127.0.0.1:{http_port}"},
        "mqtt": {"url": None, "embedded_port": free_port(), "topic_prefix": "medgate"},
        "fhir": {"base_url": None},
    }
    process = ServerProcess(config, root)
    process.env["MEDGATE_LOGGING__FORMAT"] = "json"
    try:
        process.start()
        yield {"process": process, "config": config, "root": root, "pacs_dir": pacs_dir}
    finally:
        process.stop()
        stop_process(pacs)
        print(process.log_tail())


def test_a_real_server_writes_json_lines_with_the_study_id(server, tmp_path):
    path, study = dx_file(tmp_path, seed=8)
    send_files([path], ae_title="MEDGATE", host="127.0.0.1", port=server["config"]["dicom"]["port"],
               calling_ae_title="MODALITY")

    def delivered() -> list[dict]:
        lines = [json.loads(line) for line in server["process"].log_path.read_text().splitlines()
                 if line.startswith('{"time"')]  # Ray's own output, forwarded to stderr, is not ours
        ours = [line for line in lines if line.get("correlation_id") == study]
        return ours if sum(line["message"].startswith("delivered ") for line in ours) == 3 else []

    ours = wait_until(delivered, timeout_s=120, interval_s=0.5)  # SR, SC and GSPS at the PACS
    assert STUDY_LOGGERS <= {line["logger"] for line in ours}, ours
    assert all(ISO_UTC.match(line["time"]) for line in ours)
    status, metrics = server["process"].http_get("/metrics")  # outbox gauges from Outbox.counts()
    assert status == 200 and 'medgate_outbox_items{kind="dicom",status="sent"} 3' in metrics["text"]


def test_status_of_a_running_server(server):
    env = {**server["process"].env}
    result = subprocess.run(MEDGATE + ["status", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] and report["server"]["ready"] and report["problems"] == []
    assert "tb" in {m["name"] for m in report["server"]["models"]}
    assert all(m["version"] for m in report["server"]["models"])
    assert report["mqtt_connected"] is True and report["uptime_s"] >= 0
    assert report["process"]["running"] and report["process"]["pid"]
    text = subprocess.run(MEDGATE + ["status"], env=env, capture_output=True, text=True, timeout=120)
    print(text.stdout)
    assert text.returncode == 0 and "HEALTHY" in text.stdout and "mqtt bridge   connected" in text.stdout


def test_a_local_client_cannot_forge_its_audited_address_through_ray(server):
    """Ray Serve's proxy is uvicorn, which trusts X-Forwarded-For from loopback unless told not to."""
    url = f"http://127.0.0.1:{server['config']['http']['port']}"
    forged = {"Authorization": f"Bearer {server['process'].token}", "X-Forwarded-For": "203.0.113.9",
              "Forwarded": "for=198.51.100.1"}
    assert requests.get(url + "/fhir/Patient/forged-xff", headers=forged, timeout=30).status_code == 404
    status, events = server["process"].http_get("/fhir/AuditEvent?_count=500")
    assert status == 200
    [event] = [e["resource"] for e in events["entry"]
               if e["resource"].get("entity", [{}])[0].get("what", {}).get("reference") == "Patient/forged-xff"]
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"


def test_ingress_responses_carry_the_security_headers(server):
    url = f"http://127.0.0.1:{server['config']['http']['port']}"
    token = {"Authorization": f"Bearer {server['process'].token}"}
    for path, headers in (("/healthz", {}), ("/v1/models", token), ("/v1/results/1.2.3/none.dcm", token), ("/", {})):
        response = requests.get(url + path, headers=headers, timeout=30)
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert response.headers["X-Frame-Options"] == "DENY" and response.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(url + "/v1/models", headers=token, timeout=30).headers["Cache-Control"] == "no-store"
    assert requests.get(url + "/docs", headers=token, timeout=30).status_code == 404


def test_bundle_links_ignore_a_forged_host_through_ray(server):
    url = f"http://127.0.0.1:{server['config']['http']['port']}"
    forged = {"Authorization": f"Bearer {server['process'].token}", "Host": "evil.example"}
    bundle = requests.get(url + "/fhir/AuditEvent?_count=1", headers=forged, timeout=30).json()
    links = [link["url"] for link in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"]]
    assert links and not any("evil" in link for link in links), links


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(server):
    port = server["config"]["http"]["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: medgate\r\n\r\n")
        reply = conn.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
        idle_from = time.monotonic()
        while conn.recv(65536):  # the rest of the reply, then b"" when the server closes
            pass
        idle_s = time.monotonic() - idle_from
    print(f"idle connection closed by the server after {idle_s:.2f} s (keep_alive_timeout_s {KEEP_ALIVE_S})")
    assert KEEP_ALIVE_S - 0.5 <= idle_s <= KEEP_ALIVE_S + 3
