"""``medgate serve``: start the parts of this node's roles in one process tree, stop them cleanly.

A node runs the roles of ``node.role`` (:mod:`serving.roles`; ``all``, the default, is every part
on one machine).  It first joins the cluster table (:class:`kernel.leases.Membership`: a second
process started with a live node's ``node.id`` refuses to start, naming it), then starts, in order
(:func:`serving.roles.components_for`): Ray and the Serve application (models, HTTP ingress) or the
models' handles from the Ray cluster, the MQTT broker (embedded unless ``mqtt.url`` is set) and
bridge, the outbox, the imaging pipeline, then the DICOM SCP, so nothing is accepted before there is
somewhere to put it.  SIGINT/SIGTERM stop them in reverse, and the node leaves the cluster last.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time

from dicom_gateway.scp import StorageScp
from dicom_gateway.scu import send_files
from dicom_gateway.ledger import LOCAL_NODE
from dicom_gateway.wiring import build_scp
from iomt.bridge import VitalsBridge, broker_address
from iomt.hl7.wiring import build_listener
from iomt.risk import ray_predictor
from iomt.wiring import build_bridge, build_partitioned_bridge
from kernel import heap
from kernel.cluster import ClusterStore
from kernel.database import open_database, store_location
from kernel.delivery_errors import PermanentDeliveryError, TransientDeliveryError
from kernel.leases import Membership
from kernel.state_permissions import private_folder, restrict_umask, secure_tree
from models.registry import ROOT_ENV, ModelRegistry
from models.spec import InputKind
from serving.components import STATUS_FILE
from serving.cds.api import CDS_SECTION_ENV
from serving.config import Settings, is_postgresql
from serving.delivery.fhir_sender import FhirSender
from serving.delivery.hl7_sender import Hl7Sender
from serving.delivery.outbox import Outbox
from serving.delivery.outbox_db import open_outbox_db
from serving.fhir.report import patient_identity
from serving.http.auth import ADMIN_TOKEN_FILE, ensure_admin_token
from serving.http.dicomweb_index import IndexWorker
from serving.http.forwarded import UVICORN_TRUST_NONE
from serving.http.proxy import check_port_free, proxy_environment, start_options
from serving.imaging.pipeline import ImagingPipeline
from serving.imaging.results import HL7_KIND
from serving.roles import Component, Role, components_for, is_all, role_names
from serving.store import Store

log = logging.getLogger("medgate.server")

PACS = "pacs"
#: Ray namespace of medgate's drivers (the server, ``medgate models deploy``).
RAY_NAMESPACE = "medgate"
#: How long a node without the models role waits for the models node's application at start.
APPLICATION_WAIT_S = 600.0
#: Ray Serve's status of an application that serves (``ray.serve.schema.ApplicationStatus``).
RUNNING = "RUNNING"


class Server:
    """The parts of this node's roles (``node.role``; all of them by default) for one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = private_folder(settings.state_dir.resolve())
        fixed = secure_tree(self.state_dir)  # an install from before files were made owner-only
        if fixed:
            log.warning("state_dir %s: %d file(s) or folder(s) were readable by other users; now "
                        "owner-only (files 0600, folders 0700)", self.state_dir, fixed)
        # one database, the SQLite file under state_dir or store.url's PostgreSQL: the owner stores on it
        self.store = Store(open_database(store_location(settings.store.url, self.state_dir)))
        self.broker = None
        self.bridge: VitalsBridge | None = None
        self.retention = None
        self.hl7 = None  # iomt.hl7.listener.MllpListener when hl7.port is set
        self.scp: StorageScp | None = None
        self.pipeline = None
        self.dicomweb_index: IndexWorker | None = None
        self.outbox: Outbox | None = None
        self.node_id = settings.node.id
        self.roles = settings.node.roles
        self.cluster: ClusterStore | None = None
        self.membership: Membership | None = None
        self.handles: dict = {}  # model name -> its Serve deployment handle
        self._stop = threading.Event()
        self.ray_address: str | None = None
        self.started_at = time.time()

    # -- delivery senders ----------------------------------------------------------------------
    def _send_dicom(self, destination: str, payload: dict) -> None:
        dest = self.settings.destinations.named().get(destination)
        if dest is None:  # fixed by configuration, then `medgate outbox retry`
            raise PermanentDeliveryError(f"destination {destination!r} is not configured")
        send_files(payload["paths"], ae_title=dest.ae_title, host=dest.host, port=dest.port,
                   calling_ae_title=self.settings.dicom.ae_title)

    def _send_mqtt(self, topic: str, payload: dict) -> None:
        if self.bridge is None:
            raise TransientDeliveryError("the MQTT bridge is not running")
        self.bridge.publish(topic, payload)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Join the cluster table, then start what this node's roles run, in
        :func:`serving.roles.components_for` order.

        Raises
        ------
        kernel.cluster.NodeIdConflict
            another live process holds ``node.id``: nothing was started.
        """
        self._join_cluster()
        starters = {Component.MODELS: self._start_models, Component.MODEL_HANDLES: self._take_model_handles,
                    Component.BRIDGE: self._start_bridge, Component.OUTBOX: self._start_outbox,
                    Component.GATEWAY: self._start_gateway, Component.INGRESS: self._start_ingress}
        for component in components_for(self.roles):
            starters[component]()
        self.write_status()
        heap.settle()
        log.info("medgate ready: node %s (%s)%s", self.node_id,
                 ", ".join(role_names(self.roles)), "".join(f"; {part}" for part in self._ready_parts()))

    def _join_cluster(self) -> None:
        """Join the cluster table (on a connection of its own), refusing a live node's id."""
        cfg = self.settings
        self.cluster = ClusterStore(open_database(store_location(cfg.store.url, self.state_dir)))
        free_dead_holder(self.cluster, self.node_id, cfg.node.lease_s, same_machine=not is_postgresql(cfg.store.url))
        membership = Membership(self.cluster, self.node_id, role_names(self.roles), cfg.node.lease_s)
        membership.start()  # NodeIdConflict: not ours to leave at stop
        self.membership = membership

    def _open_outbox(self) -> Outbox:
        """The delivery outbox (its worker starts with :meth:`_start_outbox`)."""
        if self.outbox is None:
            cfg = self.settings
            senders = {"dicom": self._send_dicom, "mqtt": self._send_mqtt}
            if cfg.fhir.base_url:
                senders["fhir"] = FhirSender(cfg.fhir.base_url)
            # always there: an item left for a destination since removed is dead at once, naming it
            senders[HL7_KIND] = Hl7Sender(cfg.hl7.named())
            # a node attempts only what it can send: result files are where the gateway role runs (a
            # bridge node may not mount them), alerts need a bridge's MQTT session; the rest wait for one
            unable = ({"dicom"} if Role.GATEWAY not in self.roles else set()) \
                | ({"mqtt"} if Role.BRIDGE not in self.roles else set())
            self.outbox = Outbox(open_outbox_db(cfg.store.url, self.store, cfg.outbox.claim_lease_s), senders,
                                 delivers=None if is_all(self.roles) else set(senders) - unable, **cfg.outbox.model_dump(exclude={"claim_lease_s"}))
        return self.outbox

    def _start_models(self) -> None:
        """The ``models`` role: deploy the Serve application (on a local Ray, or the cluster's)."""
        self.handles = self._start_ray()

    def _take_model_handles(self) -> None:
        """A node without the ``models`` role: the handles of the models deployed on the cluster."""
        self.handles = self._cluster_handles()

    def _start_bridge(self) -> None:
        """The ``bridge`` role: the MQTT broker (embedded unless ``mqtt.url``), the vitals bridge
        with its risk scorer (the model whose serving spec takes windows), the HL7 listener when
        ``hl7.port`` is set, and vitals retention."""
        cfg = self.settings
        if cfg.mqtt.url is None:
            from iomt.broker import EmbeddedBroker

            _, port, _ = broker_address(cfg.mqtt.url, cfg.mqtt.embedded_port, cfg.mqtt.embedded_host)
            self.broker = EmbeddedBroker(port, cfg.mqtt.embedded_host)
            self.broker.start()
        scorer = window_model(list(self.handles))
        vitals = ray_predictor(self.handles[scorer]) if scorer else None
        if cfg.iomt.partitions:  # several bridge nodes share the wards by lease (iomt/partitions.py)
            self.bridge = build_partitioned_bridge(cfg, self.store.vitals, self._open_outbox(), self.cluster,
                                                   self.node_id, vitals, role=Role.BRIDGE.value)
        else:
            self.bridge = build_bridge(cfg, self.store.vitals, self._open_outbox(), vitals)
        self.bridge.start()
        if self.bridge.risk is not None:
            self.bridge.risk.start()
        if cfg.hl7.port is not None:  # ADT and PCD-01 over MLLP, on the bridge's device registry (docs/hl7.md)
            self.hl7 = build_listener(cfg, self.store.vitals, self.outbox, self.bridge.registry, self.bridge.risk)
            self.hl7.start()
        if cfg.iomt.retention_hours:
            from iomt.retention import VitalsRetention

            self.retention = VitalsRetention(self.store.vitals, cfg.iomt.retention_hours, resources=self.store)
            self.retention.start()

    def _start_outbox(self) -> None:
        self._open_outbox().start()

    def _start_gateway(self) -> None:
        """The ``gateway`` role: the imaging pipeline, the DICOMweb index worker, then the DICOM SCP
        (its study assembler submits complete studies to the pipeline)."""
        cfg = self.settings
        self.pipeline = ImagingPipeline(
            self.store, self._open_outbox(), self.handles, self.state_dir / "results",
            destinations={name: list(d.objects) for name, d in cfg.destinations.named().items()},
            fhir_base_url=cfg.fhir.base_url if cfg.fhir.send_reports else None,
            identity=patient_identity(cfg), hl7=cfg.hl7, node_id=self._gateway_node(),
            lease_s=cfg.dicom.completion.lease_s)
        self.pipeline.start()
        self.dicomweb_index = IndexWorker(self.store)  # QIDO-RS headers read as objects arrive
        self.dicomweb_index.start()
        self.scp = build_scp(cfg.dicom, self.store.gateway, self.state_dir / "spool", self.pipeline.submit,
                             known_models=self.handles, node_id=self._gateway_node())
        self.scp.start()

    def _gateway_node(self) -> str:
        """The owner of this node's dispatch leases and slot folder: ``node.id`` on a cluster; one
        node with every role keeps :data:`dicom_gateway.ledger.LOCAL_NODE`, so an existing install's
        dispatches and slot folder stay its own."""
        return LOCAL_NODE if is_all(self.roles) else self.node_id

    def _start_ingress(self) -> None:
        """The ``ingress`` role.  With ``models`` on this node the application deployed here holds
        the ingress; alone, this node's Ray must offer ``http.ingress_resource`` (when set) so the
        ingress replicas and Ray Serve's HTTP proxy run here, and the application must be up."""
        if Role.MODELS in self.roles:
            return
        serve = self._join_ray()
        resource = self.settings.http.ingress_resource
        if resource is not None:
            import ray

            here = ray.get_runtime_context().get_node_id()
            offered = next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == here), {})
            if offered.get(resource, 0) <= 0:
                raise RuntimeError(
                    f"node.role ingress: this machine's Ray node offers no {resource!r} resource "
                    f"(http.ingress_resource), so no ingress replica can run here; start it with "
                    f"ray start --address=<head>:6379 --resources='{{\"{resource}\": 1}}' (docs/deployment.md)")
        from serving.app import APP_NAME, model_names

        wait_for_application(serve, APP_NAME, model_names(), APPLICATION_WAIT_S)

    def _ready_parts(self) -> list[str]:
        """What this node serves, for the start's log line."""
        cfg, parts = self.settings, []
        if self.scp is not None:
            parts.append(f"DICOM {cfg.dicom.ae_title}@{cfg.dicom.host}:"
                         f"{self.scp.port or f'{self.scp.tls_port} (TLS only)'}")
        if Role.MODELS in self.roles or Role.INGRESS in self.roles:
            parts.append(f"HTTP http://{cfg.http.host}:{cfg.http.port}")
        if self.bridge is not None:
            host, port, _ = broker_address(cfg.mqtt.url, cfg.mqtt.embedded_port, cfg.mqtt.embedded_host)
            parts.append(f"MQTT {host}:{port} (prefix {cfg.mqtt.topic_prefix})")
        if self.pipeline is not None:
            pacs = cfg.destinations.pacs
            parts.append("results -> " + (f"{pacs.ae_title}@{pacs.host}:{pacs.port}" if pacs else "local store only"))
        if self.ray_address:
            parts.append(f"Ray {self.ray_address}")
        return parts

    # -- Ray -------------------------------------------------------------------------------------
    def _join_ray(self):
        """Start a Ray of this process's own (``ray.address`` null) or join the cluster of this
        machine's Ray node; returns ``ray.serve``.  Once per process."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        cfg = self.settings
        check_port_free(cfg.http)  # http.proxy direct: a taken port is named here, not by Ray Serve
        env = self._worker_environment()  # before Ray Serve is imported: it reads its switches then
        import ray
        from ray import serve

        if ray.is_initialized():
            return serve
        if cfg.ray.address is None:
            # Logical CPUs: at least 8 so every model replica (num_cpus 1 each) is placed on a laptop too.
            ray.init(include_dashboard=False, namespace=RAY_NAMESPACE, logging_level=logging.WARNING,
                     num_cpus=max(os.cpu_count() or 2, 8))
        else:
            try:  # the environment reaches the replicas of the application deployed from here
                ray.init(address=cfg.ray.address, namespace=RAY_NAMESPACE, logging_level=logging.WARNING,
                         runtime_env={"env_vars": env})
            except Exception as exc:  # noqa: BLE001 - reworded for the operator, then raised
                raise RuntimeError(
                    f"cannot join the Ray cluster at ray.address {cfg.ray.address!r}: {exc}. A node joins "
                    f"through a Ray node on its own machine: `ray start --head` (the models node) or "
                    f"`ray start --address=<head>:6379` first (docs/deployment.md)") from exc
        self.ray_address = ray.get_runtime_context().gcs_address
        return serve

    def _worker_environment(self) -> dict[str, str]:
        """What Ray's workers must inherit, set in this process's environment (a local Ray's
        workers inherit it) and returned (for a joined cluster's job ``runtime_env``)."""
        cfg = self.settings
        # Ray Serve's proxy (uvicorn) would take X-Forwarded-For from any loopback peer as the client;
        # it trusts no peer, and the ingress reads forwarding headers from http.trusted_proxies only.
        # (On a cluster each node's proxy inherits its `ray start`'s environment: docs/deployment.md.)
        env = {"FORWARDED_ALLOW_IPS": UVICORN_TRUST_NONE,
               CDS_SECTION_ENV: cfg.cds.model_dump_json(),  # the CDS Hooks routes' section, in the ingress
               **proxy_environment(cfg.http)}  # http.proxy: haproxy (serving.http.proxy)
        if cfg.models_root is not None:  # the registry every process reads, Ray's workers included
            env[ROOT_ENV] = str(cfg.models_root.resolve())
        os.environ.update(env)
        return env

    def _start_ray(self) -> dict:
        """Deploy the Serve application (models and the HTTP ingress) on this node's Ray; returns
        the model handles."""
        serve = self._join_ray()
        from serving.app import APP_NAME, build_app, model_names

        cfg = self.settings
        # On a cluster the proxy runs on every node holding a replica (the ingress's included).
        serve.start(**start_options(cfg.http, on_cluster=cfg.ray.address is not None))
        app = build_app(cfg)
        self.ingress_version = app._bound_deployment._version  # for `medgate models deploy` (components.json)
        serve.run(app, name=APP_NAME, route_prefix="/")
        return {m: serve.get_deployment_handle(m, app_name=APP_NAME) for m in model_names()}

    def _cluster_handles(self) -> dict:
        """The handles of the models the ``models`` node deployed, once its application runs."""
        serve = self._join_ray()
        from serving.app import APP_NAME, model_names

        names = model_names()
        wait_for_application(serve, APP_NAME, names, APPLICATION_WAIT_S)
        return {m: serve.get_deployment_handle(m, app_name=APP_NAME) for m in names}

    def write_status(self) -> None:
        """``state_dir/components.json`` (:mod:`serving.components`): this node's parts and heartbeat."""
        parts = components_for(self.roles)
        components = {}
        if Component.GATEWAY in parts:
            components["dicom"] = "ok" if self.scp else "down"
        if Component.BRIDGE in parts:
            components["mqtt"] = "ok" if self.bridge and self.bridge.connected.is_set() else "down"
        if Component.OUTBOX in parts:
            components["outbox"] = "ok" if self.outbox else "down"
        status = {"heartbeat": time.time(), "started_at": self.started_at, "pid": os.getpid(),
                  "node_id": self.node_id, "roles": role_names(self.roles), "components": components,
                  "dicom_port": self.scp.port if self.scp else None, "ray_address": self.ray_address,
                  "ingress_version": getattr(self, "ingress_version", None)}
        tmp = self.state_dir / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(self.state_dir / STATUS_FILE)

    def run_forever(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        while not self._stop.wait(2.0):
            self.write_status()
        log.info("shutting down")

    def stop(self) -> None:
        """Stop what was started, in reverse; disconnect from Ray (a Ray of this process's own stops
        with its application; a cluster keeps the application serving); leave the cluster table last."""
        risk = self.bridge.risk if self.bridge else None
        for part in (self.scp, self.hl7, self.pipeline, self.dicomweb_index, self.bridge, risk, self.retention,
                     self.outbox, self.broker):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - keep stopping the rest
                    log.exception("stopping %s", type(part).__name__)
        try:
            (self.state_dir / STATUS_FILE).unlink(missing_ok=True)
            self._leave_ray()
        finally:
            if self.membership is not None:
                self.membership.stop()  # after the work stopped: its leases are free only now
            if self.cluster is not None:
                self.cluster.database.close()
            self.store.close()
        log.info("medgate stopped")

    def _leave_ray(self) -> None:
        if "ray" not in sys.modules:  # never started here (a node without Ray, or a start refused)
            return
        import ray
        from ray import serve

        if ray.is_initialized():
            if self.settings.ray.address is None:
                serve.shutdown()
            ray.shutdown()


def free_dead_holder(cluster: ClusterStore, node_id: str, lease_s: float, *, same_machine: bool) -> None:
    """Make way for this process as ``node_id`` when the row holding it was left by a process of this
    machine that is no longer running (killed, a power cut) and its heartbeat has not lapsed yet.

    ``same_machine`` (SQLite: one file, one machine): the row is removed now, releasing its leases.
    Otherwise (PostgreSQL, where another machine may carry the same host name) its heartbeat is
    waited out, at most ``lease_s``; the join then refuses if the id is heartbeated after all.
    A live holder, or one of another host, is left to :meth:`kernel.cluster.ClusterStore.join` to refuse.
    """
    held = next((n for n in cluster.nodes() if n.node_id == node_id), None)
    if held is None or held.host != socket.gethostname() or held.pid == os.getpid() or _running(held.pid):
        return
    age_s = cluster.now() - held.heartbeat_at
    if age_s >= lease_s:
        return
    if same_machine:
        log.warning("node %s: removing the membership of process %d of this machine, which is no longer "
                    "running (heartbeat %.1f s ago)", node_id, held.pid, age_s)
        cluster.leave(node_id)
        return
    log.warning("node %s: process %d of this machine held this id until %.1f s ago and is no longer running; "
                "waiting %.1f s for its heartbeat to lapse", node_id, held.pid, age_s, lease_s - age_s)
    time.sleep(lease_s - age_s + 0.5)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def wait_for_application(serve, app_name: str, models: list[str], timeout_s: float) -> None:
    """Wait until Ray Serve runs ``app_name`` with a deployment for each of ``models``.

    Raises
    ------
    TimeoutError
        Not within ``timeout_s``; the message names what was last seen.
    """
    deadline, next_log, seen = time.monotonic() + timeout_s, time.monotonic() + 30.0, "no Serve application"
    while True:
        app = serve.status().applications.get(app_name)
        if app is not None:
            missing = sorted(set(models) - set(app.deployments))
            if app.status == RUNNING and not missing:
                return
            seen = f"application {app_name!r} {getattr(app.status, 'value', app.status)}"
            seen += f", without {missing}" if missing else ""
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the Serve application {app_name!r} with models {models} is not running on the Ray "
                               f"cluster after {timeout_s:g} s ({seen}): is the models node up "
                               f"(medgate serve --role models)?")
        if time.monotonic() >= next_log:
            log.info("waiting for the models node's Serve application %r (%s)", app_name, seen)
            next_log = time.monotonic() + 30.0
        time.sleep(1.0)


def window_model(names: list[str]) -> str | None:
    """The model among ``names`` that scores windows of vital signs (serving spec input ``window``,
    :mod:`models.spec`) for the vitals bridge; None when there is none.

    Raises
    ------
    ValueError
        Several models take windows: the bridge scores with one.
    """
    registry = ModelRegistry()
    found = [n for n in names if registry.get(n).serving.input is InputKind.WINDOW]
    if len(found) > 1:
        raise ValueError(f"the vitals bridge scores with one model; {found} all take windows of vital signs "
                         f"(serving spec input \"window\"): keep one in the registry (models_root)")
    return found[0] if found else None


def first_start_token(settings: Settings) -> None:
    """With no ``auth.tokens``, make sure an admin token exists under state_dir; print a new one once."""
    if settings.auth.tokens:
        return
    token, created = ensure_admin_token(settings.state_dir.resolve())
    path = settings.state_dir.resolve() / ADMIN_TOKEN_FILE
    if created:  # stdout, not the log: shown to whoever started the server, this once
        print(f"medgate: no auth.tokens configured; generated an admin API token, stored in {path} (0600)."
              f"\nmedgate: admin token (shown once): {token}", flush=True)
    else:
        log.info("no auth.tokens configured: using the admin token in %s", path)


def serve_forever(settings: Settings) -> None:
    """Run a node until SIGINT/SIGTERM.

    Raises
    ------
    kernel.cluster.NodeIdConflict
        another live process holds ``node.id``.
    """
    restrict_umask()  # everything this process and its children create is owner-only
    if Role.MODELS in settings.node.roles:  # the node that deploys the ingress reads the tokens
        first_start_token(settings)
    server = Server(settings)
    try:
        server.start()
        server.run_forever()
    finally:
        server.stop()
