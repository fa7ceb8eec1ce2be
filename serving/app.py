"""The Ray Serve application: one :class:`ModelDeployment` per registered model plus the ingress.

``serve build serving.app:app_builder -o serve_config.yaml`` writes a Serve config for a Ray
cluster (replicas, autoscaling, GPU fractions are then edited there); ``medgate serve`` runs the
same application with :func:`build_app`, on a Ray of its own or, on the ``models`` node
(:mod:`serving.roles`), on the Ray cluster of ``ray.address``.

On a cluster the ingress replicas read what the other nodes write: the stores in PostgreSQL
(``store.url``), the spool and the result files under ``state_dir`` on storage every node mounts at
the same path, and the nodes' state in the cluster table (docs/deployment.md).  With
``http.ingress_resource`` they run only on the Ray nodes offering that custom resource.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ray.serve import Application

from models.registry import ModelRegistry
from serving.config import Settings, load_config
from serving.fhir.report import patient_identity
from serving.http.auth import token_digests
from serving.http.ingress import Ingress
from serving.http.stow import stow_settings
from serving.inference.deployments import ModelDeployment
from serving.inference.versions import read_versions
from serving.roles import is_all

APP_NAME = "medgate"
#: The packages whose sources make the ingress's version (:func:`version_of_ingress`).
SOURCE_PACKAGES = ("serving", "models", "kernel", "dicom_gateway", "iomt")
#: What one ingress replica takes of ``http.ingress_resource``: a node offering 1 holds up to 100.
INGRESS_RESOURCE_SHARE = 0.01


def model_names() -> list[str]:
    """Every model of the registry (``models_root``, :func:`models.registry.default_root`): each is
    deployed; how it is fed and what it yields is its folder's serving spec (:mod:`models.spec`)."""
    return ModelRegistry().names()


def build_app(settings: Settings, versions: dict[str, dict[str, Any]] | None = None,
              ingress_version: str | None = None) -> Application:
    """The application; ``ingress_version`` pins the ingress deployment's version: ``medgate models
    deploy`` passes the running server's (``components.json``), so a model deploy never replaces the
    ingress, whatever its own process's configuration says."""
    cfg = settings.serving
    versions = read_versions(settings.state_dir) if versions is None else versions
    options = {"engine": cfg.engine, "device": cfg.device, "precision": cfg.precision,
               "max_batch_size": cfg.max_batch_size, "intra_op_threads": cfg.intra_op_threads, "defer_load": True}
    models = {}
    for name in model_names():
        user_config = {"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
                       **versions.get(name, {})}
        models[name] = ModelDeployment.options(
            name=name, user_config=user_config, num_replicas=cfg.replicas,
            max_ongoing_requests=cfg.max_ongoing_requests, max_queued_requests=cfg.max_queued_requests,
            ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        ).bind(name, {**options, "variant": cfg.variants.get(name), "class_codes": _class_codes(settings, name)})
    limits = {"max_upload_bytes": settings.http.max_upload_bytes, "timeout_s": settings.http.timeout_s,
              "max_image_pixels": settings.http.max_image_pixels,
              "cookie_max_age_s": settings.auth.cookie_max_age_s, "dicom": stow_settings(settings),
              "patient_identity": _identity_dict(settings), "store_url": settings.store.url,
              "destinations": {name: list(d.objects) for name, d in settings.destinations.named().items()},
              "hl7": settings.hl7.model_dump(mode="json"),  # where an upload's ORU^R01 goes
              "fhir_base_url": settings.fhir.base_url if settings.fhir.send_reports else None,
              "web": {"trusted_proxies": list(settings.http.trusted_proxies),
                      "public_base_url": settings.http.public_base_url},
              # nodes of some roles each: /readyz reads the cluster table, not a components.json beside it
              "cluster_lease_s": None if is_all(settings.node.roles) else settings.node.lease_s}
    http = settings.http
    actor = {"num_cpus": http.ingress_num_cpus}
    if http.ingress_resource is not None:
        actor["resources"] = {http.ingress_resource: INGRESS_RESOURCE_SHARE}
    args = (str(settings.state_dir.resolve()), limits, token_digests(settings))
    ingress = Ingress.options(num_replicas=http.ingress_replicas, max_ongoing_requests=http.ingress_max_ongoing_requests,
                              ray_actor_options=actor)
    # Ray Serve 2.60 gives a deployment without a version a random one at each `serve.run`, so every
    # `medgate models deploy` (which re-runs the application with new model versions) replaced the
    # ingress replicas too; with http.proxy direct the new replica then found http.port held by the
    # draining old one.  `Deployment.options(version=)` is gone from the public API; the attribute
    # `serve.run` reads is set instead, from the ingress's arguments and code.
    ingress._version = ingress_version or version_of_ingress(sorted(models), *args)
    return ingress.bind(models, *args)


def version_of_ingress(*args: Any) -> str:
    """The ingress deployment's version: its arguments and the sources it runs, hashed; the same
    configuration and code keep the running ingress, any change replaces it."""
    digest = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode())
    root = Path(__file__).resolve().parents[1]
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _class_codes(settings: Settings, model: str) -> dict[str, dict[str, Any]]:
    """The site's codes for ``model``'s classes (``class_codes``), as plain data for the deployment."""
    return {name: code.model_dump() for name, code in settings.class_codes.get(model, {}).items()}


def _identity_dict(settings: Settings) -> dict[str, Any]:
    identity = patient_identity(settings)
    return {"issuers": dict(identity.issuers), "unqualified_system": identity.unqualified_system}


def app_builder(args: dict[str, str]) -> Application:
    """Builder for ``serve build`` / ``serve run``: ``args`` may name ``config`` (a medgate YAML)."""
    return build_app(load_config(args.get("config")))
