"""FHIR destination down, then up: each transaction Bundle delivered once, ids stable."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fhir.resources.R4B.bundle import Bundle

from iomt.bridge import VitalsBridge
from iomt.sink import ResourceSink
from kernel.fhir_bundle import transaction_bundle
from peers import wait_until
from serving.delivery.fhir_sender import FhirSender
from serving.delivery.outbox import Outbox
from serving.store import Store
from training.synthetic.vitals import vitals_course


class Recorder(BaseHTTPRequestHandler):
    failures_left = 2
    bodies: list[dict] = []
    statuses: list[int] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        code = 503 if cls.failures_left > 0 else 200
        cls.failures_left -= 1
        cls.bodies.append(body)
        cls.statuses.append(code)
        reply = {"resourceType": "Bundle", "type": "transaction-response",
                 "entry": [{"response": {"status": "200 OK"}} for _ in body["entry"]]}
        data = json.dumps(reply if code == 200 else {"resourceType": "OperationOutcome"}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fhir_server():
    Recorder.failures_left, Recorder.bodies, Recorder.statuses = 2, [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()


def test_destination_down_then_up_delivers_once_with_stable_ids(tmp_path, fhir_server):
    store = Store(tmp_path / "db.sqlite3")
    outbox = Outbox(store, {"fhir": FhirSender(fhir_server, timeout_s=5), "mqtt": lambda t, p: None},
                    backoff_base_s=0.1, poll_interval_s=0.05)
    sink = ResourceSink(store.vitals, outbox, fhir_server, bundle_max_entries=25)
    bridge = VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals, outbox=outbox, sink=sink)
    course = vitals_course(10, patient_id="079123456789", deteriorating=True, seed=3)
    out = bridge.pipeline.run([("medgate/w/b/vitals", json.dumps(p).encode()) for p in course])
    bridge._commit(out)
    assert store.resources("Observation") == []  # not kept locally: the FHIR server has them
    outbox.start()
    try:
        wait_until(lambda: all(i["status"] == "sent" for i in outbox.items("")) and
                   any(i["kind"] == "fhir" for i in outbox.items("")), timeout_s=20)
    finally:
        outbox.stop()
    fhir_items = [i for i in outbox.items() if i["kind"] == "fhir"]
    delivered = [b for b, s in zip(Recorder.bodies, Recorder.statuses) if s == 200]
    assert len(delivered) == len(fhir_items) == 3  # 60 + NEWS2 + Flag resources / 25 per Bundle
    assert len({b["id"] for b in delivered}) == len(delivered)  # each Bundle once
    first_try = Recorder.bodies[0]
    retried = next(b for b in delivered if b["id"] == first_try["id"])
    assert [e["fullUrl"] for e in retried["entry"]] == [e["fullUrl"] for e in first_try["entry"]]
    for body in Recorder.bodies:
        bundle = Bundle.model_validate(body)
        assert bundle.type == "transaction"
        assert all(e.request.method == "PUT" for e in bundle.entry)
    store.close()


def test_same_resources_same_bundle():
    resources = [{"resourceType": "Observation", "id": "a"}, {"resourceType": "Flag", "id": "b"}]
    assert transaction_bundle(resources, "http://x/fhir")["id"] == transaction_bundle(resources, "http://x/fhir/")["id"]
    with pytest.raises(ValueError, match="resources"):
        transaction_bundle([], "http://x")
