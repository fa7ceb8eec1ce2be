"""Build the vitals bridge and its parts from the validated configuration (``mqtt``, ``iomt``, ``fhir``)."""
from __future__ import annotations

import logging

from iomt.alerts import AlertPolicy
from iomt.bridge import VitalsBridge, broker_address
from iomt.identity import DeviceRegistry
from iomt.mqtt_client import MqttOptions
from iomt.risk import Predictor, RiskScorer
from iomt.sink import ResourceSink
from iomt.state import StateTable

log = logging.getLogger("medgate.iomt")


def mqtt_options(settings) -> MqttOptions:
    cfg = settings.mqtt
    _, _, tls = broker_address(cfg.url, cfg.embedded_port, cfg.embedded_host)
    return MqttOptions(protocol=cfg.protocol, tls=tls, username=cfg.username, password=cfg.password,
                       ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file,
                       session_expiry_s=cfg.session_expiry_s, keepalive_s=cfg.keepalive_s,
                       reconnect_min_s=cfg.reconnect_min_s, reconnect_max_s=cfg.reconnect_max_s,
                       receive_maximum=cfg.queue_size)


def build_bridge(settings, store, outbox, predictor: Predictor | None = None) -> VitalsBridge:
    """The bridge for ``settings``; ``predictor`` (the deployment whose model takes vitals windows) enables risk scoring
    when ``iomt.risk.enabled``."""
    cfg, iomt = settings.mqtt, settings.iomt
    host, port, _ = broker_address(cfg.url, cfg.embedded_port, cfg.embedded_host)
    sink = ResourceSink(store, outbox, settings.fhir.base_url, iomt.bundle_max_entries)
    risk = None
    if iomt.risk.enabled:
        if predictor is None:
            log.error("iomt.risk.enabled is true but no deployed model takes vitals windows (serving spec "
                      "input 'window'): risk scoring off")
        else:
            risk = RiskScorer(predictor, sink, flush_interval_s=iomt.risk.flush_interval_s,
                              max_batch=iomt.risk.max_batch, min_interval_s=iomt.risk.min_interval_s)
    return VitalsBridge(
        host, port, topic_prefix=cfg.topic_prefix, store=store, outbox=outbox,
        client_id=cfg.client_id, queue_size=cfg.queue_size, options=mqtt_options(settings),
        shared_group=cfg.shared_group, sink=sink, registry=DeviceRegistry(store, iomt.identifiers),
        states=StateTable(iomt.staleness_s),
        alerts=AlertPolicy(iomt.alerts.min_band, iomt.alerts.repeat_after_s), risk=risk,
        batch_max_messages=iomt.batch_max_messages, news2_interval_s=iomt.news2_interval_s,
        workers=iomt.workers)
