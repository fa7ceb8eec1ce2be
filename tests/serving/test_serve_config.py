"""The committed Serve config (for `serve deploy` on a Ray cluster) is valid and serves every model."""
from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from models.registry import ModelRegistry

CONFIG = Path(__file__).resolve().parents[2] / "serving" / "serve_config.yaml"


def test_serve_config_is_valid_and_lists_every_registered_model():
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    app = schema.applications[0]
    assert app.import_path == "serving.serve_app:app"
    names = {d.name for d in app.deployments}
    assert set(ModelRegistry().names()) | {"ingress"} <= names
    for deployment in app.deployments:
        if deployment.name != "ingress":
            assert "max_batch_size" in deployment.user_config
            assert deployment.ray_actor_options.num_gpus is not None
