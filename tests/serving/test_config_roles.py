"""node.* and ray.* configuration: role, node id grammar, Ray address, what a role needs; `--role`;
a node id held by a live process refuses `medgate serve`, one of a dead process of this machine does not."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from kernel.cluster import ClusterStore, NodeIdConflict
from kernel.database import DATABASE_FILE, open_database
from serving.config import ConfigError, host_node_id, load_config
from serving.roles import Role
from serving.server import free_dead_holder

PG = {"url": "postgresql://medgate@db.example:5432/medgate"}
MEDGATE = [sys.executable, "-m", "serving.cli"]


def test_defaults_are_one_machine_named_after_the_host(monkeypatch):
    monkeypatch.delenv("MEDGATE_CONFIG", raising=False)
    s = load_config()
    assert (s.node.role, s.node.roles, s.ray.address) == ("all", set(Role), None)
    assert s.node.id == host_node_id() and 15 <= s.node.lease_s <= 30


@pytest.mark.parametrize("host, node_id", [
    ("ward-3.hospital.local", "ward-3.hospital.local"),
    ("_gpu box #2", "gpu-box--2"),
    ("...", "medgate"),
    ("x" * 80, "x" * 64),
])
def test_the_host_name_is_made_a_node_id(host, node_id):
    assert host_node_id(host) == node_id


@pytest.mark.parametrize("overrides, key, message", [
    ({"node": {"id": "-gateway"}}, "node.id", "node id must match"),
    ({"node": {"id": "a" * 65}}, "node.id", "node id must match"),
    ({"node": {"id": "gw 1"}}, "node.id", "node id must match"),
    ({"node": {"role": "web"}}, "node.role", "'web' is not a role"),
    ({"node": {"lease_s": 0}}, "node.lease_s", "greater than 0"),
    ({"ray": {"address": "ray://head:10001"}}, "ray.address", "Ray Client addresses"),
    ({"ray": {"address": "head"}}, "ray.address", "auto or host:port"),
    ({"ray": {"address": "head:0"}}, "ray.address", "auto or host:port"),
    ({"http": {"ingress_resource": "GPU type"}}, "http.ingress_resource", "custom resource name"),
    ({"node": {"role": "gateway"}}, "node.role gateway needs store.url", "postgresql"),
    ({"node": {"role": "ingress"}, "ray": {"address": "auto"}}, "node.role ingress needs store.url", "PostgreSQL"),
    ({"node": {"role": "gateway"}, "store": PG}, "node.role gateway needs ray.address", "models node"),
    ({"node": {"role": "bridge"}, "store": PG, "ray": {"address": "auto"}}, "node.role bridge needs mqtt.url",
     "embedded broker"),
])
def test_bad_node_and_ray_settings_name_the_key(overrides, key, message):
    with pytest.raises(ConfigError) as err:
        load_config(**overrides)
    assert key in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("overrides", [
    {"node": {"role": "models"}},  # a models node alone may keep SQLite
    {"node": {"role": "models"}, "ray": {"address": "auto"}},
    {"node": {"role": "gateway"}, "store": PG, "ray": {"address": "10.0.0.5:6379"}},
    {"node": {"role": "bridge"}, "store": PG, "ray": {"address": "ray-head:6379"}, "mqtt": {"url": "mqtt://b:1883"}},
    {"node": {"role": "ingress"}, "store": PG, "ray": {"address": "[fd00::5]:6379"},
     "http": {"ingress_resource": "medgate_ingress"}},
    {"node": {"role": "models,gateway", "id": "gpu-1"}, "store": PG},
])
def test_roles_with_what_they_need_are_valid(overrides):
    s = load_config(**overrides)
    assert s.node.roles == {Role(r) for r in s.node.role.split(",")}


def test_the_role_is_read_from_the_environment_and_the_role_option_wins(tmp_path):
    env = {**os.environ, "MEDGATE_NODE__ROLE": "gateway", "MEDGATE_NODE__ID": "gw-1",
           "MEDGATE_STORE__URL": PG["url"], "MEDGATE_RAY__ADDRESS": "auto"}
    env.pop("MEDGATE_CONFIG", None)
    out = subprocess.run(MEDGATE + ["check-config"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"role": "gateway"' in out.stdout and '"id": "gw-1"' in out.stdout
    # `serve --role` ranks above the environment: a role the configuration refuses is reported
    refused = subprocess.run(MEDGATE + ["serve", "--role", "bridge"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "node.role bridge needs mqtt.url" in refused.stderr


def test_explicit_settings_rank_above_the_environment(monkeypatch):
    monkeypatch.setenv("MEDGATE_DICOM__PORT", "2104")
    assert load_config(dicom={"port": 2105}).dicom.port == 2105
    assert load_config().dicom.port == 2104


# -- one node id, one process ------------------------------------------------------------------------
def _cluster(state_dir):
    state_dir.mkdir(parents=True, exist_ok=True)
    return ClusterStore(open_database(state_dir / DATABASE_FILE))


def test_serve_refuses_a_node_id_held_by_a_live_process_naming_it(tmp_path):
    """A second `medgate serve` on the same state with the same node id stops before opening anything."""
    state = tmp_path / "var"
    cluster = _cluster(state)
    try:
        cluster.join("ward-node", ["gateway"], 30.0)  # this process, heartbeating now
        env = {k: v for k, v in os.environ.items() if k != "MEDGATE_CONFIG"}
        env.update(MEDGATE_STATE_DIR=str(state), MEDGATE_NODE__ID="ward-node")
        started = time.monotonic()
        out = subprocess.run(MEDGATE + ["serve"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 3, out.stderr[-2000:]
        assert "refusing to start: node id 'ward-node' is held by another process" in out.stderr
        assert f"host {socket.gethostname()!r}, pid {os.getpid()}" in out.stderr
        assert time.monotonic() - started < 60  # refused before Ray or any port was started
        [node] = cluster.nodes()
        assert node.pid == os.getpid()  # the refused process did not take (nor remove) the row
    finally:
        cluster.database.close()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_node_id_left_by_a_dead_process_of_this_machine_is_free_at_once_on_sqlite(tmp_path):
    """A server killed (a crash, a power cut) restarts at once on its SQLite state: its row's
    process is gone, so it is not a conflict."""
    cluster = _cluster(tmp_path / "var")
    try:
        cluster.join("ward-node", ["gateway"], 30.0, pid=_dead_pid())
        cluster.acquire("dispatch/1.2.3", "ward-node", 30.0)
        with pytest.raises(NodeIdConflict):
            cluster.join("ward-node", ["gateway"], 30.0)
        free_dead_holder(cluster, "ward-node", 30.0, same_machine=True)
        assert cluster.join("ward-node", ["gateway"], 30.0).pid == os.getpid()
        assert cluster.holder("dispatch/1.2.3") is None  # the dead process's leases were released
    finally:
        cluster.database.close()


def test_a_live_process_or_another_host_keeps_its_node_id(tmp_path):
    cluster = _cluster(tmp_path / "var")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cluster.join("live", ["gateway"], 30.0, pid=sleeper.pid)
        cluster.join("elsewhere", ["gateway"], 30.0, host="another-host", pid=_dead_pid())
        for node_id in ("live", "elsewhere"):
            free_dead_holder(cluster, node_id, 30.0, same_machine=True)
            with pytest.raises(NodeIdConflict, match=node_id):
                cluster.join(node_id, ["gateway"], 30.0)
    finally:
        sleeper.kill()
        sleeper.wait()
        cluster.database.close()


def test_on_postgresql_a_dead_local_holder_is_waited_out(postgres_url):
    """Another machine may carry this host name: its heartbeat is waited out, not removed."""
    cluster = ClusterStore(open_database(postgres_url))
    try:
        cluster.join("ward-node", ["gateway"], 2.0, pid=_dead_pid())
        started = time.monotonic()
        free_dead_holder(cluster, "ward-node", 2.0, same_machine=False)
        assert 0.5 < time.monotonic() - started < 4.0
        assert cluster.join("ward-node", ["gateway"], 2.0).pid == os.getpid()
    finally:
        cluster.database.close()
