"""``medgate models list | deploy | promote | rollback``: which registered version each model serves.

* ``deploy <name>@<version> [--shadow <version>]`` checks the version(s) against the registry (and
  the sha256) and serves it; ``deploy <name> --shadow <version>`` keeps the version now deployed (the
  one recorded, else the newest registered below the shadow) and runs the shadow beside it on the
  same requests, its results logged and compared (``GET /v1/models/<name>/shadow``), never returned.
* ``promote <name>``: the shadow becomes the served version; the one it replaces is kept for rollback.
* ``rollback <name>``: back to the version served before the last deploy or promote.

Each is recorded in ``state_dir/model_versions.json`` (``version``, ``shadow_version``, ``previous``:
the versions served before, oldest first, and ``changed``: what, when, by whom) and is one row of the
audit log (action ``execute``, the model version's FHIR Device as the resource).  When a server is
running the Serve application is re-run with the new ``user_config``: Ray Serve reconfigures the
running replicas in place (load, warm up, swap; a promoted shadow is already loaded), so requests
keep succeeding.
"""
from __future__ import annotations

import argparse
import getpass
import os
from datetime import datetime, timezone
from typing import Any

from kernel.database import store_location
from models.registry import ModelRegistry, semantic_version
from serving.components import read_components
from serving.config import Settings
from serving.fhir.report import device_resource
from serving.governance.audit import AuditLog
from serving.inference.versions import parse_ref, read_versions, write_versions

COMMANDS = ("models",)
#: The audit action of a change of served version (:data:`serving.governance.audit.ACTIONS`).
AUDIT_ACTION = "execute"
#: Versions kept in ``previous`` for rollback.
MAX_PREVIOUS = 20


def add_commands(sub: argparse._SubParsersAction) -> None:
    models_sub = sub.add_parser("models", help="list registered models; deploy, promote or roll back a version"
                                ).add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="registered versions and the deployed one")
    deploy_cmd = models_sub.add_parser("deploy", help="serve <name>@<version> without downtime")
    deploy_cmd.add_argument("ref", help="name@version, e.g. tb@1.1.0; name alone keeps the deployed version")
    deploy_cmd.add_argument("--shadow", help="also run this version on the same requests; results logged only")
    promote_cmd = models_sub.add_parser("promote", help="the shadow version becomes the served one")
    promote_cmd.add_argument("name")
    rollback_cmd = models_sub.add_parser("rollback", help="back to the version served before")
    rollback_cmd.add_argument("name")


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.models_command == "list":
            return list_models(settings)
        if args.models_command == "deploy":
            return deploy(settings, args.ref, args.shadow)
        if args.models_command == "promote":
            return promote(settings, args.name)
        return rollback(settings, args.name)
    except (LookupError, ValueError, RuntimeError) as exc:
        print(f"medgate: {exc}")
        return 2


def list_models(settings: Settings) -> int:
    registry, deployed = ModelRegistry(), read_versions(settings.state_dir)
    for name in registry.names():
        entry = deployed.get(name, {})
        current = entry.get("version") or registry.get(name).version
        shadow = f", shadow {entry['shadow_version']}" if entry.get("shadow_version") else ""
        print(f"{name}: versions {', '.join(registry.versions(name))}; deployed {current}{shadow}")
    return 0


def _checked(registry: ModelRegistry, name: str, version: str | None) -> str:
    manifest = registry.get(name, version)
    manifest.verify()
    return manifest.version


def _current(registry: ModelRegistry, name: str, entry: dict[str, Any], shadow: str | None) -> str | None:
    """The version now deployed: the recorded one, else the newest registered below ``shadow``."""
    if entry.get("version"):
        return entry["version"]
    below = [v for v in registry.versions(name)
             if shadow is None or semantic_version(v) < semantic_version(shadow)]
    return below[-1] if below else None


