"""Which version of each model is deployed: ``state_dir/model_versions.json``.

``medgate models deploy <name>@<version> [--shadow <version>]`` writes it and updates the running
application; ``medgate serve`` reads it at start, so a restart keeps the deployed versions.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = "model_versions.json"


def read_versions(state_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((Path(state_dir) / FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_versions(state_dir: Path, versions: dict[str, dict[str, Any]]) -> None:
    path = Path(state_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(versions, indent=2))
    tmp.replace(path)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"tb@1.1.0"`` -> ``("tb", "1.1.0")``; ``"tb"`` -> ``("tb", None)``."""
    name, _, version = ref.partition("@")
    if not name:
        raise ValueError(f"a model reference looks like name@version, {ref!r} is given.")
    return name, version or None
