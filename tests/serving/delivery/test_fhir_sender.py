"""The FHIR sender against a local FHIR server: a refusal (4xx but 408/429) is dead-lettered at once
with the server's OperationOutcome; 5xx, 408, 429 (Retry-After) and a closed port are retried."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kernel.delivery_errors import PermanentDeliveryError, TransientDeliveryError
from kernel.fhir_bundle import transaction_bundle
from peers import free_port
from serving.delivery.fhir_sender import FhirSender, outcome_text, retry_after_s
from serving.delivery.outbox import Outbox
from serving.store import Store

OBSERVATION = {"resourceType": "Observation", "id": "obs-1", "status": "final",
               "code": {"text": "heart rate"}}
#: What a FHIR server answers to an invalid resource (FHIR R4 http.html#2.21.0.8: 422 + OperationOutcome).
INVALID = {"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "invariant",
     "diagnostics": "Observation.subject: minimum required = 1, but only found 0"}]}


class FhirServer:
    """A FHIR server on 127.0.0.1 answering every POST with ``status``, ``body`` and ``headers``."""

    def __init__(self, status: int, body: dict | str, headers: dict[str, str] | None = None) -> None:
        self.posts = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                self.rfile.read(int(self.headers["Content-Length"]))
                server.posts += 1
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fhir_server():
    servers = []

    def start(status: int, body: dict | str = "", headers: dict[str, str] | None = None) -> FhirServer:
        servers.append(FhirServer(status, body, headers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def deliver_once(tmp_path, url: str) -> dict:
    """One Bundle enqueued for ``url`` and attempted once; returns the outbox item."""
    store = Store(tmp_path / "db.sqlite3")
    box = Outbox(store, {"fhir": FhirSender(url, timeout_s=5)}, max_attempts=100, backoff_base_s=1.0)
    bundle = transaction_bundle([OBSERVATION], url)
    box.enqueue(f"fhir:bundle:{bundle['id']}", "fhir", url, bundle)
    box.deliver_due()
    (item,) = box.items()
    store.close()
    return item


def test_422_is_dead_lettered_at_once_with_the_servers_reason(tmp_path, fhir_server):
    server = fhir_server(422, INVALID)
    item = deliver_once(tmp_path, server.url)
    assert (item["status"], item["attempts"], server.posts) == ("dead", 1, 1)
    assert item["last_error"].startswith(f"PermanentDeliveryError: FHIR server {server.url} answered "
                                         "422 Unprocessable Entity: error invariant Observation.subject")


@pytest.mark.parametrize("status", [400, 401, 404, 409, 412])
def test_every_client_error_but_408_and_429_is_permanent(tmp_path, fhir_server, status):
    server = fhir_server(status, "not for you")
    with pytest.raises(PermanentDeliveryError, match=f"answered {status} .*: not for you"):
        FhirSender(server.url)(server.url, transaction_bundle([OBSERVATION], server.url))


@pytest.mark.parametrize("status", [408, 500, 502, 503])
def test_server_errors_and_408_are_retried(tmp_path, fhir_server, status):
    server = fhir_server(status, {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "transient", "diagnostics": "database busy"}]})
    item = deliver_once(tmp_path, server.url)
    assert (item["status"], item["attempts"]) == ("pending", 1)
    assert f"TransientDeliveryError: FHIR server {server.url} answered {status}" in item["last_error"]
    assert "database busy" in item["last_error"]


def test_a_closed_port_is_retried(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    item = deliver_once(tmp_path, url)
    assert (item["status"], item["attempts"]) == ("pending", 1)
    assert item["last_error"].startswith(f"TransientDeliveryError: FHIR server {url} not reachable")


def test_429_is_retried_no_sooner_than_retry_after(tmp_path, fhir_server):
    server = fhir_server(429, "slow down", {"Retry-After": "120"})
    before = time.time()
    item = deliver_once(tmp_path, server.url)
    assert (item["status"], item["attempts"]) == ("pending", 1)
    assert item["next_attempt_at"] >= before + 120  # not the 1 s backoff


def test_a_refused_entry_of_the_transaction_response_is_permanent(fhir_server):
    server = fhir_server(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "422 Unprocessable Entity", "outcome": INVALID}}]})
    with pytest.raises(PermanentDeliveryError, match="422 Unprocessable Entity for an entry: error invariant"):
        FhirSender(server.url)(server.url, transaction_bundle([OBSERVATION], server.url))
    busy = fhir_server(200, {"resourceType": "Bundle", "type": "transaction-response",
                             "entry": [{"response": {"status": "503"}}]})
    with pytest.raises(TransientDeliveryError, match="503 Service Unavailable for an entry"):
        FhirSender(busy.url)(busy.url, transaction_bundle([OBSERVATION], busy.url))


def test_the_reason_is_bounded_and_on_one_line(fhir_server):
    server = fhir_server(400, "line one\r\nline two\x1b[31m" + "x" * 5000)
    with pytest.raises(PermanentDeliveryError) as refused:
        FhirSender(server.url)(server.url, transaction_bundle([OBSERVATION], server.url))
    assert len(refused.value.reason) <= 300 and "line one line two [31m" in refused.value.reason
    assert not any(ch in refused.value.reason for ch in "\r\n\x1b")


def test_outcome_text_and_retry_after():
    assert outcome_text(json.dumps(INVALID)).startswith("error invariant Observation.subject")
    assert outcome_text(b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", '
                        b'"code": "required", "details": {"text": "subject missing"}}]}') == \
        "error required subject missing"
    assert outcome_text(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert retry_after_s("30") == 30.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 600))
    assert 590 <= retry_after_s(later) <= 600  # HTTP-date form, RFC 9110 10.2.3
