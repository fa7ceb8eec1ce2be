"""The versioned model registry: ``<root>/<name>/<version>/manifest.json`` + the ONNX file.

Each model version is one folder named by its semantic version (``MAJOR.MINOR.PATCH``) holding
``manifest.json`` and the file the manifest names (``model.onnx``).  The manifest carries the
input specification, the operating threshold, the coded finding, held-out metrics, the intended
use and the SHA-256 of the ONNX file, which :meth:`ModelManifest.verify` checks before serving.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.finding import Concept

DEFAULT_ROOT = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


class ModelIntegrityError(RuntimeError):
    """A model file is missing or does not match the SHA-256 recorded in its manifest."""


class ModelNotFoundError(LookupError):
    """No model, or no such version of a model, in the registry."""


def semantic_version(version: str) -> tuple[int, int, int]:
    """``"1.10.2"`` -> ``(1, 10, 2)``; raise ``ValueError`` for anything else."""
    match = _SEMVER.match(version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"`version` must look like MAJOR.MINOR.PATCH, {version!r} is given.")
    return int(match[1]), int(match[2]), int(match[3])


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelManifest:
    """One model version as described by its ``manifest.json``.

    Attributes
    ----------
    name, version
        Model name (``"tb"``) and semantic version (``"1.0.0"``).
    path
        Absolute path of the ONNX file.
    sha256
        Expected hex SHA-256 of ``path``.
    input_name, input_size_px
        Name of the ONNX input and side of the square model input (see
        :func:`models.transforms.to_model_input`).
    threshold
        Operating point in (0, 1): ``probability >= threshold`` is a positive call.
    finding
        Coded concept the model reports.
    metrics
        Held-out evaluation, as recorded at training time.
    intended_use
        Intended-use statement; for generated-data models it says "NOT FOR CLINICAL USE".
    raw
        The whole manifest as loaded.
    """

    name: str
    version: str
    path: Path
    sha256: str
    input_name: str
    input_size_px: int
    threshold: float
    finding: Concept
    metrics: dict[str, Any]
    intended_use: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_file(cls, manifest_path: Path) -> ModelManifest:
        """Load and validate a ``manifest.json``."""
        manifest_path = Path(manifest_path)
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelNotFoundError(f"no manifest at {manifest_path}.") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{manifest_path} is not valid JSON: {exc}.") from None
        missing = [k for k in ("name", "version", "file", "sha256", "input", "threshold", "finding") if k not in data]
        if missing:
            raise ValueError(f"{manifest_path} lacks the key(s) {', '.join(missing)}.")
        semantic_version(data["version"])
        threshold = float(data["threshold"])
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"`threshold` in {manifest_path} must be within (0, 1), {threshold} is given.")
        size = data["input"].get("size_px")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"`input.size_px` in {manifest_path} must be a positive integer, {size!r} is given.")
        finding = data["finding"]
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            path=(manifest_path.parent / data["file"]).resolve(),
            sha256=str(data["sha256"]).lower(),
            input_name=str(data["input"].get("name", "image")),
            input_size_px=size,
            threshold=threshold,
            finding=Concept(value=str(finding["value"]), scheme=str(finding["scheme"]), meaning=str(finding["meaning"])),
            metrics=dict(data.get("metrics", {})),
            intended_use=str(data.get("intended_use", "")),
            raw=data,
        )

    def verify(self) -> None:
        """Recompute the SHA-256 of the ONNX file; raise :class:`ModelIntegrityError` on mismatch."""
        if not self.path.is_file():
            raise ModelIntegrityError(f"model file {self.path} of {self.name} {self.version} is missing.")
        actual = file_sha256(self.path)
        if actual != self.sha256:
            raise ModelIntegrityError(
                f"model file {self.path} has SHA-256 {actual}, but the manifest of {self.name} "
                f"{self.version} records {self.sha256}."
            )


class ModelRegistry:
    """Read-only view of the models stored under ``root``.

    Parameters
    ----------
    root
        Folder holding ``<name>/<version>/manifest.json``; the ``models`` package folder by default.
    """

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"`root` must be an existing folder, {self.root} is given.")

    def names(self) -> list[str]:
        """Names of the models that have at least one version."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._version_dirs(p))

    def versions(self, name: str) -> list[str]:
        """Versions of model ``name``, oldest first by semantic version."""
        folder = self._model_dir(name)
        versions = sorted(self._version_dirs(folder), key=semantic_version)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} has no versions under {folder}.")
        return versions

    def get(self, name: str, version: str | None = None) -> ModelManifest:
        """Manifest of ``name`` at ``version``, or at its latest version when ``version`` is ``None``."""
        available = self.versions(name)
        if version is None:
            version = available[-1]
        elif version not in available:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; available: {', '.join(available)}.")
        manifest = ModelManifest.from_file(self.root / name / version / MANIFEST_NAME)
        if (manifest.name, manifest.version) != (name, version):
            raise ValueError(
                f"manifest in {self.root / name / version} describes {manifest.name} {manifest.version}, "
                f"not {name} {version}."
            )
        return manifest

    def _model_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"`name` must be a plain model name, {name!r} is given.")
        folder = self.root / name
        if not folder.is_dir():
            raise ModelNotFoundError(f"no model {name!r} under {self.root}.")
        return folder

    @staticmethod
    def _version_dirs(folder: Path) -> list[str]:
        return [
            p.name for p in folder.iterdir()
            if p.is_dir() and _SEMVER.match(p.name) and (p / MANIFEST_NAME).is_file()
        ]
