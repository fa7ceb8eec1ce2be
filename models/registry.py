"""The versioned model registry: ``<root>/<name>/<version>/metadata.json`` + the ONNX file.

Each model version is one folder named by its semantic version (``MAJOR.MINOR.PATCH``) laid out
as a MONAI bundle: ``metadata.json`` uses the bundle metadata keys (``version``, ``changelog``,
``monai_version``, ``pytorch_version``, ``numpy_version``, ``required_packages_version``,
``task``, ``description``, ``authors``, ``copyright``, ``data_source``, ``data_type``,
``intended_use``, ``network_data_format`` with ``inputs`` / ``outputs``) plus medgate's own:
``name``, ``file`` (the ONNX file, ``model.onnx``), its ``sha256`` (checked by
:meth:`ModelManifest.verify` before serving), ``threshold`` / ``operating_point``, ``finding``
(one coded concept) or ``classes`` (a list of them), held-out ``metrics`` and ``training``
(config, steps, seconds, device).  The folder may also hold the torch weights (``model.pt``,
named by ``weights_file``), plots and the evaluation.  :mod:`training.bundle` writes versions.

How a model is served (input kind, preprocessing, reply, result objects) is declared once per model
folder (``<root>/<name>/serving.json``, :mod:`models.spec`), read through :attr:`ModelManifest.serving`.

The registry root is this package's folder unless the environment names another in
``MEDGATE_MODELS_ROOT`` (:data:`ROOT_ENV`: the configuration's ``models_root``, which ``medgate
serve`` exports to every process it starts, Ray's workers included).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from models.finding import Concept
from models.spec import ServingSpec, load_spec

DEFAULT_ROOT = Path(__file__).resolve().parent
#: The environment variable naming another registry root (the configuration key ``models_root``).
ROOT_ENV = "MEDGATE_MODELS_ROOT"
METADATA_NAME = "metadata.json"
MANIFEST_NAME = METADATA_NAME  # the file that describes a version
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


def _concept(data: Any, where: str) -> Concept:
    if not isinstance(data, dict) or not all(k in data for k in ("value", "scheme", "meaning")):
        raise ValueError(f"{where} must be a coded concept with value, scheme and meaning, {data!r} is given.")
    return Concept(value=str(data["value"]), scheme=str(data["scheme"]), meaning=str(data["meaning"]))


@dataclass(frozen=True)
class ModelManifest:
    """One model version as described by its ``metadata.json``.

    Attributes
    ----------
    name, version
        Model name (``"tb"``) and semantic version (``"1.0.0"``).
    path
        Absolute path of the ONNX file.
    sha256
        Expected hex SHA-256 of ``path``.
    input_name, input_size_px
        Name of the first ONNX input and, for square image inputs, its side (see
        :func:`models.transforms.to_model_input`); ``None`` where the input is not an image.
    threshold
        Operating point in (0, 1) of a single-finding model (``probability >= threshold`` is
        positive); ``None`` for a multi-class model.
    finding
        Coded concept a single-finding model reports; ``None`` for a multi-class model.
    classes
        Coded concepts of a multi-class model, in output order; empty otherwise.
    metrics
        Held-out evaluation, as recorded at training time.
    intended_use
        Intended-use statement; for generated-data models it says "NOT FOR CLINICAL USE".
    raw
        The whole metadata as loaded.
    """

    name: str
    version: str
    path: Path
    sha256: str
    input_name: str
    input_size_px: int | None
    threshold: float | None
    finding: Concept | None
    metrics: dict[str, Any]
    intended_use: str
    classes: tuple[Concept, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def folder(self) -> Path:
        """The version folder."""
        return self.path.parent

    @property
    def input_spec(self) -> dict[str, Any]:
        """The first input's ``network_data_format.inputs`` entry (channels, size, shape, ...)."""
        return dict(self.raw["network_data_format"]["inputs"][self.input_name])

    @cached_property
    def serving(self) -> ServingSpec:
        """How the model is served (:func:`models.spec.load_spec`: this version's metadata, else
        the model folder's ``serving.json``)."""
        return load_spec(self.folder.parent, self.raw)

    @property
    def operating_point(self) -> dict[str, Any]:
        """Threshold(s) and how they were chosen."""
        return dict(self.raw.get("operating_point", {"threshold": self.threshold}))

    @classmethod
    def from_file(cls, metadata_path: Path) -> ModelManifest:
        """Load and validate a ``metadata.json``."""
        metadata_path = Path(metadata_path)
        try:
            data = json.loads(metadata_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelNotFoundError(f"no metadata at {metadata_path}.") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{metadata_path} is not valid JSON: {exc}.") from None
        missing = [k for k in ("name", "version", "file", "sha256", "network_data_format", "intended_use")
                   if k not in data]
        if "finding" not in data and "classes" not in data:
            missing.append("finding or classes")
        if missing:
            raise ValueError(f"{metadata_path} lacks the key(s) {', '.join(missing)}.")
        semantic_version(data["version"])
        inputs = data["network_data_format"].get("inputs") if isinstance(data["network_data_format"], dict) else None
        if not isinstance(inputs, dict) or not inputs:
            raise ValueError(f"`network_data_format.inputs` in {metadata_path} must name at least one input, "
                             f"{inputs!r} is given.")
        input_name, spec = next(iter(inputs.items()))
        size = spec.get("size_px")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"`size_px` of input {input_name!r} in {metadata_path} must be a positive integer, "
                             f"{size!r} is given.")
        threshold = data.get("threshold")
        if "finding" in data:
            if threshold is None or not 0.0 < float(threshold) < 1.0:
                raise ValueError(f"`threshold` in {metadata_path} must be within (0, 1), {threshold!r} is given.")
            threshold = float(threshold)
        classes = tuple(_concept(c, f"`classes[{i}]` in {metadata_path}") for i, c in enumerate(data.get("classes", [])))
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            path=(metadata_path.parent / data["file"]).resolve(),
            sha256=str(data["sha256"]).lower(),
            input_name=str(input_name),
            input_size_px=size,
            threshold=threshold,
            finding=_concept(data["finding"], f"`finding` in {metadata_path}") if "finding" in data else None,
            metrics=dict(data.get("metrics", {})),
            intended_use=str(data["intended_use"]),
            classes=classes,
            raw=data,
        )

    def verify(self) -> None:
        """Recompute the SHA-256 of the ONNX file; raise :class:`ModelIntegrityError` on mismatch."""
        if not self.path.is_file():
            raise ModelIntegrityError(f"model file {self.path} of {self.name} {self.version} is missing.")
        actual = file_sha256(self.path)
        if actual != self.sha256:
            raise ModelIntegrityError(
                f"model file {self.path} has SHA-256 {actual}, but the metadata of {self.name} "
                f"{self.version} records {self.sha256}."
            )


