"""/v1/system counts the outbox of the configured backend, the one /metrics and uploads use (with
PostgreSQL they used to disagree: the page counted the local SQLite table)."""
from __future__ import annotations

from serving.http import context, system
from serving.http.context import WebContext, install


class RemoteOutbox:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def status_counts(self) -> dict[str, int]:
        if self.fail:
            raise ConnectionError("server closed the connection")
        return {"pending": 7, "sent": 3}


def test_the_system_page_counts_the_configured_backend(tmp_path, monkeypatch, postgres_url):
    opened = []
    monkeypatch.setattr(context, "open_outbox_db", lambda url, store: opened.append(url) or RemoteOutbox())
    ctx = install(tmp_path, [], store_url=postgres_url)  # the stores live there too
    assert isinstance(ctx, WebContext)
    counts = system._counts(ctx)
    assert counts["outbox"] == {"pending": 7, "sent": 3}
    assert opened == [postgres_url] and ctx.store().database.dialect == "postgresql"
    assert not (tmp_path / "medgate.sqlite3").exists()
    assert ctx.outbox_db() is ctx.outbox_db() and len(opened) == 1  # one connection, reused
    assert counts["dead_letters"] == {"total": 0, "parked": 0}


def test_an_unreadable_backend_is_named_and_reconnected_next_time(tmp_path, monkeypatch, postgres_url):
    backends = [RemoteOutbox(fail=True), RemoteOutbox()]
    monkeypatch.setattr(context, "open_outbox_db", lambda url, store: backends.pop(0))
    ctx = install(tmp_path, [], store_url=postgres_url)
    assert "cannot be read" in system._counts(ctx)["outbox"]["error"]
    assert system._counts(ctx)["outbox"] == {"pending": 7, "sent": 3}


def test_without_a_url_it_is_the_local_outbox(tmp_path):
    ctx = install(tmp_path, [])
    assert ctx.outbox_db() is ctx.store().outbox
