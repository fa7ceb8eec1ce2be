"""A FastAPI app with medgate's web routes (no Ray), served by uvicorn on a free port, for tests."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from peers import free_port
from serving.http import context as web_context
from serving.http.auth import digest
from serving.http.forwarded import UVICORN_TRUST_NONE
from serving.http.routes import install_routes

#: The browser of the dashboard tests (Debian package chromium) and how it is started.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

TOKENS = {"clinician": "clinician-token-0123456789", "engineer": "engineer-token-0123456789",
          "admin": "admin-token-0123456789abcd"}


class WebApp:
    """``install_routes`` on a fresh app over ``state_dir``; ``url`` once started."""

    def __init__(self, state_dir: Path, **web: object) -> None:
        """``web``: :func:`serving.http.context.install` keywords (default public_base_url: :attr:`url`)."""
        self.state_dir = Path(state_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = install_routes(FastAPI())
        self.context = web_context.install(
            self.state_dir, [(digest(t), role, f"{role} user") for role, t in TOKENS.items()],
            **{"public_base_url": self.url, **web})
        # as Ray Serve's proxy runs under `medgate serve` (FORWARDED_ALLOW_IPS, serving.http.forwarded)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                forwarded_allow_ips=UVICORN_TRUST_NONE)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "WebApp":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def sign_in(page, url: str, role: str) -> None:
    """In the dashboard at ``url``: English, ``role``'s token, wait for the tabs (Playwright ``page``)."""
    page.goto(url + "/")
    page.click("button[data-lang=en]")
    page.fill("#token", TOKENS[role])
    page.click("#login button[type=submit]")
    page.wait_for_selector("#tabs:not([hidden])")


def require_browser() -> None:
    """Skip, saying why, where Playwright or Chromium is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(reason="playwright is not installed (pip install playwright; the dev extra has it)")
    if not Path(CHROMIUM).exists():
        pytest.skip(reason=f"{CHROMIUM} not found (Debian package chromium; `make peers` installs it as root)")
