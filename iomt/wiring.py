"""Build the vitals bridge and its parts from the validated configuration (``mqtt``, ``iomt``, ``fhir``)."""
from __future__ import annotations

import logging

from iomt.alerts import AlertPolicy
from iomt.bridge import VitalsBridge, broker_address
from iomt.identity import DeviceRegistry
from iomt.mqtt_client import MqttOptions
from iomt.partitions import PartitionSpec, PartitionSupervisor
from iomt.risk import Predictor, RiskScorer
from iomt.sink import ResourceSink
from iomt.state import StateTable
from kernel.leases import LeaseKeeper

log = logging.getLogger("medgate.iomt")


def mqtt_options(settings) -> MqttOptions:
    cfg = settings.mqtt
    _, _, tls = broker_address(cfg.url, cfg.embedded_port, cfg.embedded_host)
    return MqttOptions(protocol=cfg.protocol, tls=tls, username=cfg.username, password=cfg.password,
                       ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file,
                       session_expiry_s=cfg.session_expiry_s, keepalive_s=cfg.keepalive_s,
                       reconnect_min_s=cfg.reconnect_min_s, reconnect_max_s=cfg.reconnect_max_s,
                       receive_maximum=cfg.queue_size)


def _risk(settings, sink: ResourceSink, predictor: Predictor | None) -> RiskScorer | None:
    iomt = settings.iomt
    if not iomt.risk.enabled:
        return None
    if predictor is None:
        log.error("iomt.risk.enabled is true but no deployed model takes vitals windows (serving spec "
                  "input 'window'): risk scoring off")
        return None
    return RiskScorer(predictor, sink, flush_interval_s=iomt.risk.flush_interval_s,
                      max_batch=iomt.risk.max_batch, min_interval_s=iomt.risk.min_interval_s)


def build_bridge(settings, store, outbox, predictor: Predictor | None = None) -> VitalsBridge:
    """The bridge for ``settings``; ``predictor`` (the deployment whose model takes vitals windows) enables risk scoring
    when ``iomt.risk.enabled``."""
    cfg, iomt = settings.mqtt, settings.iomt
    host, port, _ = broker_address(cfg.url, cfg.embedded_port, cfg.embedded_host)
    sink = ResourceSink(store, outbox, settings.fhir.base_url, iomt.bundle_max_entries)
    risk = _risk(settings, sink, predictor)
    return VitalsBridge(
        host, port, topic_prefix=cfg.topic_prefix, store=store, outbox=outbox,
        client_id=cfg.client_id, queue_size=cfg.queue_size, options=mqtt_options(settings),
        shared_group=cfg.shared_group, sink=sink, registry=DeviceRegistry(store, iomt.identifiers),
        states=StateTable(iomt.staleness_s),
        alerts=AlertPolicy(iomt.alerts.min_band, iomt.alerts.repeat_after_s), risk=risk,
        batch_max_messages=iomt.batch_max_messages, news2_interval_s=iomt.news2_interval_s,
        workers=iomt.workers)


def build_partitioned_bridge(settings, store, outbox, cluster, node_id: str,
                             predictor: Predictor | None = None, *, role: str | None = None,
                             keeper: type = LeaseKeeper) -> PartitionSupervisor:
    """The bridges of ``iomt.partitions`` this node leases (:mod:`iomt.partitions`), not started.

    ``cluster`` is the :class:`kernel.cluster.ClusterStore` on the shared database and ``node_id``
    this node's id (a member: :class:`kernel.leases.Membership`), ``role`` the cluster role whose
    nodes share the partitions (the server's ``bridge``); ``store`` the shared
    :class:`iomt.store.VitalsStore`. The supervisor offers what the server uses of a bridge:
    ``start()``, ``stop()``, ``publish(topic, payload)`` (the outbox's MQTT sender), ``registry``
    (the HL7 listener's), ``risk`` (started by the caller) and ``connected.is_set()``.

    Raises
    ------
    ValueError
        When ``iomt.partitions`` is empty, ``iomt.workers`` is not 1 (the nodes share the load
        instead), ``mqtt.shared_group`` is set (each partition's session is its own), or MQTT 5
        is used with ``mqtt.session_expiry_s`` 0 (the broker would drop a partition's queued
        messages when its node goes).
    """
    cfg, iomt = settings.mqtt, settings.iomt
    if not iomt.partitions:
        raise ValueError("iomt.partitions must name at least one partition, none is given.")
    if iomt.workers != 1:
        raise ValueError(f"iomt.workers must be 1 with iomt.partitions (the nodes share the load), "
                         f"{iomt.workers} is given.")
    if cfg.shared_group is not None:
        raise ValueError(f"mqtt.shared_group must not be set with iomt.partitions (each partition has "
                         f"a session of its own), {cfg.shared_group!r} is given.")
    options = mqtt_options(settings)
    if options.protocol == "5" and options.session_expiry_s == 0:
        raise ValueError("mqtt.session_expiry_s must be above 0 with iomt.partitions and MQTT 5, 0 is "
                         "given: the broker would drop a partition's queued messages with its node.")
    host, port, _ = broker_address(cfg.url, cfg.embedded_port, cfg.embedded_host)
    sink = ResourceSink(store, outbox, settings.fhir.base_url, iomt.bundle_max_entries)
    registry = DeviceRegistry(store, iomt.identifiers)
    risk = _risk(settings, sink, predictor)

    def make_bridge(spec: PartitionSpec) -> VitalsBridge:
        return VitalsBridge(
            host, port, topic_prefix=cfg.topic_prefix, store=store, outbox=outbox,
            client_id=spec.client_id, queue_size=cfg.queue_size, options=options, sink=sink,
            registry=registry, states=StateTable(iomt.staleness_s),
            alerts=AlertPolicy(iomt.alerts.min_band, iomt.alerts.repeat_after_s), risk=risk,
            batch_max_messages=iomt.batch_max_messages, news2_interval_s=iomt.news2_interval_s,
            subscriptions=spec.subscriptions, owns=spec.owns, fence=spec.fence, checkpoints=False)

    return PartitionSupervisor(
        iomt.partitions, cluster=cluster, node_id=node_id, ttl_s=iomt.partition_lease_ttl_s,
        store=store, registry=registry, topic_prefix=cfg.topic_prefix, client_id_base=cfg.client_id,
        make_bridge=make_bridge, registry_refresh_s=iomt.registry_refresh_s, risk=risk, role=role,
        keeper=keeper)
