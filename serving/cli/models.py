"""``medgate models list`` and ``medgate models deploy <name>@<version> [--shadow <version>]``.

``deploy`` checks the version against the registry (and its sha256), records it in
``state_dir/model_versions.json`` and, when a server is running, re-runs the Serve application
with the new ``user_config``: Ray Serve reconfigures the running replicas in place (load, warm up,
swap), so requests keep succeeding. Rolling back is the same command with the old version.
"""
from __future__ import annotations

import os

from models.registry import ModelRegistry
from serving.components import read_components
from serving.config import Settings
from serving.inference.versions import parse_ref, read_versions, write_versions


def list_models(settings: Settings) -> int:
    registry, deployed = ModelRegistry(), read_versions(settings.state_dir)
    for name in registry.names():
        current = deployed.get(name, {}).get("version") or registry.get(name).version
        print(f"{name}: versions {', '.join(registry.versions(name))}; deployed {current}")
    return 0


def deploy(settings: Settings, ref: str, shadow: str | None = None) -> int:
    name, version = parse_ref(ref)
    registry = ModelRegistry()
    manifest = registry.get(name, version)
    manifest.verify()
    entry = {"version": manifest.version}
    if shadow:
        shadow_manifest = registry.get(name, shadow)
        shadow_manifest.verify()
        entry["shadow_version"] = shadow_manifest.version
    versions = read_versions(settings.state_dir)
    versions[name] = entry
    write_versions(settings.state_dir, versions)
    status = read_components(settings.state_dir.resolve())
    if not status.get("ray_address"):
        print(f"{name}@{manifest.version} recorded; no running server: it is used at the next start")
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serving.app import APP_NAME, build_app

    ray.init(address=status["ray_address"], namespace="medgate", logging_level="WARNING", log_to_driver=False)
    try:
        serve.run(build_app(settings, versions), name=APP_NAME, route_prefix="/", blocking=False)
        handle = serve.get_deployment_handle(name, app_name=APP_NAME)
        info = handle.info.remote().result(timeout_s=120)
    finally:
        ray.shutdown()
    print(f"{name}: now serving {info['version']}" + (f", shadow {info['shadow_version']}" if shadow else ""))
    return 0 if info["version"] == manifest.version else 1
