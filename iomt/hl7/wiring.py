"""Build the HL7 v2 MLLP listener from the validated configuration (``hl7``, ``iomt``, ``mqtt``, ``fhir``)."""
from __future__ import annotations

from zoneinfo import ZoneInfo

from iomt.alerts import AlertPolicy
from iomt.hl7.identifiers import IdentifierMapper
from iomt.hl7.intake import Intake
from iomt.hl7.listener import MllpListener, tls_context
from iomt.identity import DeviceRegistry
from iomt.pipeline import VitalsPipeline
from iomt.state import StateTable
from iomt.topics import Topics


def build_listener(settings, store, outbox=None, registry: DeviceRegistry | None = None,
                   risk=None) -> MllpListener:
    """The listener for ``settings`` (``hl7.port`` must be set).  ``registry``: the MQTT bridge's
    (one worker), so that a bed an ADT message binds reaches the devices' MQTT vitals at once;
    ``risk``: the bridge's risk scorer."""
    cfg, iomt = settings.hl7, settings.iomt
    if cfg.port is None:
        raise ValueError("hl7.port must be set to start the HL7 listener, None is given.")
    pipeline = VitalsPipeline(Topics(settings.mqtt.topic_prefix), store,
                              registry or DeviceRegistry(store, iomt.identifiers),
                              states=StateTable(iomt.staleness_s),
                              alerts=AlertPolicy(iomt.alerts.min_band, iomt.alerts.repeat_after_s),
                              risk=risk, news2_interval_s=iomt.news2_interval_s)
    identifiers = IdentifierMapper(iomt.identifiers, cfg.assigning_authorities, cfg.identifier_types,
                                   cfg.patient_id_order)
    intake = Intake(store, pipeline, identifiers, ZoneInfo(cfg.timezone), outbox=outbox,
                    fhir_base_url=settings.fhir.base_url, bundle_max_entries=iomt.bundle_max_entries,
                    application=cfg.application, facility=cfg.facility,
                    allowed_facilities=cfg.allowed_facilities, dedup_window_s=cfg.dedup_window_hours * 3600)
    context = tls_context(cfg.cert_file, cfg.key_file, cfg.ca_file) if cfg.cert_file else None
    return MllpListener(intake, cfg.host, cfg.port, ssl_context=context, allowed_sources=cfg.allowed_sources,
                        max_message_bytes=cfg.max_message_bytes, max_connections=cfg.max_connections,
                        idle_timeout_s=cfg.idle_timeout_s)
