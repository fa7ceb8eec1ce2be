"""Test modules have unique basenames: the test folders are not packages, so pytest imports each
module by its basename, and a second ``test_x.py`` anywhere stops the whole run at collection
("import file mismatch") — which a run of one folder never shows."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SKIPPED = {"node_modules", "__pycache__", "ohif"}


def test_every_test_module_has_its_own_basename():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        if not SKIPPED & set(path.relative_to(TESTS).parts):
            seen[path.name].append(str(path.relative_to(TESTS)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
