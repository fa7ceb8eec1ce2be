"""The MQTT vitals bridge: subscribe, parse, score NEWS2, store FHIR Observations, raise alerts.

Topic scheme (``P`` is ``mqtt.topic_prefix``, default ``medgate``):

- ``P/{ward}/{bed}/vitals`` — a bedside monitor publishes one JSON payload per reading
  (schema: ``iomt/schemas/vitals.schema.json``), QoS 1.
- ``P/alerts/{ward}/{bed}`` — the bridge publishes an alert when a patient's NEWS2 clinical-risk
  band escalates to low-medium (a single parameter scoring 3), medium or high (QoS 1, through the
  outbox); a score that stays in, or flaps back to, an already alerted band does not alert again
  until the patient has been scored low.
- ``P/deadletter`` — payloads that cannot be used, wrapped with the reason, the topic and the
  original bytes (also kept in the store's ``dead_letters`` table).

``on_message`` never blocks on work: messages go to a bounded queue and are acknowledged (manual
QoS 1 ack) only after their Observations are in the store; a full queue makes the network thread
wait, which stops reading from the broker instead of dropping.
"""
from __future__ import annotations

import base64
import json
import logging
import queue
import re
import threading
import uuid
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from iomt.news2 import Band, score
from iomt.observations import news2_observation, vital_observations
from iomt.payload import PayloadError, parse_payload

log = logging.getLogger("medgate.iomt")

#: Clinical-risk bands in order; an alert is raised when a patient's band rises above the highest
#: band already alerted since the patient was last scored low.
BAND_RANK = {Band.LOW: 0, Band.LOW_MEDIUM: 1, Band.MEDIUM: 2, Band.HIGH: 3}
#: FHIR R4 id datatype: [A-Za-z0-9\-\.]{1,64}.
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def patient_reference(patient_id: str, system: str | None = None) -> str:
    """``Patient/<id>``: the identifier itself when it is a valid FHIR id, else a stable uuid5 of it."""
    if _FHIR_ID.match(patient_id):
        return f"Patient/{patient_id}"
    key = f"{system or ''}|{patient_id}"
    return f"Patient/{uuid.uuid5(uuid.NAMESPACE_URL, key)}"


def broker_address(url: str | None, embedded_port: int) -> tuple[str, int, bool]:
    """(host, port, tls) of the broker: ``url`` when given, else the embedded broker."""
    if url is None:
        return "127.0.0.1", embedded_port, False
    parsed = urlparse(url)
    tls = parsed.scheme == "mqtts"
    return parsed.hostname or "127.0.0.1", parsed.port or (8883 if tls else 1883), tls


class VitalsBridge:
    """Connects to the broker and turns vitals payloads into stored FHIR resources.

    Parameters
    ----------
    host, port, tls
        The broker.
    topic_prefix
        First topic level(s) of every medgate topic.
    store
        Where Observations and dead letters go.
    outbox
        Where alerts go (kind ``mqtt``); may be None in tests that need no alerts.
    """

    def __init__(self, host: str, port: int, *, topic_prefix: str, store, outbox=None,
                 client_id: str = "medgate-bridge", tls: bool = False, queue_size: int = 10_000) -> None:
        self.host, self.port, self.prefix = host, port, topic_prefix
        self.store, self.outbox = store, outbox
        self.queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(maxsize=queue_size)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, manual_ack=True)
        if tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.processed = 0
        self._alerted: dict[str, int] = {}  # patient reference -> highest band rank alerted
        self._worker = threading.Thread(target=self._work, name="medgate-vitals", daemon=True)

    @property
    def vitals_topic(self) -> str:
        return f"{self.prefix}/+/+/vitals"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.prefix}/deadletter"

    def alert_topic(self, ward: str, bed: str) -> str:
        return f"{self.prefix}/alerts/{ward}/{bed}"

    def start(self, timeout_s: float = 10.0) -> None:
        self._worker.start()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            log.warning("MQTT broker %s:%d not reachable yet; retrying in the background",
                        self.host, self.port)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.queue.put(None)
        self._worker.join(timeout=10)

    def publish(self, topic: str, payload: dict, timeout_s: float = 10.0) -> None:
        """Publish JSON at QoS 1 and wait for the broker's PUBACK (the outbox's MQTT sender)."""
        info = self.client.publish(topic, json.dumps(payload), qos=1)
        info.wait_for_publish(timeout=timeout_s)
        if not info.is_published():
            raise ConnectionError(f"no PUBACK for {topic} within {timeout_s} s (rc {info.rc})")

    # -- paho callbacks (network thread: never block on work) ----------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect to %s:%d refused: %s", self.host, self.port, reason_code)
            return
        client.subscribe(self.vitals_topic, qos=1)
        self.connected.set()
        log.info("MQTT bridge connected to %s:%d, subscribed to %s", self.host, self.port,
                 self.vitals_topic)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self.queue.put(message)  # blocks only when full: back-pressure to the broker

    # -- worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        while (message := self.queue.get()) is not None:
            try:
                self.handle(message.topic, message.payload)
            except Exception:  # noqa: BLE001 - one bad message must not stop the bridge
                log.exception("vitals message on %s failed", message.topic)
                self._dead_letter(message.topic, message.payload, "internal error while processing")
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)

    def handle(self, topic: str, payload: bytes) -> list[dict]:
        """Process one vitals payload; returns the stored resources (empty when dead-lettered)."""
        levels = topic.split("/")
        ward, bed = levels[-3], levels[-2]
        try:
            msg = parse_payload(payload)
        except PayloadError as exc:
            self._dead_letter(topic, payload, str(exc))
            return []
        patient_ref = patient_reference(msg.patient_id, msg.patient_system)
        device_ref = f"Device/{msg.device}" if msg.device else None
        result = score(msg.news2_input())
        resources = vital_observations(msg, patient_ref, device_ref)
        resources.append(news2_observation(result, msg, patient_ref))
        self.store.put_resources(resources)
        self.processed += 1
        rank = BAND_RANK[result.band]
        escalated = rank > self._alerted.get(patient_ref, 0)
        self._alerted[patient_ref] = rank if (escalated or rank == 0) else self._alerted[patient_ref]
        if escalated and self.outbox is not None:
            alert = {"patient": msg.patient_id, "ward": ward, "bed": bed, "time": msg.time.isoformat(),
                     "news2": result.total, "band": result.band.value, "complete": result.complete,
                     "missing": list(result.missing), "observation": resources[-1]["id"]}
            self.outbox.enqueue(f"alert:{resources[-1]['id']}", "mqtt", self.alert_topic(ward, bed), alert)
            log.info("NEWS2 %s (%d) for %s at %s/%s: alert queued", result.band.value, result.total,
                     msg.patient_id, ward, bed)
        return resources

    def _dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        log.warning("vitals payload on %s dead-lettered: %s", topic, reason)
        self.store.add_dead_letter(f"mqtt:{topic}", reason, payload)
        letter = {"topic": topic, "reason": reason,
                  "payload_base64": base64.b64encode(payload).decode("ascii")}
        self.client.publish(self.deadletter_topic, json.dumps(letter), qos=1)
