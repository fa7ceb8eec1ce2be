"""``medgate serve``: start every component in one process tree, stop them cleanly.

Start order: store and outbox, Ray + the Serve application (models, HTTP ingress), the MQTT broker
(embedded unless ``mqtt.url`` is set) and bridge, the imaging pipeline, then the DICOM SCP, so
nothing is accepted before there is somewhere to put it.  SIGINT/SIGTERM stop them in reverse.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from dicom_gateway.scp import StorageScp
from dicom_gateway.scu import send_files
from dicom_gateway.wiring import build_scp
from iomt.bridge import VitalsBridge, broker_address
from iomt.hl7.wiring import build_listener
from iomt.risk import ray_predictor
from iomt.wiring import build_bridge
from kernel import heap
from kernel.database import open_database, store_location
from kernel.delivery_errors import PermanentDeliveryError, TransientDeliveryError
from kernel.state_permissions import private_folder, restrict_umask, secure_tree
from models.registry import ROOT_ENV, ModelRegistry
from models.spec import InputKind
from serving.components import STATUS_FILE
from serving.cds.api import CDS_SECTION_ENV
from serving.config import HttpConfig, Settings
from serving.delivery.fhir_sender import FhirSender
from serving.delivery.hl7_sender import Hl7Sender
from serving.delivery.outbox import Outbox
from serving.delivery.outbox_db import open_outbox_db
from serving.fhir.report import patient_identity
from serving.http.auth import ADMIN_TOKEN_FILE, ensure_admin_token
from serving.http.dicomweb_index import IndexWorker
from serving.http.forwarded import UVICORN_TRUST_NONE
from serving.imaging.pipeline import ImagingPipeline
from serving.imaging.results import HL7_KIND
from serving.store import Store

log = logging.getLogger("medgate.server")

PACS = "pacs"


class Server:
    """All medgate components for one configuration."""

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
        cfg = self.settings
        senders = {"dicom": self._send_dicom, "mqtt": self._send_mqtt}
        if cfg.fhir.base_url:
            senders["fhir"] = FhirSender(cfg.fhir.base_url)
        # always there: an item left for a destination since removed is dead at once, naming it
        senders[HL7_KIND] = Hl7Sender(cfg.hl7.named())
        self.outbox = Outbox(open_outbox_db(cfg.store.url, self.store), senders, **cfg.outbox.model_dump())
        handles = self._start_ray()
        host, port, _ = broker_address(cfg.mqtt.url, cfg.mqtt.embedded_port, cfg.mqtt.embedded_host)
        if cfg.mqtt.url is None:
            from iomt.broker import EmbeddedBroker

            self.broker = EmbeddedBroker(port, cfg.mqtt.embedded_host)
            self.broker.start()
        scorer = window_model(list(handles))  # the model whose serving spec takes vitals windows
        vitals = ray_predictor(handles[scorer]) if scorer else None
        self.bridge = build_bridge(cfg, self.store.vitals, self.outbox, vitals)
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
        self.outbox.start()
        self.pipeline = ImagingPipeline(
            self.store, self.outbox, handles, self.state_dir / "results",
            destinations={name: list(d.objects) for name, d in cfg.destinations.named().items()},
            fhir_base_url=cfg.fhir.base_url if cfg.fhir.send_reports else None,
            identity=patient_identity(cfg), hl7=cfg.hl7)
        self.pipeline.start()
        self.dicomweb_index = IndexWorker(self.store)  # QIDO-RS headers read as objects arrive
        self.dicomweb_index.start()
        self.scp = build_scp(cfg.dicom, self.store.gateway, self.state_dir / "spool", self.pipeline.submit,
                             known_models=handles)
        self.scp.start()
        self.write_status()
        heap.settle()
        pacs = cfg.destinations.pacs
        log.info("medgate ready: DICOM %s@%s:%s, HTTP http://%s:%d, MQTT %s:%d (prefix %s), "
                 "results -> %s", cfg.dicom.ae_title, cfg.dicom.host,
                 self.scp.port or f"{self.scp.tls_port} (TLS only)", cfg.http.host,
                 cfg.http.port, host, port, cfg.mqtt.topic_prefix,
                 f"{pacs.ae_title}@{pacs.host}:{pacs.port}" if pacs else "local store only")

    def _start_ray(self) -> dict:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray
        from ray import serve

        from serving.app import APP_NAME, build_app, model_names

        cfg = self.settings
        # Ray Serve's proxy (uvicorn) would take X-Forwarded-For from any loopback peer as the client;
        # it trusts no peer, and the ingress reads forwarding headers from http.trusted_proxies only.
        os.environ["FORWARDED_ALLOW_IPS"] = UVICORN_TRUST_NONE  # inherited by Ray's workers
        if cfg.models_root is not None:  # the registry every process reads, Ray's workers included
            os.environ[ROOT_ENV] = str(cfg.models_root.resolve())
        os.environ[CDS_SECTION_ENV] = cfg.cds.model_dump_json()  # the CDS Hooks routes' section, in the ingress
        # Logical CPUs: at least 8 so every model replica (num_cpus 1 each) is placed on a laptop too.
        ray.init(include_dashboard=False, namespace="medgate", logging_level=logging.WARNING,
                 num_cpus=max(os.cpu_count() or 2, 8))
        self.ray_address = ray.get_runtime_context().gcs_address
        serve.start(http_options=http_options(cfg.http))
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
        return {m: serve.get_deployment_handle(m, app_name=APP_NAME) for m in model_names()}

    def write_status(self) -> None:
        components = {
            "dicom": "ok" if self.scp else "down",
            "mqtt": "ok" if self.bridge and self.bridge.connected.is_set() else "down",
            "outbox": "ok" if self.outbox else "down",
        }
        status = {"heartbeat": time.time(), "started_at": self.started_at, "pid": os.getpid(),
                  "components": components,
                  "dicom_port": self.scp.port if self.scp else None, "ray_address": self.ray_address}
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
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            self.store.close()
        log.info("medgate stopped")


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


def http_options(http: HttpConfig) -> dict:
    """Ray Serve's ``http_options`` from the ``http`` section (bind address, idle and request limits)."""
    options = {"host": http.host, "port": http.port, "keep_alive_timeout_s": http.keep_alive_timeout_s}
    if http.request_timeout_s is not None:
        options["request_timeout_s"] = http.request_timeout_s
    return options


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
    restrict_umask()  # everything this process and its children create is owner-only
    first_start_token(settings)
    server = Server(settings)
    try:
        server.start()
        server.run_forever()
    finally:
        server.stop()
