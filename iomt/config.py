"""The ``mqtt:`` and ``iomt:`` sections of the configuration: the vitals bridge's typed settings.

:class:`serving.config.Settings` composes them; :mod:`iomt.wiring` builds the bridge from them.
Every default is written here only (:data:`iomt.bridge.DEFAULT_SYSTEMS` is ``IdentifierSystems()``):
a constructor whose parameter is a key of these sections reads its default from a module-level
``_MQTT = MqttConfig()`` or ``_IOMT = IomtConfig()`` (``staleness_s: float = _IOMT.staleness_s``);
``tests/serving/test_config.py`` checks it.
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, field_validator, model_validator

from iomt.topics import Partition
from kernel.config import Section


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MqttConfig(Section):
    url: str | None = None
    # The embedded broker (url: null) is demo only, without authentication, ACL or TLS: it binds
    # a loopback address or refuses to start (docs/security.md, "MQTT broker").
    embedded_host: str = "127.0.0.1"
    embedded_port: int = Field(1883, ge=0, le=65535)
    topic_prefix: str = "medgate"
    client_id: str = "medgate-bridge"
    protocol: Literal["3.1.1", "5"] = "3.1.1"  # MQTT 3.1.1 (OASIS 2014) or MQTT 5.0 (OASIS 2019)
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None  # PEM CA bundle for mqtts://; None = the system trust store
    cert_file: Path | None = None  # PEM client certificate (TLS client authentication)
    key_file: Path | None = None  # PEM private key of cert_file
    shared_group: str | None = None  # subscribe as $share/<group>/... so bridges split the load
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)  # MQTT 5 Session Expiry Interval
    keepalive_s: int = Field(30, ge=5, le=65535)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    queue_size: int = Field(20_000, ge=1)  # bounded hand-off queue; full = stop reading

    @field_validator("shared_group")
    @classmethod
    def _check_group(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/#+")):
            raise ValueError(f"must be one topic level without '/', '+' or '#', {value!r} is given")
        return value

    @field_validator("embedded_host")
    @classmethod
    def _check_embedded_host(cls, value: str) -> str:
        if not is_loopback(value):
            raise ValueError(f"must be a loopback address (127.0.0.1, ::1 or localhost): the embedded "
                             f"broker is demo only, with no authentication, ACL or TLS; set mqtt.url "
                             f"to the hospital's broker to receive from other machines")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^mqtts?://[^/:]+(:\d+)?/?$", value):
            raise ValueError(f"must look like mqtt://host:port or mqtts://host:port, {value!r} is given")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
            raise ValueError(f"must be a plain topic level path without wildcards, {value!r} is given")
        return value


class AlertsConfig(Section):
    min_band: Literal["low-medium", "medium", "high"] = "low-medium"  # RCP NEWS2 table 2 bands
    repeat_after_s: float = Field(3600.0, ge=0)  # same band re-alerted at most this often


class IdentifierSystems(Section):
    """FHIR identifier systems of patients and devices (``iomt.identifiers``); immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # VN Core FHIR IG (HL7 Vietnam, draft): NamingSystem vn-cccd-ns and vn-bhyt-ns.
    citizen_id: str = "http://fhir.hl7.org.vn/core/sid/cccd"
    social_insurance: str = "http://fhir.hl7.org.vn/core/sid/bhyt"
    # The hospital's own medical record numbers (HL7 table 0203 "MR"): a local placeholder; set the
    # hospital's registered URI or urn:oid: here.
    hospital_mrn: str = "urn:medgate:hospital-mrn"
    device: str = "urn:medgate:device-serial"  # local serial numbers, no national system


IdentifierKind = str  # a key of ``iomt.identifiers`` (citizen_id, ...) or a system URI


