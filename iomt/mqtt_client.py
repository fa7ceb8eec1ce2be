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

:class:`BridgeClient` is paho's client with a receive path for thousands of messages a second:
stock paho reads a packet with three ``recv`` calls and one ``select``, builds an
``MQTTMessage`` (with a ``Condition``) and matches topic callbacks per message, and sends each
PUBACK as its own packet. The subclass reads the socket 64 KiB at a time, handles every buffered
packet per read event, decodes QoS 0/1 PUBLISH packets into a slotted :class:`Message` (all of a
read's at once to ``on_messages`` when that is set), and writes the PUBACKs of a committed batch
in one packet (:meth:`BridgeClient.ack_many`). It relies on paho-mqtt 2.1/2.2 internals
(``_sock_recv``, ``_packet_read``, ``_in_packet``, ``_packet_queue``); with any other paho
version it behaves exactly as stock paho.
"""
from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iomt.config import MqttConfig

_MQTT = MqttConfig()  # the ``mqtt:`` section's defaults, the options' defaults
PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}
MAX_RECEIVE_MAXIMUM = 65535  # MQTT 5.0 3.1.2.11.3: two-byte integer
LEAN_PAHO_VERSIONS = ("2.1.", "2.2.")  # paho-mqtt releases whose internals BridgeClient uses
RECV_BYTES = 65536  # one socket read
RECVS_PER_EVENT = 4  # socket reads per read event before paho's loop writes (acks) again
PUBACK_PACKET = 0x40020000  # MQTT 3.1.1 3.4 / 5.0 3.4: PUBACK, remaining length 2, packet id


@dataclass(frozen=True)
class MqttOptions:
    """Connection options (``mqtt.*`` configuration keys; their defaults are the section's)."""

    protocol: str = _MQTT.protocol
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    session_expiry_s: int = _MQTT.session_expiry_s
    keepalive_s: int = _MQTT.keepalive_s
    reconnect_min_s: float = _MQTT.reconnect_min_s
    reconnect_max_s: float = _MQTT.reconnect_max_s
    receive_maximum: int = MAX_RECEIVE_MAXIMUM  # the bridge gives mqtt.queue_size

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, {self.protocol!r} is given.")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(f"cert_file and key_file must be given together, {self.cert_file!r} "
                             f"and {self.key_file!r} are given.")
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_min_s must be > 0 and <= reconnect_max_s, "
                             f"{self.reconnect_min_s} and {self.reconnect_max_s} are given.")


class Message:
    """A received PUBLISH, as :class:`BridgeClient` hands it to ``on_message`` (the attributes of
    paho's ``MQTTMessage`` the bridge uses)."""

    __slots__ = ("mid", "qos", "topic", "payload", "dup", "retain", "properties")

    def __init__(self, mid: int, qos: int, topic: str, payload: bytes, dup: bool = False,
                 retain: bool = False) -> None:
        self.mid, self.qos, self.topic, self.payload = mid, qos, topic, payload
        self.dup, self.retain, self.properties = dup, retain, None


