"""Several medgate nodes on one machine with the real engines: a two-node Ray cluster, a ``models``
node, and medgate nodes of other roles (``gateway,bridge`` by default) sharing one PostgreSQL, one
Mosquitto, one spool and results folder, a PACS (``storescp``) and a FHIR server
(:class:`peers.FhirRecorder`).

>>> with ClusterRig(tmp_path, postgres_url) as rig:          # doctest: +SKIP
...     rig.start()                                         # Ray, models node, node-a and node-b
...     port = rig.dicom_port("node-a")                     # C-STORE here
...     killed_at = rig.kill("node-a")                      # kill -9 of its process group (not Ray)
...     rig.partition_holders()                             # {'bridge/ward-a': 'node-b', ...}
...     rig.restart("node-a")

API (everything by pid, never by process name):

* :class:`RayCluster`: ``ray start --head`` and ``ray start --address`` (a second Ray node), each
  with a temporary folder and ports of its own; :attr:`RayCluster.address` for ``ray.address``.
* :class:`ClusterRig`: :meth:`~ClusterRig.start` (peers, Ray, the models node, every medgate
  node, in parallel where it can), :meth:`~ClusterRig.start_node`, :meth:`~ClusterRig.kill`
  (returns the wall time of the kill), :meth:`~ClusterRig.restart`, :meth:`~ClusterRig.stop`;
  :meth:`~ClusterRig.store` (a :class:`serving.store.Store` on the shared database, the caller
  closes it), :meth:`~ClusterRig.partition_holders`, :meth:`~ClusterRig.open_dispatches`,
  :meth:`~ClusterRig.watch_takeover`; ``pacs_dir``, ``fhir``, ``studies`` and ``vitals`` for
  :func:`fault_rig.assert_delivered_once`.
* ``node_env`` (per node id) adds environment variables to one node's process, e.g. libfaketime's.

Readiness of a node without HTTP: its ``state_dir/components.json`` (written every 2 s by the
server) says ``dicom`` and ``mqtt`` ``ok``; the cluster table lists it live.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import yaml

from kernel.cluster import ClusterStore
from kernel.database import open_database
from peers import Broker, FhirRecorder, broker, free_port, start_storescp, stop_process, wait_until
from server_process import ServerProcess
from serving.components import read_components
from serving.store import Store

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
#: Ray as every node of the test cluster sees it: one token (as nodes on several machines share it),
#: no usage report, a SIGTERM that stops a node at once.
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "ray-cluster-rig-test-token-000001",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
ADMIN_TOKEN = "cluster-rig-admin-token-00000001"
WARDS = ("ward-a", "ward-b", "ward-c", "ward-d", "ward-e", "ward-f")
LEASE_PREFIX = "bridge/"  # iomt.partitions.LEASE_PREFIX


def _processes_under(folder: str) -> list[int]:
    """Live processes whose command line names ``folder`` (one Ray node's processes)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if folder.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


class RayCluster:
    """Two Ray nodes on this machine: a head (``head_cpus`` CPUs, where the model replicas go) and a
    worker joined to it (``worker_cpus``), each in a temporary folder of its own under /tmp (Ray's
    socket paths have a length limit) with ports of its own."""

    def __init__(self, head_cpus: int = 4, worker_cpus: int = 0) -> None:
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._nodes: list[tuple[subprocess.Popen, str, Any]] = []

    def _start(self, name: str, args: list[str]) -> None:
        temp = tempfile.mkdtemp(prefix=f"mg-ray{name[0]}-", dir="/tmp")
        log_path = Path(temp) / f"{name}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen([RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--temp-dir", temp,
                                 "--block"], env={**os.environ, **RAY_ENV}, stdout=log, stderr=subprocess.STDOUT)
        self._nodes.append((proc, temp, log))
        wait_until(lambda: b"Ray runtime started" in log_path.read_bytes() or proc.poll() is not None,
                   timeout_s=90, interval_s=0.2)
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]

    def start(self) -> None:
        self._start("head", ["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus),
                             "--include-dashboard", "false"])
        ports = [f"--{flag}={free_port()}" for flag in (
            "node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port")]
        self._start("worker", ["--address", self.address, "--num-cpus", str(self.worker_cpus), *ports])

    def stop(self) -> None:
        for proc, temp, log in reversed(self._nodes):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            for pid in _processes_under(temp):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            log.close()
            shutil.rmtree(temp, ignore_errors=True)
        self._nodes.clear()


class MedgateNode(ServerProcess):
    """``medgate serve`` of a node without HTTP: ready when its ``components.json`` says every part
    it runs is ``ok`` (a bridge holding no partition counts as connected)."""

    def ready(self) -> bool:
        parts = read_components(Path(self.config["state_dir"])).get("components", {})
        return (bool(parts) and read_components(Path(self.config["state_dir"])).get("pid") == self.proc.pid
                and all(state == "ok" for state in parts.values()))

    @property
    def node_id(self) -> str:
        return self.config["node"]["id"]


