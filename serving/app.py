"""The Ray Serve application: one :class:`ModelDeployment` per registered model plus the ingress.

``serve build serving.app:app_builder -o serve_config.yaml`` writes a Serve config for a Ray
cluster (replicas, autoscaling, GPU fractions are then edited there); ``medgate serve`` runs the
same application locally with :func:`build_app`.
"""
from __future__ import annotations

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

APP_NAME = "medgate"


def model_names() -> list[str]:
    """Every model of the registry (``models_root``, :func:`models.registry.default_root`): each is
    deployed; how it is fed and what it yields is its folder's serving spec (:mod:`models.spec`)."""
    return ModelRegistry().names()


def build_app(settings: Settings, versions: dict[str, dict[str, Any]] | None = None) -> Application:
    cfg = settings.serving
    versions = read_versions(settings.state_dir) if versions is None else versions
    options = {"engine": cfg.engine, "device": cfg.device, "precision": cfg.precision,
               "max_batch_size": cfg.max_batch_size, "defer_load": True}
    models = {}
    for name in model_names():
        user_config = {"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
                       **versions.get(name, {})}
        models[name] = ModelDeployment.options(
            name=name, user_config=user_config, num_replicas=cfg.replicas,
            max_ongoing_requests=cfg.max_ongoing_requests, max_queued_requests=cfg.max_queued_requests,
            ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        ).bind(name, {**options, "class_codes": _class_codes(settings, name)})
    limits = {"max_upload_bytes": settings.http.max_upload_bytes, "timeout_s": settings.http.timeout_s,
              "max_image_pixels": settings.http.max_image_pixels,
              "cookie_max_age_s": settings.auth.cookie_max_age_s, "dicom": stow_settings(settings),
              "patient_identity": _identity_dict(settings), "store_url": settings.store.url,
              "destinations": {name: list(d.objects) for name, d in settings.destinations.named().items()},
              "hl7": settings.hl7.model_dump(mode="json"),  # where an upload's ORU^R01 goes
              "fhir_base_url": settings.fhir.base_url if settings.fhir.send_reports else None,
              "web": {"trusted_proxies": list(settings.http.trusted_proxies),
                      "public_base_url": settings.http.public_base_url}}
    http = settings.http
    ingress = Ingress.options(num_replicas=http.ingress_replicas, max_ongoing_requests=http.ingress_max_ongoing_requests,
                              ray_actor_options={"num_cpus": http.ingress_num_cpus})
    return ingress.bind(models, str(settings.state_dir.resolve()), limits, token_digests(settings))


def _class_codes(settings: Settings, model: str) -> dict[str, dict[str, Any]]:
    """The site's codes for ``model``'s classes (``class_codes``), as plain data for the deployment."""
    return {name: code.model_dump() for name, code in settings.class_codes.get(model, {}).items()}


def _identity_dict(settings: Settings) -> dict[str, Any]:
    identity = patient_identity(settings)
    return {"issuers": dict(identity.issuers), "unqualified_system": identity.unqualified_system}


def app_builder(args: dict[str, str]) -> Application:
    """Builder for ``serve build`` / ``serve run``: ``args`` may name ``config`` (a medgate YAML)."""
    return build_app(load_config(args.get("config")))
