"""No SQL outside the store modules (docs/architecture.md, "Stores").

Each owner keeps its tables behind a store with typed methods: the gateway
(:mod:`dicom_gateway.store`), the vitals bridge (:mod:`iomt.store`) and the server
(:mod:`serving.store`, with the PostgreSQL outbox in :mod:`serving.delivery.outbox_db` and its
audit log and web sessions).  Every string constant of every other module is read with :mod:`ast`
(f-strings included): one that starts like an SQL statement fails this test.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Packages whose modules are scanned.
PACKAGES = ("kernel", "models", "dicom_gateway", "iomt", "serving", "training", "demo", "benchmarks", "tools")
#: The modules that may write SQL: the shared database (SQLite, PostgreSQL and the dialect
#: translation), its checkpointer and the schema migrations, and the stores.
STORE_MODULES = {
    "kernel/database.py", "kernel/wal_checkpoint.py", "kernel/database_pg.py", "kernel/migrations.py",
    "kernel/cluster.py",
    "dicom_gateway/store.py", "iomt/store.py", "serving/store.py",
    "serving/delivery/outbox_db.py", "serving/governance/audit.py", "serving/http/sessions.py",
    "serving/feedback/store.py",
}
#: How an SQL statement starts (SQLite's and PostgreSQL's keywords, upper case as written here).
SQL_START = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|PRAGMA|WITH|BEGIN|COMMIT|"
                       r"ROLLBACK|VACUUM|TRUNCATE)\s")


def sql_constants(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of each string constant in ``path`` that starts like an SQL statement."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(node.lineno, node.value[:60]) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value)]


def sql_outside_stores() -> dict[str, list[tuple[int, str]]]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name not in STORE_MODULES and (hits := sql_constants(path)):
                found[name] = hits
    return found


def test_no_sql_outside_the_store_modules():
    found = sql_outside_stores()
    assert not found, f"SQL outside the store modules (give the owner store a typed method): {found}"


def test_the_scan_sees_plain_and_formatted_sql(tmp_path):
    path = tmp_path / "route.py"
    path.write_text('def handler(store, table):\n    """Select the rows (not SQL: lower case)."""\n'
                    '    store.query(f"SELECT * FROM {table}")\n'
                    '    store.query("  UPDATE studies SET status=?", ("done",))\n')
    assert sorted(line for line, _ in sql_constants(path)) == [3, 4]


def test_every_store_module_exists():
    assert all((ROOT / name).is_file() for name in STORE_MODULES), "a store module was moved: update STORE_MODULES"