@dataclass
class Takeover:
    """What :meth:`ClusterRig.watch_takeover` measured after one node's kill (seconds after it)."""

    victim: str
    partitions: list[str]  # the victim's partitions at the kill
    dispatches: list[tuple[str, str]]  # its unprocessed dispatches at the kill
    partitions_taken_s: float | None = None  # every one of them held by a live node again
    dispatches_claimed_s: float | None = None  # every one of them owned by another node
    dispatches_processed_s: float | None = None  # every one of them processed
    holders: dict[str, str] = field(default_factory=dict)  # partition -> its holder afterwards

    def as_dict(self) -> dict:
        return {"victim": self.victim, "partitions": self.partitions, "dispatches": len(self.dispatches),
                "partitions_taken_s": self.partitions_taken_s, "dispatches_claimed_s": self.dispatches_claimed_s,
                "dispatches_processed_s": self.dispatches_processed_s, "holders": self.holders}


class ClusterRig:
    """A models node and ``nodes`` medgate nodes of ``role`` on one Ray cluster, one PostgreSQL
    (``store_url``), one Mosquitto, one shared spool and results folder; short leases
    (``lease_s``: ``node.lease_s``, ``dicom.completion.lease_s`` and
    ``iomt.partition_lease_ttl_s``) so that a dead node's work moves within seconds."""

    def __init__(self, root: Path, store_url: str, *, nodes: Sequence[str] = ("node-a", "node-b"),
                 role: str = "gateway,bridge", wards: Sequence[str] = WARDS, lease_s: float = 6.0,
                 models: Sequence[str] = ("tb",), node_env: dict[str, dict[str, str]] | None = None) -> None:
        self.root, self.store_url = Path(root), store_url
        self.wards, self.lease_s = list(wards), lease_s
        self.node_env = node_env or {}
        self.studies: set[str] = set()
        self.vitals: set[tuple[str, datetime]] = set()
        self.ray = RayCluster()
        self.broker: Broker | None = None
        self.pacs_port, self.pacs_dir, self.pacs = free_port(), self.root / "pacs", None
        self.fhir = FhirRecorder(free_port())
        self.http_port = free_port()
        self.registry = self.root / "registry"
        self.registry.mkdir(parents=True, exist_ok=True)
        for model in models:
            link = self.registry / model
            if not link.exists():
                link.symlink_to(ROOT / "models" / model)
        self.shared = self.root / "shared"  # the spool and results every gateway mounts
        for folder in ("spool", "results"):
            (self.shared / folder).mkdir(parents=True, exist_ok=True)
        self.models = ServerProcess(self._config("models-1", "models"), self.root / "models-1", ready_timeout_s=240)
        self.nodes = {name: MedgateNode(self._config(name, role), self.root / name, ready_timeout_s=240)
                      for name in nodes}

    # -- configuration ---------------------------------------------------------------------------
    def _config(self, name: str, role: str) -> dict:
        state_dir = self.root / name / "var"
        config: dict[str, Any] = {
            "state_dir": str(state_dir), "models_root": str(self.registry),
            "node": {"id": name, "role": role, "lease_s": self.lease_s},
            "ray": {"address": self.ray.address}, "store": {"url": self.store_url},
            "http": {"port": self.http_port},
            "dicom": {"port": free_port(), "completion": {"quiet_period_s": 0.5, "lease_s": self.lease_s},
                      "storage": {"slot_pool_bytes": 0},
                      "routes": [{"models": ["tb"], "modality": ["DX", "CR"], "body_part": ["CHEST"]}]},
            "destinations": {"pacs": {"ae_title": "PACS", "port": self.pacs_port, "objects": ["sr"]}},
            "fhir": {"base_url": f"http://127.0.0.1:{self.fhir.port}/fhir"},
            "outbox": {"backoff_max_s": 5.0, "claim_lease_s": 2 * self.lease_s},  # a dead node's claims move soon
            "iomt": {"partitions": self.wards, "partition_lease_ttl_s": self.lease_s},
            "auth": {"tokens": [{"token": ADMIN_TOKEN, "role": "admin", "name": "test"}]},
        }
        if role != "models":
            for folder in ("spool", "results"):  # shared storage, at the same path on every node
                state_dir.mkdir(parents=True, exist_ok=True)
                link = state_dir / folder
                if not link.exists():
                    link.symlink_to(self.shared / folder)
        return config

    def _environment(self, server: ServerProcess, name: str) -> None:
        server.env.update(RAY_ENV, MEDGATE_CONFIG=str(server.config_path), **self.node_env.get(name, {}))
        server.env.pop("MEDGATE_STORE__URL", None)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Mosquitto, the PACS, the FHIR server, the Ray cluster, the models node, then every medgate
        node at once; returns when each is ready."""
        self.broker = broker(self.root, "allow_anonymous true", "persistence false")
        mqtt = {"url": f"mqtt://127.0.0.1:{self.broker.port}", "reconnect_min_s": 0.2, "reconnect_max_s": 2.0}
        for server in (self.models, *self.nodes.values()):
            server.config["mqtt"] = mqtt
        self.peers_up()
        self.ray.start()
        self._environment(self.models, "models-1")
        self.models.start()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for started in [pool.submit(self.start_node, name) for name in self.nodes]:
                started.result()

    def peers_up(self) -> None:
        self.pacs = start_storescp(self.pacs_port, self.pacs_dir)
        self.fhir.start()

    def start_node(self, name: str) -> None:
        """Start (or restart) medgate node ``name``; returns when it is ready."""
        node = self.nodes[name]
        self._environment(node, name)
        node.start()

    def kill(self, name: str) -> float:
        """kill -9 of node ``name``'s process group and every process under it (the Ray cluster stays);
        returns the wall time of the kill."""
        killed_at = time.time()
        self.nodes[name].kill()
        return killed_at

    def restart(self, name: str) -> None:
        """Start node ``name`` again on its state; on a new DICOM port when its port is still bound
        (the listening processes are printed)."""
        node = self.nodes[name]
        port = node.config["dicom"]["port"]
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                held = subprocess.run(["ss", "-tanp", f"sport = :{port}"], capture_output=True, text=True).stdout
                print(f"{name}: DICOM port {port} still bound after its kill ({exc}):\n{held}")
                node.config["dicom"]["port"] = free_port()
        self.start_node(name)

    def stop(self) -> None:
        """Stop every node (SIGINT), the models node, the Ray cluster and the peers; print the nodes'
        log tails."""
        for node in self.nodes.values():
            node.stop(timeout_s=60)
        self.models.stop(timeout_s=60)
        self.ray.stop()
        if self.pacs is not None:
            stop_process(self.pacs)
        self.fhir.stop()
        if self.broker is not None:
            self.broker.stop()
        for server in (*self.nodes.values(), self.models):
            print(f"--- {server.root.name}\n{server.log_tail(3000)}")

    def __enter__(self) -> "ClusterRig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading ---------------------------------------------------------------------------------
    def dicom_port(self, name: str) -> int:
        return self.nodes[name].config["dicom"]["port"]

    @property
    def dicom_ports(self) -> list[int]:
        return [self.dicom_port(name) for name in self.nodes]

    def store(self) -> Store:
        """The shared store (PostgreSQL); the caller closes it."""
        return Store(open_database(self.store_url))

    def partition_holders(self, cluster: ClusterStore | None = None) -> dict[str, str]:
        """Lease name (``bridge/<ward>``) -> its holder, for the unexpired leases (database clock)."""
        own = cluster is None
        cluster = cluster or ClusterStore(open_database(self.store_url))
        try:
            return {lease.name: lease.holder for lease in cluster.leases(LEASE_PREFIX)}
        finally:
            if own:
                cluster.database.close()

    def open_dispatches(self, store: Store | None = None) -> dict[tuple[str, str], str | None]:
        """(study, model) -> owner of every unprocessed dispatch."""
        own = store is None
        store = store or self.store()
        try:
            return {(r["study_uid"], r["model"]): r["owner"] for r in store.database.rows(
                "SELECT study_uid, model, owner FROM dicom_dispatches WHERE processed_at IS NULL")}
        finally:
            if own:
                store.close()

    def watch_takeover(self, victim: str, *, wait_for_dispatch_s: float = 0.0, timeout_s: float = 120.0) -> Takeover:
        """Kill node ``victim`` and measure how long the others take to hold its partitions and to
        claim and process its open dispatches.  ``wait_for_dispatch_s``: first wait up to that long
        for a moment when ``victim`` holds an open dispatch (looking every 20 ms), and kill then."""
        store = self.store()
        cluster = ClusterStore(store.database)
        try:
            deadline = time.monotonic() + wait_for_dispatch_s
            while True:
                dispatches = sorted(k for k, owner in self.open_dispatches(store).items() if owner == victim)
                if dispatches or time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            killed_at = self.kill(victim)
            partitions = sorted(lease.name for lease in cluster.leases(LEASE_PREFIX, include_expired=True)
                                if lease.holder == victim)
            result = Takeover(victim, partitions, dispatches)
            deadline = killed_at + timeout_s
            while time.time() < deadline:
                now = time.time() - killed_at
                holders = self.partition_holders(cluster)
                if result.partitions_taken_s is None and all(
                        holders.get(p) not in (None, victim) for p in partitions):
                    result.partitions_taken_s, result.holders = round(now, 2), holders
                rows = {(r["study_uid"], r["model"]): (r["owner"], r["processed_at"]) for r in store.database.rows(
                    "SELECT study_uid, model, owner, processed_at FROM dicom_dispatches WHERE owner IS NOT NULL")}
                if result.dispatches_claimed_s is None and all(
                        rows.get(k, (None, None))[1] is not None or rows.get(k, (victim,))[0] != victim
                        for k in dispatches):
                    result.dispatches_claimed_s = round(now, 2)
                if result.dispatches_processed_s is None and all(
                        rows.get(k, (None, None))[1] is not None for k in dispatches):
                    result.dispatches_processed_s = round(now, 2)
                if None not in (result.partitions_taken_s, result.dispatches_claimed_s,
                                result.dispatches_processed_s):
                    break
                time.sleep(0.2)
            return result
        finally:
            store.close()
