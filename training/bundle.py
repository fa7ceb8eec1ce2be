"""Write one registry version, ``<root>/<name>/<version>/``, in MONAI bundle form.

The folder receives ``model.onnx`` (exported and parity-checked by :mod:`training.export`),
``model.pt`` (torch weights + config, so ``medgate evaluate name@version`` can re-measure it),
the held-out ``metrics.json`` and plots, and last ``metadata.json`` (see :mod:`models.registry`
for its keys).  Everything is written to a hidden sibling folder first and renamed into place, so
an interrupted export never leaves a half-registered version.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from datetime import date
from importlib import metadata as pkg
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from torch import nn

from models.registry import METADATA_NAME, ModelManifest, ModelRegistry, file_sha256, semantic_version
from training.evaluate import save_evaluation
from training.export import OPSET, export_onnx
from training.torchscript import TORCHSCRIPT_NAME, save_torchscript
from training.tasks.base import Evaluation, Task

AUTHORS = ["medgate contributors"]
COPYRIGHT = "Copyright (c) medgate contributors; Apache-2.0"


def _version_of(package: str) -> str | None:
    try:
        return pkg.version(package)
    except pkg.PackageNotFoundError:
        return None


def _previous_changelog(root: Path, name: str) -> dict[str, str]:
    try:
        return dict(ModelRegistry(root).get(name).raw.get("changelog", {}))
    except (LookupError, ValueError):
        return {}


def build_metadata(task: Task, config: dict[str, Any], test: Evaluation, validation: Evaluation,
                   training: dict[str, Any], version: str, changelog: dict[str, str]) -> dict[str, Any]:
    """The ``metadata.json`` content except the file hashes (added by :func:`write_version`)."""
    own = dict(task.metadata(config, test))
    missing = [k for k in ("task", "inputs", "outputs", "intended_use") if k not in own]
    if "finding" not in own and "classes" not in own:
        missing.append("finding or classes")
    if missing:
        raise ValueError(f"task {task.name!r} metadata lacks {', '.join(missing)}.")
    if "NOT FOR CLINICAL USE" not in own["intended_use"]:
        raise ValueError(f"task {task.name!r} `intended_use` must say NOT FOR CLINICAL USE, "
                         f"{own['intended_use']!r} is given.")
    inputs, outputs = own.pop("inputs"), own.pop("outputs")
    data = config.get("data", {})
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": version,
        "changelog": changelog,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {k: v for k in ("onnx", "onnxruntime-gpu", "onnxruntime")
                                      if (v := _version_of(k))},
        "task": own.pop("task"),
        "description": own.pop("description", f"medgate {task.name} model"),
        "authors": AUTHORS,
        "copyright": COPYRIGHT,
        "data_source": own.pop("data_source", own.get("training_data", str(data.get("source")))),
        "data_type": own.pop("data_type", str(data.get("source"))),
        "intended_use": own.pop("intended_use"),
        "network_data_format": {"inputs": inputs, "outputs": outputs},
        "name": task.name,
        "file": "model.onnx",
        "weights_file": "model.pt",
        "operating_point": dict(test.operating_point),
        **own,
        "metrics": test.metrics,
        "validation_metrics": validation.metrics,
        "training": training,
        "created": date.today().isoformat(),
    }


def write_version(root: Path, task: Task, network: nn.Module, config: dict[str, Any], *, version: str,
                  test: Evaluation, validation: Evaluation, training: dict[str, Any],
                  check_inputs: list[tuple[torch.Tensor, ...]] = (), note: str | None = None) -> ModelManifest:
    """Export, parity-check and register ``network`` as ``<root>/<task.name>/<version>``.

    Parameters
    ----------
    root
        Registry root (``models/``).
    task, network, config
        The trained network and the config it was trained with.
    version
        New semantic version; an existing version is never overwritten.
    test, validation
        Held-out evaluation (recorded as ``metrics``, plots saved) and the validation one.
    training
        ``config``-independent run facts: ``steps``, ``seconds``, ``device``, ``command`` ...
    check_inputs
        Real validation batches for the ONNX parity check, besides the export example.
    note
        Changelog entry; a default one naming the data and metrics otherwise.
    """
    semantic_version(version)
    folder = Path(root) / task.name / version
    if folder.exists():
        raise FileExistsError(f"`version` {version} of {task.name} already exists at {folder}; pick a new one.")
    staging = folder.parent / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        network = network.cpu().eval()
        spec = task.export_spec(network, config)
        errors = export_onnx(spec, staging / "model.onnx", check_inputs)
        torch.save({"task": task.name, "config": config, "network": network.state_dict()}, staging / "model.pt")
        save_torchscript(spec, staging / TORCHSCRIPT_NAME)
        save_evaluation(test, staging, extra={"split": "test", "version": version})
        changelog = _previous_changelog(Path(root), task.name)
        auc = test.metrics.get("auc")
        changelog[version] = note or (f"trained by `{training.get('command', 'medgate train')}`"
                                      + (f"; held-out AUC {auc:.3f}" if isinstance(auc, float) else ""))
        meta = build_metadata(task, config, test, validation,
                              {**training, "config": config, "platform": platform.platform()}, version,
                              dict(sorted(changelog.items(), key=lambda kv: semantic_version(kv[0]))))
        meta["onnx"] = {"opset": OPSET, "parity_max_relative_error": errors, "parity_tolerance": 1e-4}
        meta["sha256"] = file_sha256(staging / "model.onnx")
        meta["weights_sha256"] = file_sha256(staging / "model.pt")
        meta["torchscript_sha256"] = file_sha256(staging / TORCHSCRIPT_NAME)
        (staging / METADATA_NAME).write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=float) + "\n",
                                             encoding="utf-8")
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = ModelRegistry(Path(root)).get(task.name, version)
    manifest.verify()
    return manifest