class Hl7Config(Section):
    """The ``hl7:`` section: the HL7 v2 MLLP listener (:mod:`iomt.hl7.listener`); off until ``port`` is set."""

    port: int | None = Field(None, ge=0, le=65535)  # None: no listener; 0: any free port (tests)
    host: str = "127.0.0.1"
    cert_file: Path | None = None  # PEM certificate: MLLP over TLS (IHE ITI TF-2 "Secure Node")
    key_file: Path | None = None
    ca_file: Path | None = None  # PEM CA bundle: senders must present a certificate it signed
    # MSH-4 Sending Facility (HD.1) values accepted; empty: any facility
    allowed_facilities: list[str] = []
    # peer addresses or CIDR networks allowed to connect; empty: any address
    allowed_sources: list[str] = ["127.0.0.0/8", "::1/128"]
    max_message_bytes: int = Field(1024 * 1024, ge=1024)  # one MLLP block, bounded while reading
    # a resend within this is acknowledged again without being applied; older receipts are deleted
    dedup_window_hours: float = Field(72.0, gt=0)
    max_connections: int = Field(64, ge=1)
    idle_timeout_s: float = Field(3600.0, gt=0)  # a sender's connection with nothing sent is closed
    application: str = "MEDGATE"  # MSH-3 / MSH-4 of our acknowledgements
    facility: str = "MEDGATE"
    # Time zone of HL7 date/times sent without an offset (HL7 v2.5 section 2.A.22 DTM)
    timezone: str = "Asia/Ho_Chi_Minh"
    # PID-3 identifiers: CX.4 assigning authority (HD.1), then CX.5 identifier type (HL7 table 0203)
    # -> a key of iomt.identifiers or a system URI.  The first of patient_id_order found in PID-3
    # names the patient.
    assigning_authorities: dict[str, IdentifierKind] = {
        "CCCD": "citizen_id", "BHYT": "social_insurance", "BHXH": "social_insurance"}
    identifier_types: dict[str, IdentifierKind] = {
        "MR": "hospital_mrn", "PI": "hospital_mrn", "NI": "citizen_id", "NN": "citizen_id",
        "HC": "social_insurance", "NH": "social_insurance", "SS": "social_insurance"}
    patient_id_order: list[str] = ["hospital_mrn", "citizen_id", "social_insurance"]

    @field_validator("allowed_sources")
    @classmethod
    def _check_sources(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"each entry must be an IP address or CIDR network, {entry!r} is given") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"must be an IANA time zone name such as Asia/Ho_Chi_Minh, {value!r} is given") \
                from None
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> "Hl7Config":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together for MLLP over TLS")
        if self.ca_file is not None and self.cert_file is None:
            raise ValueError("ca_file (client certificates) needs cert_file and key_file")
        return self


class RiskConfig(Section):
    enabled: bool = True  # used when a `vitals` model is registered and deployed
    flush_interval_s: float = Field(1.0, gt=0)
    max_batch: int = Field(256, ge=1)
    min_interval_s: float = Field(60.0, ge=0)  # per patient, in message time


class IomtConfig(Section):
    staleness_s: float = Field(3600.0, gt=0)  # NEWS2 uses values no older than this
    news2_interval_s: float = Field(60.0, ge=0)  # unchanged score re-written at most this often
    # vitals resources are kept this long in the local store (iomt/retention.py); None keeps them all
    retention_hours: float | None = Field(72.0, gt=0)
    batch_max_messages: int = Field(1000, ge=1)  # messages per store transaction
    workers: int = Field(1, ge=1)  # bridge worker processes; each owns the beds hashed to it
    bundle_max_entries: int = Field(2000, ge=1)  # resources per FHIR transaction Bundle
    alerts: AlertsConfig = AlertsConfig()
    identifiers: IdentifierSystems = IdentifierSystems()
    risk: RiskConfig = RiskConfig()
    # Several bridge nodes (iomt/partitions.py): wards ("icu") or one site's wards ("h1/icu"),
    # each leased by one node at a time with a persistent MQTT session of its own; empty: one
    # bridge reads every topic
    partitions: list[str] = []
    partition_lease_ttl_s: float = Field(15.0, ge=1)  # a dead node's partitions move after this
    registry_refresh_s: float = Field(5.0, gt=0)  # device associations re-read from the store

    @field_validator("partitions")
    @classmethod
    def _check_partitions(cls, value: list[str]) -> list[str]:
        parsed = [Partition.parse(text) for text in value]
        for i, first in enumerate(parsed):
            for second in parsed[i + 1:]:
                if first.overlaps(second):
                    raise ValueError(f"partitions must not overlap, {first.name!r} and {second.name!r} "
                                     f"are given.")
        return value
