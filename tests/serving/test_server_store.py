"""``medgate serve`` opens its stores where ``store.url`` says: PostgreSQL when given, else the SQLite
file under ``state_dir`` (serving.server.Server; Ray is not started)."""
from __future__ import annotations

import pytest

from kernel.database import DATABASE_FILE
from kernel.migrations import version
from serving.config import load_config
from serving.server import Server


def test_the_server_opens_its_stores_in_postgresql_from_store_url(tmp_path, postgres_url):
    settings = load_config(state_dir=tmp_path / "var", store={"url": postgres_url})
    assert settings.store_location == postgres_url
    server = Server(settings)
    try:
        assert server.store.database.dialect == "postgresql"
        assert server.store.database.location == postgres_url
        assert {o: version(server.store.database, o) for o in ("gateway", "vitals", "serving")} == \
               {"gateway": 2, "vitals": 3, "serving": 1}
        server.store.add_result("1.2.3", "sr", None, {"model": "tb"})
        assert server.store.results_of("1.2.3")[0].summary == {"model": "tb"}
    finally:
        server.store.close()
    assert not (tmp_path / "var" / DATABASE_FILE).exists()  # nothing written to the SQLite file


@pytest.mark.parametrize("url", [None, "sqlite:"])
def test_without_a_postgresql_url_the_stores_are_the_sqlite_file(tmp_path, url):
    settings = load_config(state_dir=tmp_path / "var", store={"url": url})
    server = Server(settings)
    try:
        assert server.store.database.dialect == "sqlite"
        assert server.store.path == (tmp_path / "var").resolve() / DATABASE_FILE
    finally:
        server.store.close()