def deploy(settings: Settings, ref: str, shadow: str | None = None) -> int:
    name, version = parse_ref(ref)
    registry, versions = ModelRegistry(), read_versions(settings.state_dir)
    entry = versions.get(name, {})
    if version is None:
        version = _current(registry, name, entry, shadow)
        if version is None:
            raise LookupError(f"{name} has no version below the shadow {shadow} to serve beside it; "
                              f"name one: medgate models deploy {name}@<version> --shadow {shadow}")
    version = _checked(registry, name, version)
    if shadow:
        shadow = _checked(registry, name, shadow)
        if shadow == version:
            raise ValueError(f"the shadow must differ from the served version, {name} {version} is given for both")
    previous = list(entry.get("previous", []))
    if entry.get("version") and entry["version"] != version:
        previous.append(entry["version"])
    what = f"deploy {name} {version}" + (f" with shadow {shadow}" if shadow else "")
    return _change(settings, versions, name, version, shadow, previous, what)


def promote(settings: Settings, name: str) -> int:
    versions = read_versions(settings.state_dir)
    entry = versions.get(name, {})
    shadow = entry.get("shadow_version")
    if not shadow:
        raise LookupError(f"{name} has no shadow version to promote (deployed: {entry.get('version') or 'none recorded'}); "
                          f"first: medgate models deploy {name} --shadow <version>")
    shadow = _checked(ModelRegistry(), name, shadow)
    previous = list(entry.get("previous", [])) + [entry["version"]]
    return _change(settings, versions, name, shadow, None, previous,
                   f"promote {name} shadow {shadow} over {entry['version']}")


def rollback(settings: Settings, name: str) -> int:
    versions = read_versions(settings.state_dir)
    entry = versions.get(name, {})
    previous = list(entry.get("previous", []))
    if not previous:
        raise LookupError(f"{name} has no previous version to roll back to (deployed: "
                          f"{entry.get('version') or 'none recorded'})")
    version = _checked(ModelRegistry(), name, previous.pop())
    return _change(settings, versions, name, version, None, previous,
                   f"rollback {name} from {entry.get('version')} to {version}")


def _change(settings: Settings, versions: dict, name: str, version: str, shadow: str | None,
            previous: list[str], what: str) -> int:
    """Record the new entry, audit it, apply it to a running server."""
    who = getpass.getuser()
    entry: dict[str, Any] = {"version": version}
    if shadow:
        entry["shadow_version"] = shadow
    entry["previous"] = previous[-MAX_PREVIOUS:]
    entry["changed"] = {"what": what, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "by": who}
    versions[name] = entry
    write_versions(settings.state_dir, versions)
    log = AuditLog(store_location(settings.store.url, settings.state_dir.resolve()))
    try:
        log.record(who=who, role="operator", action=AUDIT_ACTION, resource_type="Device",
                   resource_id=device_resource(name, version)["id"], client="local", query=f"models {what}",
                   detail=f"{name} now {version}" + (f", shadow {shadow}" if shadow else "")
                          + (f"; previous {', '.join(entry['previous'])}" if entry["previous"] else ""))
    finally:
        log.close()
    return _apply(settings, versions, name, version, shadow)


def _apply(settings: Settings, versions: dict, name: str, version: str, shadow: str | None) -> int:
    # this machine's server, or the cluster that ``ray.address`` joins (a node of another role)
    running = read_components(settings.state_dir.resolve())
    address = running.get("ray_address") or settings.ray.address
    if not address:
        print(f"{name}@{version}" + (f" (shadow {shadow})" if shadow else "")
              + " recorded; no running server: it is used at the next start")
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serving.app import APP_NAME, build_app

    ray.init(address=address, namespace="medgate", logging_level="WARNING", log_to_driver=False)
    try:
        # the running ingress stays as it is (its version as the server recorded it)
        serve.run(build_app(settings, versions, ingress_version=running.get("ingress_version")), name=APP_NAME,
                  route_prefix="/", blocking=False)
        handle = serve.get_deployment_handle(name, app_name=APP_NAME)
        info = handle.info.remote().result(timeout_s=120)
    finally:
        ray.shutdown()
    print(f"{name}: now serving {info['version']}"
          + (f", shadow {info['shadow_version']}" if info.get("shadow_version") else ""))
    return 0 if (info["version"], info.get("shadow_version")) == (version, shadow) else 1
