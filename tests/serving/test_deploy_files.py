"""deploy/: every YAML parses, every MEDGATE_* variable it sets is a configuration key, the node
configuration is valid for each role, and the compose file, the RayService and the Kubernetes
manifests agree with it and with each other.  (Docker and Kubernetes are not run here.)"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from models.registry import ModelRegistry
from serving.app import INGRESS_RESOURCE_SHARE
from serving.config import CONFIG_ENV, ENV_PREFIX, Settings, load_config
from serving.http.forwarded import UVICORN_TRUST_NONE
from serving.roles import ROLES, Role

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CLUSTER_CONFIG = DEPLOY / "medgate.cluster.yaml"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
NODES = DEPLOY / "kubernetes" / "nodes.yaml"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
#: Variables medgate reads that are not configuration keys.
OTHER_MEDGATE_VARIABLES = {CONFIG_ENV}


def _documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _environment(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (name, value) an environment in ``node`` sets: compose ``environment`` mappings,
    Kubernetes ``env`` lists, Ray ``env_vars``; serveConfigV2 strings are read as YAML."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("environment", "env_vars") and isinstance(value, dict):
                yield from value.items()
            elif key == "env" and isinstance(value, list):
                yield from ((e["name"], e.get("value")) for e in value if isinstance(e, dict) and "name" in e)
            elif key == "serveConfigV2":
                yield from _environment(yaml.safe_load(value))
            else:
                yield from _environment(value)
    elif isinstance(node, list):
        for item in node:
            yield from _environment(item)


def _dockerfile_environment() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            found.update(re.findall(r"(\w+)=(\S+)", line))
    return found


def _settings_key(name: str) -> bool:
    """Whether ``MEDGATE_A__B`` names a key of :class:`Settings` (``a.b``)."""
    model: Any = Settings
    parts = name[len(ENV_PREFIX):].lower().split("__")
    for index, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            return bool(model.model_config.get("extra") == "allow")  # e.g. destinations.<name>
        annotation = fields[part].annotation
        candidates = get_args(annotation) if get_origin(annotation) in (Union, type(int | None)) else (annotation,)
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if index == len(parts) - 1:
            return True
        if nested is None:  # a mapping (class_codes) takes any key below; a scalar takes none
            return any(get_origin(c) is dict for c in candidates)
        model = nested
    return True


def _all_environment() -> list[tuple[Path, str, Any]]:
    found = [(path, name, value) for path in YAML_FILES for doc in _documents(path)
             for name, value in _environment(doc)]
    return found + [(DEPLOY / "Dockerfile", n, v) for n, v in _dockerfile_environment().items()]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_yaml_parses(path):
    assert _documents(path)


def test_the_key_check_tells_keys_from_others():
    assert _settings_key("MEDGATE_STORE__URL") and _settings_key("MEDGATE_DESTINATIONS__VIEWER__HOST")
    assert _settings_key("MEDGATE_CLASS_CODES__DERM") and _settings_key("MEDGATE_NODE__ID")
    assert not _settings_key("MEDGATE_STORE__URI") and not _settings_key("MEDGATE_NODE__ID__X")


def test_every_medgate_variable_set_in_deploy_is_a_configuration_key():
    names = {(path.relative_to(DEPLOY), name) for path, name, _ in _all_environment() if name.startswith(ENV_PREFIX)}
    assert {"MEDGATE_STORE__URL", "MEDGATE_NODE__ID", "MEDGATE_RAY__ADDRESS"} <= {n for _, n in names}
    unknown = sorted((str(p), n) for p, n in names if n not in OTHER_MEDGATE_VARIABLES and not _settings_key(n))
    assert not unknown, f"not configuration keys: {unknown}"


def test_ray_serve_s_proxy_trusts_no_forwarding_header_wherever_it_is_set():
    values = {value for _, name, value in _all_environment() if name == "FORWARDED_ALLOW_IPS"}
    assert values == {UVICORN_TRUST_NONE}


@pytest.mark.parametrize("role", [r.value for r in ROLES])
def test_the_cluster_configuration_is_valid_for_each_role(role, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    settings = load_config(CLUSTER_CONFIG, node={"role": role, "id": f"{role}-1"})
    assert settings.node.roles == {Role(role)} and settings.ray.address == "auto"
    assert settings.store.url.startswith("postgresql://") and settings.http.ingress_resource == "medgate_ingress"


def _compose() -> dict:
    [doc] = _documents(COMPOSE)
    return doc


def test_compose_runs_each_role_on_its_own_ray_node():
    services = _compose()["services"]
    assert {"postgres", "mosquitto", "ray-head", "gateway-1", "gateway-2", "bridge-1", "bridge-2", "ingress",
            "dicom-lb"} <= set(services)
    ingress_resource = load_config(CLUSTER_CONFIG).http.ingress_resource
    roles, ids = {}, []
    for name, service in services.items():
        script = " ".join(service.get("command") or [])
        match = re.search(r"exec medgate serve --role (\w+)$", script)
        if match is None:
            continue
        role = match[1]
        roles.setdefault(role, []).append(name)
        ids.append(service["environment"]["MEDGATE_NODE__ID"])
        assert service["environment"]["MEDGATE_STORE__URL"].startswith("postgresql://")
        assert service["environment"]["MEDGATE_RAY__ADDRESS"] == "auto"
        if role == "models":
            assert "ray start --head --port=6379" in script
        else:
            assert "ray start --address=ray-head:6379" in script and service["depends_on"]["ray-head"]
        if role == "ingress":
            assert f'--resources=\'{{"{ingress_resource}": 1}}\'' in script and "8000:8000" in service["ports"]
        if role in ("gateway", "ingress"):  # the spool and the result files are shared
            assert {"spool:/var/lib/medgate/spool", "results:/var/lib/medgate/results"} <= set(service["volumes"])
    assert {k: len(v) for k, v in roles.items()} == {"models": 1, "gateway": 2, "bridge": 2, "ingress": 1}
    assert len(set(ids)) == len(ids), ids


def test_compose_mounts_files_that_exist():
    for service in _compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and "secrets" not in source:
                assert (COMPOSE.parent / source).exists(), source


def test_the_rayservice_serves_every_model_and_places_the_ingress_by_its_resource():
    rayservice, http = _documents(RAYSERVICE)
    assert (rayservice["kind"], http["kind"]) == ("RayService", "Service")
    serve = ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    [app] = serve.applications
    assert app.import_path == "serving.serve_app:app" and serve.proxy_location == "EveryNode"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == set(ModelRegistry().names()) | {"ingress"}
    resource = load_config(CLUSTER_CONFIG).http.ingress_resource
    assert deployments["ingress"].ray_actor_options.resources == {resource: INGRESS_RESOURCE_SHARE}
    assert any(d.ray_actor_options.num_gpus for d in app.deployments), "no model asks for a GPU share"
    groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    offered = yaml.safe_load(yaml.safe_load(groups["ingress"]["rayStartParams"]["resources"]))
    assert offered == {resource: 1}
    [gpu] = [g for g in groups.values()
             if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu["groupName"] == "gpu"


def test_the_kubernetes_nodes_join_the_rayservice_head():
    rayservice = _documents(RAYSERVICE)[0]
    head = f"{rayservice['metadata']['name']}-head-svc:6379"
    token = rayservice["spec"]["rayClusterConfig"]["authOptions"]["secretName"]
    sets = {d["metadata"]["name"]: d for d in _documents(NODES) if d["kind"] == "StatefulSet"}
    assert set(sets) == {"medgate-gateway", "medgate-bridge"}
    for name, statefulset in sets.items():
        [container] = statefulset["spec"]["template"]["spec"]["containers"]
        script = " ".join(container["args"])
        assert f"ray start --address={head} --num-cpus=0" in script
        assert script.endswith(f"medgate serve --role {name.removeprefix('medgate-')}")
        env = {e["name"]: e for e in container["env"]}
        assert env["MEDGATE_NODE__ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == token
