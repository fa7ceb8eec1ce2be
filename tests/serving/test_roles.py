"""Roles of a node (serving.roles) and what `medgate serve` starts for each (serving.server.Server.start)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from kernel.cluster import ClusterStore
from kernel.database import DATABASE_FILE, open_database
from serving.config import load_config
from serving.roles import ROLES, Component, Role, components_for, is_all, parse_roles, role_names
from serving import server as server_module
from serving.app import model_names
from serving.server import Server, wait_for_application

C = Component


@pytest.mark.parametrize("given, roles", [
    ("all", set(ROLES)),
    ("gateway", {Role.GATEWAY}),
    (" Bridge , gateway", {Role.GATEWAY, Role.BRIDGE}),
    ("gateway,gateway", {Role.GATEWAY}),
    (["models", Role.INGRESS], {Role.MODELS, Role.INGRESS}),
])
def test_roles_parse_from_all_one_or_a_comma_list(given, roles):
    assert parse_roles(given) == roles


@pytest.mark.parametrize("given, message", [
    ("web", "'web' is not a role"),
    ("", "must be all or a comma list of gateway, bridge, ingress, models"),
    ("all,models", "all already holds every role"),
])
def test_a_bad_role_names_itself_and_the_choices(given, message):
    with pytest.raises(ValueError, match=message):
        parse_roles(given)


@pytest.mark.parametrize("role, plan", [
    ("all", (C.MODELS, C.BRIDGE, C.OUTBOX, C.GATEWAY, C.INGRESS)),
    ("gateway", (C.MODEL_HANDLES, C.OUTBOX, C.GATEWAY)),
    ("bridge", (C.MODEL_HANDLES, C.BRIDGE, C.OUTBOX)),
    ("models", (C.MODELS,)),
    ("ingress", (C.INGRESS,)),
    ("gateway,bridge", (C.MODEL_HANDLES, C.BRIDGE, C.OUTBOX, C.GATEWAY)),
    ("models,gateway", (C.MODELS, C.OUTBOX, C.GATEWAY)),
    ("models,ingress", (C.MODELS, C.INGRESS)),
])
def test_each_role_starts_its_parts_in_order(role, plan):
    """Models (or their handles) before whatever calls them, the bridge before the outbox that
    delivers its alerts, the SCP last: nothing is accepted before there is somewhere to put it."""
    assert components_for(parse_roles(role)) == plan


def test_all_is_every_role_and_roles_are_recorded_in_one_order():
    assert is_all(parse_roles("gateway,bridge,ingress,models")) and not is_all(parse_roles("gateway"))
    assert role_names(parse_roles("models,gateway")) == ["gateway", "models"]


@pytest.mark.parametrize("role", ["all", "gateway", "bridge", "models", "ingress", "gateway,bridge"])
def test_server_start_runs_the_plan_of_its_roles_after_joining_the_cluster(tmp_path, monkeypatch, role):
    """Server.start with every part replaced: it joins the cluster table first, then calls one
    method per part of :func:`components_for`, in order, and leaves at stop."""
    called = []
    methods = {C.MODELS: "_start_models", C.MODEL_HANDLES: "_take_model_handles", C.BRIDGE: "_start_bridge",
               C.OUTBOX: "_start_outbox", C.GATEWAY: "_start_gateway", C.INGRESS: "_start_ingress"}
    for component, name in methods.items():
        monkeypatch.setattr(Server, name, lambda self, c=component: called.append(c))
    server = Server(load_config(state_dir=tmp_path / "var", node={"id": "node-a"}))
    server.roles = parse_roles(role)  # a role other than all needs PostgreSQL in the configuration
    try:
        server.start()
        [node] = server.cluster.nodes()
        assert (node.node_id, list(node.roles)) == ("node-a", role_names(server.roles))
        assert tuple(called) == components_for(server.roles)
    finally:
        server.stop()
    left = ClusterStore(open_database(tmp_path / "var" / DATABASE_FILE))
    try:
        assert left.nodes() == []
    finally:
        left.database.close()


class _Serve:
    """``ray.serve`` as far as :func:`wait_for_application` reads it: status() of one application."""

    def __init__(self, *statuses):
        self.statuses = list(statuses)

    def status(self):
        app = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return SimpleNamespace(applications={} if app is None else {"medgate": app})


def test_a_node_without_models_waits_for_the_application_and_names_what_it_saw(monkeypatch):
    monkeypatch.setattr(server_module.time, "sleep", lambda s: None)
    deploying = SimpleNamespace(status="DEPLOYING", deployments={"tb": None})
    running = SimpleNamespace(status="RUNNING", deployments={"tb": None, "ingress": None})
    wait_for_application(_Serve(None, deploying, running), "medgate", ["tb"], timeout_s=5)
    with pytest.raises(TimeoutError, match=r"not running .*\(application 'medgate' RUNNING, without \['nodule'\]\)"):
        wait_for_application(_Serve(running), "medgate", ["tb", "nodule"], timeout_s=0.05)


@pytest.mark.parametrize("offered", [{}, {"CPU": 2.0, "medgate_ingress": 1.0}])
def test_an_ingress_node_needs_its_ray_node_to_offer_the_ingress_resource(tmp_path, monkeypatch, offered):
    import ray

    settings = load_config(state_dir=tmp_path / "var", http={"ingress_resource": "medgate_ingress"})
    server = Server(settings)
    server.roles = parse_roles("ingress")
    running = SimpleNamespace(status="RUNNING", deployments={n: None for n in model_names()})
    monkeypatch.setattr(Server, "_join_ray", lambda self: _Serve(running))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "n1"))
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": "n0", "Resources": {"medgate_ingress": 1.0}},
                                               {"NodeID": "n1", "Resources": offered}])
    try:
        if offered:
            server._start_ingress()
        else:
            with pytest.raises(RuntimeError, match=r"offers no 'medgate_ingress' resource .* ray start "
                                                   r"--address=<head>:6379 --resources='\{\"medgate_ingress\": 1\}'"):
                server._start_ingress()
    finally:
        server.store.close()
