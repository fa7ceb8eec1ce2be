"""Forwarding headers are read only from configured proxies; the audited address follows."""
from __future__ import annotations

import pytest
import requests

from serving.governance.audit import AuditLog
from serving.http.forwarded import client_address, parse_networks, scheme
from web_app import WebApp, auth

PROXIES = parse_networks(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize("peer, headers, expected", [
    ("127.0.0.1", {"x-forwarded-for": "203.0.113.9"}, "127.0.0.1"),  # loopback is not a proxy by default
    ("192.0.2.7", {"forwarded": "for=203.0.113.9"}, "192.0.2.7"),
    ("10.1.2.3", {"x-forwarded-for": "203.0.113.9"}, "203.0.113.9"),
    ("10.1.2.3", {"x-forwarded-for": "198.51.100.1, 203.0.113.9, 10.9.9.9"}, "203.0.113.9"),  # right-most untrusted
    ("10.1.2.3", {"x-forwarded-for": "10.2.2.2, 10.3.3.3"}, "10.2.2.2"),  # all proxies: the first
    ("10.1.2.3", {"forwarded": 'for=198.51.100.1, for="[2001:db8::7]:4711";proto=https'}, "2001:db8::7"),
    ("10.1.2.3", {"forwarded": "for=203.0.113.9:8080", "x-forwarded-for": "198.51.100.1"}, "203.0.113.9"),
    ("10.1.2.3", {"x-forwarded-for": "unknown"}, "10.1.2.3"),  # an unknown hop: stop at the proxy
    ("10.1.2.3", {}, "10.1.2.3"),
    ("::1", {"x-forwarded-for": "203.0.113.9"}, "203.0.113.9"),
])
def test_client_address(peer, headers, expected):
    assert client_address(peer, headers, PROXIES) == expected


def test_nothing_is_trusted_without_configured_proxies():
    assert client_address("10.1.2.3", {"x-forwarded-for": "203.0.113.9"}, ()) == "10.1.2.3"
    assert scheme("10.1.2.3", "http", {"x-forwarded-proto": "https"}, ()) == "http"


def test_scheme_from_a_trusted_proxy_only():
    assert scheme("10.1.2.3", "http", {"x-forwarded-proto": "https"}, PROXIES) == "https"
    assert scheme("10.1.2.3", "http", {"forwarded": "for=1.2.3.4;proto=https"}, PROXIES) == "https"
    assert scheme("192.0.2.7", "http", {"x-forwarded-proto": "https"}, PROXIES) == "http"
    assert scheme("10.1.2.3", "http", {"x-forwarded-proto": "gopher"}, PROXIES) == "http"


def test_a_bad_proxy_entry_is_named():
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        parse_networks(["10.0.0.300"])


def _last_client(root) -> str:
    log = AuditLog(root / "medgate.sqlite3")
    try:
        return log.rows(newest_first=True, limit=1)[0]["client"]
    finally:
        log.close()


def test_a_local_client_cannot_forge_the_audited_address(tmp_path):
    forged = {**auth("clinician"), "X-Forwarded-For": "203.0.113.9", "Forwarded": "for=198.51.100.1"}
    with WebApp(tmp_path) as app:
        assert requests.get(app.url + "/v1/worklist", headers=forged, timeout=30).status_code == 200
        assert _last_client(tmp_path) == "127.0.0.1"


def test_a_configured_proxy_names_the_client(tmp_path):
    with WebApp(tmp_path, trusted_proxies=["127.0.0.1/32"]) as app:
        headers = {**auth("clinician"), "X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
        assert requests.get(app.url + "/v1/worklist", headers=headers, timeout=30).status_code == 200
        assert _last_client(tmp_path) == "203.0.113.9"
