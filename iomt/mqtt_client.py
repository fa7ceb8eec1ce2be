"""A paho-mqtt client set up for the bridge: protocol, persistent session, TLS, login, backoff.

- MQTT 3.1.1 (OASIS 2014): ``clean_session=False`` so the broker keeps the subscription and the
  unacknowledged QoS 1 messages while the bridge is away (section 3.1.2.4).
- MQTT 5.0 (OASIS 2019): ``clean_start=False`` with a Session Expiry Interval (3.1.2.11.2) and a
  Receive Maximum (3.1.2.11.3) as large as the bridge's queue, so the broker may have that many
  QoS 1 messages in flight instead of its default (Mosquitto: 20 for 3.1.1 clients, see
  ``max_inflight_messages``).
- TLS with a CA file and optionally a client certificate and key; username and password.
- Reconnect with exponential backoff between ``reconnect_min_s`` and ``reconnect_max_s`` (paho's
  network thread). Messages are acknowledged manually (``manual_ack``), after they are stored.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}
MAX_RECEIVE_MAXIMUM = 65535  # MQTT 5.0 3.1.2.11.3: two-byte integer


@dataclass(frozen=True)
class MqttOptions:
    """Connection options (``mqtt.*`` configuration keys)."""

    protocol: str = "3.1.1"
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    receive_maximum: int = MAX_RECEIVE_MAXIMUM

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, {self.protocol!r} is given.")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(f"cert_file and key_file must be given together, {self.cert_file!r} "
                             f"and {self.key_file!r} are given.")
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_min_s must be > 0 and <= reconnect_max_s, "
                             f"{self.reconnect_min_s} and {self.reconnect_max_s} are given.")


def make_client(client_id: str, options: MqttOptions) -> mqtt.Client:
    """A configured client (not yet connected); see :func:`connect_async`."""
    protocol = PROTOCOLS[options.protocol]
    kwargs = {"clean_session": False} if protocol == mqtt.MQTTv311 else {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         manual_ack=True, **kwargs)
    if options.tls or options.ca_file is not None:
        client.tls_set(ca_certs=str(options.ca_file) if options.ca_file else None,
                       certfile=str(options.cert_file) if options.cert_file else None,
                       keyfile=str(options.key_file) if options.key_file else None,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    client.reconnect_delay_set(min_delay=options.reconnect_min_s,  # type: ignore[arg-type]
                               max_delay=options.reconnect_max_s)  # type: ignore[arg-type]
    return client


def connect_async(client: mqtt.Client, host: str, port: int, options: MqttOptions) -> None:
    """Start connecting in the background with a persistent session."""
    if options.protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = options.session_expiry_s
        props.ReceiveMaximum = max(1, min(options.receive_maximum, MAX_RECEIVE_MAXIMUM))
        client.connect_async(host, port, keepalive=options.keepalive_s, clean_start=False,
                             properties=props)
    else:
        client.connect_async(host, port, keepalive=options.keepalive_s)
