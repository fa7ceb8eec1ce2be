"""The Serve application is built from the configuration: each model deployment gets its site options."""
from __future__ import annotations

from serving.app import build_app
from serving.config import load_config


def _model_options(app, name: str) -> dict:
    """The options a model deployment of ``app`` is bound with (its second init argument)."""
    models = app._bound_deployment.init_args[0]
    return models[name]._bound_deployment.init_args[1]


def test_class_codes_reach_the_model_deployment(tmp_path):
    code = {"value": "123456789", "scheme": "SCT", "meaning": "Dermatofibroma"}
    settings = load_config(None, state_dir=tmp_path, class_codes={"derm": {"df": code}})
    app = build_app(settings, versions={})
    assert _model_options(app, "derm")["class_codes"] == {"df": code}
    assert _model_options(app, "tb")["class_codes"] == {}



def test_the_ingress_version_changes_with_its_arguments_only(tmp_path):
    """``medgate models deploy`` re-runs the application: the same configuration keeps the running
    ingress replicas (its version is unchanged), another one replaces them."""
    from serving.app import build_app

    def version(**http) -> str:
        app = build_app(load_config(None, state_dir=tmp_path, http=http), versions={})
        return app._bound_deployment._version  # what `serve.run` reads

    assert version(timeout_s=30.0) == version(timeout_s=30.0)
    assert version(timeout_s=30.0) != version(timeout_s=31.0)
    pinned = build_app(load_config(None, state_dir=tmp_path, http={"timeout_s": 31.0}), versions={},
                       ingress_version="running-1")
    assert pinned._bound_deployment._version == "running-1"  # `medgate models deploy` keeps the server's
