"""The model deployment: one Ray Serve deployment per registered model, batching concurrent requests.

The served version lives in the deployment's ``user_config`` (``{"version": ..., "shadow_version":
..., "max_batch_size": ..., "batch_wait_timeout_s": ...}``; the last is the most a batch that is
not full waits for more requests, 0 by default: see :mod:`serving.inference.batcher`).  Changing it (``medgate models deploy
tb@1.1.0``) makes Ray Serve call :meth:`ModelDeployment.reconfigure` on the running replicas: the
new version is loaded and warmed up beside the old one, then swapped in with one assignment, so
requests keep succeeding throughout.  A shadow version runs on the same batches; its results are
logged and counted, never returned, and compared with the current version's
(:meth:`ModelServer.shadow_report`, :mod:`serving.inference.shadow`).  Promoting the shadow
(``medgate models promote``) makes the loaded shadow the active version without loading it again.

A multi-class model's classes are reported (:meth:`Loaded.info`, read by the imaging pipeline to
code its findings) with the site's codes in place of the model card's where the deployment
options give ``class_codes`` (configuration ``class_codes.<model>``:
:func:`models.coding_scheme.map_classes`), checked when the version is loaded.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from models.coding_scheme import map_classes
from models.registry import ModelIntegrityError, ModelManifest, ModelRegistry, file_sha256
from serving.inference.batcher import DynamicBatcher
from serving.inference.engines import create_engine
from serving.inference.runners import make_runner
from serving.inference.shadow import compare

log = logging.getLogger("medgate.serving")

#: Batch-size histogram buckets reported by :meth:`ModelDeployment.stats`.
BATCH_HISTORY = 1000
#: Batches kept in the shadow log (per replica), what :meth:`ModelServer.shadow_report` compares.
SHADOW_HISTORY = 100


@dataclass
class Loaded:
    """One loaded model version: manifest, engine, runner and the classes it reports (the card's,
    with the site's ``class_codes`` applied; None for a single-finding model)."""

    manifest: ModelManifest
    engine: Any
    runner: Any
    classes: list[dict[str, Any]] | None = None

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {"name": m.name, "version": m.version, "engine": self.engine.name,
                "device": self.engine.device, "input_size_px": m.input_size_px, "threshold": m.threshold,
                "finding": {"value": m.finding.value, "scheme": m.finding.scheme, "meaning": m.finding.meaning}
                if m.finding else None, "classes": self.classes,
                "operating_point": m.raw.get("operating_point"), "intended_use": m.intended_use}


def site_classes(manifest: ModelManifest, class_codes: dict[str, dict[str, str]] | None) -> list[dict] | None:
    """The classes ``manifest`` reports with the site's ``class_codes`` (class name -> code) applied.

    Raises
    ------
    ValueError
        ``class_codes`` given for a model without classes, or naming a class it does not have.
    """
    classes = manifest.raw.get("classes")
    if not class_codes:
        return classes
    if not classes:
        raise ValueError(f"class_codes.{manifest.name} is given, but {manifest.name} {manifest.version} "
                         f"reports one finding, no classes.")
    try:
        return map_classes(classes, class_codes)
    except ValueError as exc:
        raise ValueError(f"class_codes.{manifest.name} ({manifest.name} {manifest.version}): {exc}") from None


def variant_file(manifest: ModelManifest, variant: str | None) -> str:
    """The ONNX file of ``variant`` of ``manifest`` (its ``engine_variants`` entry, SHA-256 checked), or
    the version's own ``file`` when ``variant`` is None; :class:`ValueError` for a variant it lacks."""
    if not variant:
        return manifest.path.name
    variants = manifest.raw.get("engine_variants") or {}
    if variant not in variants:
        raise ValueError(f"{manifest.name} {manifest.version} has no engine variant {variant!r} "
                         f"(it has {sorted(variants) or 'none'}): serving.variants.{manifest.name}")
    entry = variants[variant]
    path = manifest.folder / entry["file"]
    if not path.is_file() or file_sha256(path) != str(entry["sha256"]).lower():
        raise ModelIntegrityError(f"engine variant {variant!r} of {manifest.name} {manifest.version}: {path} is "
                                  f"missing or does not match the SHA-256 in its metadata.")
    return str(entry["file"])


def load_version(model: str, version: str | None, options: dict[str, Any]) -> Loaded:
    """Load, verify (sha256) and warm up ``model@version`` (latest when None); ``options``
    ``class_codes``: the site's codes of its classes (:func:`site_classes`); ``variant``: the engine
    variant of its card to run (:func:`variant_file`); ``intra_op_threads``: CPU threads."""
    manifest = ModelRegistry().get(model, version)
    manifest.verify()
    classes = site_classes(manifest, options.get("class_codes"))
    engine = create_engine(manifest.path.parent, variant_file(manifest, options.get("variant")),
                           engine=options.get("engine", "auto"),
                           device=options.get("device", "auto"), precision=options.get("precision", "fp32"),
                           max_batch_size=options.get("max_batch_size", 16),
                           intra_op_threads=options.get("intra_op_threads"))
    loaded = Loaded(manifest, engine, make_runner(engine, manifest), classes)
    engine.warmup()
    return loaded


class ModelServer:
    """One model's versions, engine calls, shadow runs and counters; no Ray (see ModelDeployment)."""

    def __init__(self, model: str, options: dict[str, Any] | None = None) -> None:
        self.model = model
        self.options = dict(options or {})
        self.active: Loaded | None = None
        self.shadow: Loaded | None = None
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=BATCH_HISTORY)
        self.requests = self.failures = self.ongoing = self.shadow_runs = 0
        self.shadow_log: collections.deque[dict] = collections.deque(maxlen=SHADOW_HISTORY)

    def reconfigure(self, user_config: dict[str, Any]) -> dict[str, Any]:
        """Load the configured version (and shadow) beside the current one, then swap them in."""
        options = {**self.options, **(user_config or {})}
        version = options.get("version") or ModelRegistry().get(self.model).version
        if self.active is None or self.active.manifest.version != version:
            promoted = self.shadow is not None and self.shadow.manifest.version == version
            loaded = self.shadow if promoted else load_version(self.model, version, options)
            previous, self.active = self.active, loaded
            log.info("%s: serving version %s (was %s)", self.model, loaded.manifest.version,
                     previous.manifest.version if previous else "none")
        shadow = options.get("shadow_version")
        if not shadow:
            self.shadow = None
        elif self.shadow is None or self.shadow.manifest.version != shadow:
            self.shadow = load_version(self.model, shadow, options)
        return options

    def shadow_report(self) -> dict[str, Any]:
        """The shadow version against the active one over the shadow log (:func:`serving.inference.shadow.compare`)."""
        active, shadow = self.active, self.shadow
        report = compare(list(self.shadow_log), active.manifest.version, shadow.manifest.version if shadow else None,
                         active.manifest.threshold, shadow.manifest.threshold if shadow else None)
        return {"model": self.model, "batches": len(self.shadow_log), "shadow_runs": self.shadow_runs, **report}

    def info(self) -> dict[str, Any]:
        info = self.active.info()
        info["shadow_version"] = self.shadow.manifest.version if self.shadow else None
        return info

    def stats(self) -> dict[str, Any]:
        gpu_bytes = 0
        if self.active and self.active.engine.device == "cuda":
            import torch

            gpu_bytes = int(torch.cuda.memory_allocated())
        return {"model": self.model, "version": self.active.manifest.version, "requests": self.requests,
                "failures": self.failures, "ongoing": self.ongoing, "batch_sizes": list(self.batch_sizes),
                "shadow_runs": self.shadow_runs, "gpu_memory_bytes": gpu_bytes}

    def run_batch(self, items: list[Any]) -> list[dict[str, Any]]:
        """Run one batch on the active version (and the shadow, whose replies are only logged)."""
        active, shadow = self.active, self.shadow
        start = time.perf_counter()
        replies = active.runner.run(items)
        elapsed_ms = (time.perf_counter() - start) * 1000
        if len(replies) != len(items):
            raise RuntimeError(f"{self.model}: runner returned {len(replies)} replies for {len(items)} items")
        self.batch_sizes.append(len(items))
        if shadow is not None:
            shadow_replies = shadow.runner.run(items)
            self.shadow_runs += len(items)
            self.shadow_log.append({"version": shadow.manifest.version, "active_version": active.manifest.version,
                                    "batch_size": len(items),
                                    "replies": [_summary(r) for r in shadow_replies],
                                    "active": [_summary(r) for r in replies]})
            log.info("%s shadow %s: %s", self.model, shadow.manifest.version, self.shadow_log[-1]["replies"])
        meta = {"model": self.model, "version": active.manifest.version, "batch_size": len(items),
                "inference_ms": round(elapsed_ms, 3)}
        return [{**meta, **reply} for reply in replies]


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, max_queued_requests=256)
class ModelDeployment:
    """Serves one model, batching concurrent requests with a :class:`DynamicBatcher` (a request that
    finds the model idle runs at once); each request is one preprocessed item."""

    def __init__(self, model: str, options: dict[str, Any] | None = None) -> None:
        self.core = ModelServer(model, options)
        self.batcher = DynamicBatcher(self.core.run_batch)
        if not self.core.options.get("defer_load"):
            self.reconfigure({})

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        options = self.core.reconfigure(user_config)
        self.batcher.configure(int(options.get("max_batch_size", 16)),
                               float(options.get("batch_wait_timeout_s", 0.0)))

    def info(self) -> dict[str, Any]:
        return self.core.info()

    def stats(self) -> dict[str, Any]:
        return self.core.stats()

    def shadow_results(self) -> list[dict]:
        return list(self.core.shadow_log)

    def shadow_report(self) -> dict[str, Any]:
        return self.core.shadow_report()

    async def __call__(self, item: Any) -> dict[str, Any]:
        core = self.core
        core.requests += 1
        core.ongoing += 1
        try:
            return await self.batcher.submit(item)
        except Exception:
            core.failures += 1
            raise
        finally:
            core.ongoing -= 1


def _summary(reply: dict[str, Any]) -> dict[str, Any]:
    """Small, JSON-friendly view of a reply for the shadow log (scalars and small arrays only)."""
    out = {}
    for key, value in reply.items():
        array = np.asarray(value) if not isinstance(value, (dict, list, str)) else None
        if array is not None and array.size <= 16:
            out[key] = array.round(4).tolist()
    return out
