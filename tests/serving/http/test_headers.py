"""Security headers on every response; no-store on private ones; no CDN documentation page."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest
import requests

from serving.http.headers import CONTENT_SECURITY_POLICY
from serving.http.routes import DASHBOARD_DIR
from web_app import WebApp, auth

EXPECTED = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    with WebApp(tmp_path_factory.mktemp("headers")) as app:
        yield app


@pytest.mark.parametrize("path, role, status", [
    ("/", None, 200), ("/dashboard/app.js", None, 200), ("/dashboard/nothing.js", None, 404),
    ("/v1/ward", "clinician", 200), ("/v1/ward", None, 401), ("/v1/ward", "engineer", 403),
    ("/fhir/Observation", "clinician", 200), ("/fhir/metadata", "engineer", 200), ("/v1/system", "engineer", 200),
    ("/no/such/path", "admin", 404), ("/openapi.json", "engineer", 200)])
def test_every_response_has_the_security_headers(web, path, role, status):
    response = requests.get(web.url + path, headers=auth(role) if role else {}, timeout=30)
    assert response.status_code == status, response.text
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, name
    csp = response.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp


@pytest.mark.parametrize("path", ["/v1/ward", "/v1/worklist", "/fhir/Observation", "/fhir/Patient/p1",
                                  "/v1/system", "/fhir/metadata"])
def test_private_responses_are_not_stored(web, path):
    response = requests.get(web.url + path, headers=auth("admin"), timeout=30)
    assert response.headers["Cache-Control"] == "no-store"


def test_static_dashboard_may_be_revalidated(web):
    assert requests.get(web.url + "/", timeout=30).headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_documentation_page_loads_a_cdn(web, path):
    response = requests.get(web.url + path, headers=auth("admin"), timeout=30)
    assert response.status_code == 404 and "cdn" not in response.text.lower()
    assert requests.get(web.url + "/openapi.json", headers=auth("engineer"), timeout=30).json()["openapi"]


def test_unhandled_exception_is_a_json_500_with_the_headers(tmp_path):
    with WebApp(tmp_path) as app:
        @app.server.config.app.get("/v1/system/raise")
        def _raise():
            raise RuntimeError("secret internals /var/lib/medgate")

        response = requests.get(app.url + "/v1/system/raise", headers=auth("admin"), timeout=30)
    assert response.status_code == 500
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert response.json()["error"].startswith("internal server error")
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, name
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/healthz/", "/v1/ward/", "/fhir/metadata/"])
def test_no_redirect_takes_its_location_from_the_host_header(web, path):
    response = requests.get(web.url + path, headers={"Host": "evil.example", **auth("admin")},
                            allow_redirects=False, timeout=30)
    assert response.status_code == 404, (response.status_code, response.headers)
    assert "evil.example" not in response.headers.get("location", "")


class _Inline(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, inline styles, handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        for name, value in attrs:
            if name.startswith("on") or name == "style" or (value or "").lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=...>")
        if tag == "script" and not dict(attrs).get("src"):
            self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")


def test_dashboard_html_has_nothing_inline():
    parser = _Inline()
    parser.feed((DASHBOARD_DIR / "index.html").read_text(encoding="utf-8"))
    assert parser.found == []
    for script in DASHBOARD_DIR.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        assert "eval(" not in text and "new Function" not in text and "innerHTML" not in text, script.name