def default_root() -> Path:
    """The registry root: ``$MEDGATE_MODELS_ROOT`` (:data:`ROOT_ENV`) when set, else the ``models``
    package folder."""
    value = os.environ.get(ROOT_ENV, "").strip()
    return Path(value) if value else DEFAULT_ROOT


def registered(name: str, version: str) -> ModelManifest:
    """The manifest of ``name`` ``version`` in the registry at :func:`default_root`, read once per
    process and root (a version folder does not change once written).

    Raises
    ------
    ModelNotFoundError
        The registry holds no such model or version.
    """
    return _registered(str(default_root()), name, version)


@lru_cache(maxsize=128)
def _registered(root: str, name: str, version: str) -> ModelManifest:
    return ModelRegistry(Path(root)).get(name, version)


def parse_reference(reference: str) -> tuple[str, str | None]:
    """``"tb@1.1.0"`` -> ``("tb", "1.1.0")``; ``"tb"`` -> ``("tb", None)``."""
    if not isinstance(reference, str) or reference.count("@") > 1:
        raise ValueError(f"`model` must be NAME or NAME@VERSION, {reference!r} is given.")
    name, _, version = reference.partition("@")
    if version:
        semantic_version(version)
    return name, version or None


class ModelRegistry:
    """Read-only view of the models stored under ``root``.

    Parameters
    ----------
    root
        Folder holding ``<name>/<version>/metadata.json``; by default :func:`default_root`.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
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
        """Manifest of ``name`` at ``version``, or at its latest version when ``version`` is ``None``.

        ``name`` may also be ``"NAME@VERSION"`` (then ``version`` must be ``None`` or the same).
        """
        if isinstance(name, str) and "@" in name:
            name, pinned = parse_reference(name)
            if version is not None and version != pinned:
                raise ValueError(f"`version` {version!r} contradicts the reference {name}@{pinned}.")
            version = pinned
        available = self.versions(name)
        if version is None:
            version = available[-1]
        elif version not in available:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; available: {', '.join(available)}.")
        manifest = ModelManifest.from_file(self.root / name / version / MANIFEST_NAME)
        if (manifest.name, manifest.version) != (name, version):
            raise ValueError(
                f"metadata in {self.root / name / version} describes {manifest.name} {manifest.version}, "
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
