"""The Ray Serve application: one deployment per model plus the HTTP ingress."""
from __future__ import annotations

from ray.serve import Application

from serving.config import Settings
from serving.deployments import ImageClassifier
from serving.ingress import Ingress

APP_NAME = "medgate"
#: Models served by this build of the application.
IMAGE_MODELS = ("tb",)


def build_app(settings: Settings) -> Application:
    cfg = settings.serving
    models = {
        name: ImageClassifier.options(
            name=name, ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        ).bind(name, max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s)
        for name in IMAGE_MODELS
    }
    return Ingress.bind(models, str(settings.state_dir.resolve()))
