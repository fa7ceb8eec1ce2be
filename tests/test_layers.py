"""The layer contract over every import of every module (docs/architecture.md, "Layers").

Imports run one way: ``kernel`` at the side of everything, ``models`` at the bottom,
``dicom_gateway`` and ``iomt`` in the middle (neither importing the other), ``serving`` and
``training`` on top (neither importing the other), and the demo client (``demo``) above both.  Every ``import`` and ``from ... import`` is
read with :mod:`ast`, at module level and inside functions alike.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Third-party packages of the transport and runtime layers: DICOM, MQTT, Ray, HTTP.
TRANSPORTS = ("ray", "fastapi", "starlette", "uvicorn", "pydicom", "pynetdicom", "paho")
#: Package -> top-level names its modules must not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "kernel": ("models", "dicom_gateway", "iomt", "serving", "training", "demo") + TRANSPORTS,
    "models": ("dicom_gateway", "iomt", "serving", "training", "demo") + TRANSPORTS,
    "dicom_gateway": ("iomt", "serving", "training", "demo"),
    "iomt": ("dicom_gateway", "serving", "training", "demo"),
    "serving": ("training", "demo"),
    "training": ("serving", "demo"),
}
#: Imports against the contract that are still there, as (importing module, imported module).
#: The list only shrinks: a new violation fails, and so does a listed one that is gone.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_of(name: str) -> str:
    """The module of this repository an imported ``name`` lies in (``serving.store.Store`` ->
    ``serving.store``), or its top-level package for anything else (``ray.serve`` -> ``ray``)."""
    parts = name.split(".")
    while parts and not (ROOT.joinpath(*parts).with_suffix(".py").exists()
                         or (ROOT.joinpath(*parts) / "__init__.py").exists()):
        parts.pop()
    return ".".join(parts) if parts else name.split(".")[0]


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module that ``path`` (the module ``module``) imports, at any depth, relative imports
    resolved: ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(module_of(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.update(module_of(f"{name}.{alias.name}") for alias in node.names)
    return found


def violations() -> set[tuple[str, str]]:
    """(importing module, imported module) for every import against :data:`FORBIDDEN`."""
    found = set()
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found.update((module, name) for name in imported_modules(path, module)
                         if name.split(".")[0] in forbidden)
    return found


def test_imports_run_one_way():
    found = violations()
    new = sorted(found - KNOWN_VIOLATIONS)
    gone = sorted(KNOWN_VIOLATIONS - found)
    assert not new, f"imports against the layer contract (docs/architecture.md): {new}"
    assert not gone, f"fixed, remove from KNOWN_VIOLATIONS: {gone}"


def test_the_contract_sees_function_level_and_relative_imports(tmp_path):
    path = tmp_path / "worker.py"
    path.write_text("from . import sibling\n\ndef run():\n    from serving.store import Store\n"
                    "    import ray.serve\n")
    assert imported_modules(path, "iomt.worker") == {"iomt", "serving.store", "ray"}


def test_importing_the_layers_leaves_ray_auth_mode_alone():
    """Importing a package sets no Ray setting: the gateway and the bridge run without Ray."""
    code = ("import os, serving, serving.server, serving.config, dicom_gateway.scp, iomt.bridge, kernel.logs; "
            "print(os.environ.get('RAY_AUTH_MODE'))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "None"


def test_the_medgate_command_fixes_ray_auth_mode_before_ray_starts():
    code = ("import os, sys; from serving.cli.main import main; main(['check-config']); "
            "print(os.environ.get('RAY_AUTH_MODE'), 'ray' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "MEDGATE_CONFIG")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "token False"