class BridgeClient(mqtt.Client):
    """paho's client with the lean receive path and batched PUBACKs (see the module docstring)."""

    lean = paho.mqtt.__version__.startswith(LEAN_PAHO_VERSIONS)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rsock = None  # the socket _rbuf was read from
        self._rbuf, self._rpos, self._rbudget = b"", 0, 0
        self._filtered = False
        #: ``on_messages(client, userdata, messages)``: when set, each read's whole QoS 0/1
        #: PUBLISH packets come as one list (lean path); the others still go to ``on_message``.
        self.on_messages = None

    def message_callback_add(self, sub, callback) -> None:
        self._filtered = True  # topic callbacks: stock dispatch
        super().message_callback_add(sub, callback)

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK each QoS 1 packet id in ``mids``, in that order, as one write."""
        if not mids or not self._manual_ack:
            return
        if not self.lean:
            for mid in mids:
                self.ack(mid, 1)
            return
        packet = struct.pack(f"!{len(mids)}I", *[PUBACK_PACKET | mid for mid in mids])
        self._packet_queue(mqtt.PUBACK, packet, 0, 0)

    # -- paho internals (lean only) ------------------------------------------------------------
    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.lean:
            return super()._sock_recv(bufsize)
        while True:
            if self._rpos < len(self._rbuf) and self._rsock is self._sock:
                if bufsize == 1 and self._in_packet["command"] == 0 and self._bulk():
                    self._rpos = self._deliver(self._rbuf, self._rpos)  # whole PUBLISH packets
                    if self._rpos >= len(self._rbuf):
                        continue
                start = self._rpos
                self._rpos = start + bufsize
                return self._rbuf[start:self._rpos]
            if self._rbudget <= 0:
                raise BlockingIOError()  # still readable: the next select() returns at once
            self._rbudget -= 1
            data = super()._sock_recv(RECV_BYTES)
            if not data:
                return data  # connection closed: paho's handling
            self._rsock, self._rbuf, self._rpos = self._sock, data, 0

    def _bulk(self) -> bool:
        return self.on_messages is not None and not self._filtered

    def _deliver(self, buf: bytes, pos: int) -> int:
        """Hand every whole QoS 0/1 PUBLISH packet from ``buf[pos:]`` to ``on_messages`` at
        once; returns where the first other packet (or an incomplete one) starts, for paho."""
        messages: list[Message] = []
        end_of_buf, v5 = len(buf), self._protocol == mqtt.MQTTv5
        while pos + 2 <= end_of_buf:
            header = buf[pos]
            if header & 0xF0 != 0x30 or header & 0x06 == 0x06:
                break  # not a PUBLISH, or QoS 2 (or the reserved QoS 3): paho
            i, shift, length = pos + 1, 0, 0
            while i < end_of_buf and i <= pos + 4:  # remaining length: 1-4 bytes (2.2.3)
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            else:
                break  # incomplete or malformed: paho reads it, and reports a bad one
            end = i + length
            if end > end_of_buf or length < 2:
                break
            topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
            qos = (header & 0x06) >> 1
            body = topic_end + (2 if qos else 0) + (1 if v5 else 0)
            if topic_end == i + 2 or body > end or (v5 and buf[body - 1] != 0):
                break  # empty topic, a short packet or MQTT 5 properties: paho
            try:
                topic = buf[i + 2:topic_end].decode("utf-8")
            except UnicodeDecodeError:
                break
            mid = (buf[topic_end] << 8) | buf[topic_end + 1] if qos else 0
            messages.append(Message(mid, qos, topic, buf[body:end], bool(header & 0x08),
                                    bool(header & 0x01)))
            pos = end
        if messages:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
            with self._in_callback_mutex:
                try:
                    self.on_messages(self, self._userdata, messages)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_messages: %s", err)
                    if not self.suppress_exceptions:
                        raise
            if not self._manual_ack:
                for message in messages:
                    if message.qos == 1:
                        self._send_puback(message.mid)
        return pos

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if not self.lean:
            return super().loop_read(max_packets)
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self._rbudget = RECVS_PER_EVENT
        while True:  # every packet of up to RECVS_PER_EVENT reads; ends with the buffer empty
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        header, data = self._in_packet["command"], self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        on_message = self.on_message
        if not self.lean or qos == 2 or on_message is None or self._filtered or len(data) < 2:
            return super()._handle_publish()
        end = 2 + ((data[0] << 8) | data[1])
        pos = end + (2 if qos else 0)
        if end == 2 or pos > len(data):
            return super()._handle_publish()  # empty topic or a short packet: paho's errors
        if self._protocol == mqtt.MQTTv5:
            if pos >= len(data) or data[pos] != 0:
                return super()._handle_publish()  # properties present: paho decodes them
            pos += 1
        try:
            topic = data[2:end].decode("utf-8")
        except UnicodeDecodeError:
            return super()._handle_publish()
        message = Message((data[end] << 8) | data[end + 1] if qos else 0, qos, topic,
                          bytes(data[pos:]), bool(header & 0x08), bool(header & 0x01))
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def make_client(client_id: str, options: MqttOptions) -> BridgeClient:
    """A configured client (not yet connected); see :func:`connect_async`."""
    protocol = PROTOCOLS[options.protocol]
    kwargs = {"clean_session": False} if protocol == mqtt.MQTTv311 else {}
    client = BridgeClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
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
