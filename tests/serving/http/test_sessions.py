"""Dashboard sessions are server-side: the cookie is a random id, sign-out revokes it, it expires."""
from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest
import requests

from serving.http.auth import Principal
from serving.http.sessions import SessionStore
from web_app import TOKENS, WebApp, auth


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_store_opens_checks_expires_and_revokes(database_location):  # SQLite and PostgreSQL
    clock = Clock()
    store = SessionStore(database_location, clock=clock)
    who = Principal("Dr. An", "clinician")
    first, second = store.open(who, 60), store.open(who, 60)
    assert first != second and len(first) >= 43  # 256 random bits, URL-safe base64
    assert store.principal(first) == who
    assert store.revoke(first) and not store.revoke(first)
    assert store.principal(first) is None and store.principal(second) == who
    clock.now += 60
    assert store.principal(second) is None  # expired
    assert store.principal("") is None and store.principal("not-a-session") is None
    store.close()
    raw = (psycopg.connect(database_location) if isinstance(database_location, str)
           else sqlite3.connect(database_location))
    stored = [row for row in raw.execute("SELECT * FROM web_sessions")]
    raw.close()
    assert stored and not any(first in map(str, row) or second in map(str, row) for row in stored)


def test_store_refuses_bad_arguments(tmp_path):
    store = SessionStore(tmp_path / "medgate.sqlite3")
    with pytest.raises(ValueError, match="max_age_s must be positive, 0 is given"):
        store.open(Principal("x", "clinician"), 0)
    with pytest.raises(ValueError, match="'porter' is given"):
        store.open(Principal("x", "porter"), 60)
    store.close()


@pytest.fixture
def web(tmp_path):
    with WebApp(tmp_path) as app:
        yield app


def sign_in(web, role: str = "clinician") -> requests.Session:
    browser = requests.Session()
    response = browser.post(web.url + "/v1/session", headers=auth(role), timeout=30)
    assert response.status_code == 200, response.text
    return browser


def test_cookie_is_a_session_id_not_the_token(web):
    browser = sign_in(web)
    [cookie] = list(browser.cookies)
    assert cookie.name == "medgate_session" and cookie.value not in TOKENS.values()
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/"
    response = browser.post(web.url + "/v1/session", headers=auth("clinician"), timeout=30)
    assert "samesite=strict" in response.headers["set-cookie"].lower()
    assert browser.get(web.url + "/v1/ward", timeout=30).status_code == 200
    forged = requests.get(web.url + "/v1/ward", cookies={"medgate_session": TOKENS["clinician"]}, timeout=30)
    assert forged.status_code == 401  # the token itself is no session id


def test_signed_out_cookie_is_rejected(web):
    browser = sign_in(web)
    copied = browser.cookies.get("medgate_session")
    assert browser.get(web.url + "/v1/ward", timeout=30).status_code == 200
    closed = browser.delete(web.url + "/v1/session", headers=auth("clinician"), timeout=30)
    assert closed.status_code == 200 and closed.json()["revoked"] is True
    replayed = requests.get(web.url + "/v1/ward", cookies={"medgate_session": copied}, timeout=30)
    assert replayed.status_code == 401


def test_expired_cookie_is_rejected(web):
    web.context.cookie_max_age_s = 1
    browser = sign_in(web)
    copied = browser.cookies.get("medgate_session")
    assert requests.get(web.url + "/v1/ward", cookies={"medgate_session": copied}, timeout=30).status_code == 200
    web.context.sessions().clock = lambda: Clock()() + 10**9  # far past the expiry
    assert requests.get(web.url + "/v1/ward", cookies={"medgate_session": copied}, timeout=30).status_code == 401


def test_cookie_is_secure_behind_a_trusted_tls_proxy(tmp_path):
    with WebApp(tmp_path, trusted_proxies=["127.0.0.1"]) as app:
        headers = {**auth("clinician"), "X-Forwarded-Proto": "https"}
        response = requests.post(app.url + "/v1/session", headers=headers, timeout=30)
        assert "secure" in response.headers["set-cookie"].lower()
    with WebApp(tmp_path) as app:  # the same header from an untrusted peer changes nothing
        response = requests.post(app.url + "/v1/session", headers=headers, timeout=30)
        assert "secure" not in response.headers["set-cookie"].lower()


def test_sign_out_ends_an_open_ward_stream(web):
    browser = sign_in(web)
    with browser.get(web.url + "/v1/stream/ward", stream=True, timeout=30) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines) == b"retry: 3000"
        assert browser.delete(web.url + "/v1/session", headers=auth("clinician"), timeout=30).json()["revoked"]
        started = time.monotonic()
        rest = list(lines)  # ends when the server closes the stream
        assert time.monotonic() - started < 10, rest
