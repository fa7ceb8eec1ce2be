"""The MQTT vitals bridge: subscribe, queue, process in batches, commit, then acknowledge.

Topics: :mod:`iomt.topics`. Processing: :mod:`iomt.pipeline`. Connection: :mod:`iomt.mqtt_client`.

``on_message`` never blocks on work: messages go to a bounded queue; when it is full the network
thread waits, which stops reading from the broker (back-pressure) instead of dropping. The worker
drains up to ``batch_max_messages`` at a time, commits everything the batch produced in one SQLite
transaction (``executemany``), and only then sends the QoS 1 PUBACKs (manual ack, in arrival
order). A crash before the commit leaves the messages unacknowledged, and the persistent session
makes the broker deliver them again; deterministic ids make that redelivery an update.
"""
from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from typing import Callable
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from iomt.alerts import AlertPolicy
from iomt.identity import DeviceRegistry, IdentifierSystems, patient_reference
from iomt.mqtt_client import MqttOptions, connect_async, make_client
from iomt.pipeline import BatchOut, VitalsPipeline
from iomt.sink import ResourceSink
from iomt.state import StateTable
from iomt.topics import Topics

__all__ = ["VitalsBridge", "broker_address", "patient_reference"]

log = logging.getLogger("medgate.iomt")

DEFAULT_SYSTEMS = IdentifierSystems(citizen_id="http://fhir.hl7.org.vn/core/sid/cccd",
                                    social_insurance="http://fhir.hl7.org.vn/core/sid/bhyt",
                                    device="urn:medgate:device-serial")
COMMIT_RETRY_S = 0.5  # wait between attempts when the store refuses a batch (e.g. disk full)


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
    host, port
        The broker.
    topic_prefix, shared_group
        See :class:`iomt.topics.Topics`.
    store
        :class:`serving.store.Store`.
    outbox
        :class:`serving.outbox.Outbox` for alerts (and Bundles); None sends no alerts.
    options
        :class:`iomt.mqtt_client.MqttOptions`; ``tls=True`` alone keeps the old meaning.
    sink, registry, states, alerts, risk
        Pipeline parts; defaults: local store, a registry over ``store``, one-hour staleness,
        alerts from low-medium repeated hourly, no risk model.
    on_commit
        Called after each committed batch with ``(messages, commit_time_s)`` (monitoring).
    """

    def __init__(self, host: str, port: int, *, topic_prefix: str, store, outbox=None,
                 client_id: str = "medgate-bridge", tls: bool = False, queue_size: int = 20_000,
                 options: MqttOptions | None = None, shared_group: str | None = None,
                 sink: ResourceSink | None = None, registry: DeviceRegistry | None = None,
                 states: StateTable | None = None, alerts: AlertPolicy | None = None, risk=None,
                 batch_max_messages: int = 1000, news2_interval_s: float = 60.0,
                 on_commit: Callable[[list[mqtt.MQTTMessage], float], None] | None = None) -> None:
        if batch_max_messages < 1:
            raise ValueError(f"batch_max_messages must be >= 1, {batch_max_messages} is given.")
        self.host, self.port = host, port
        self.topics = Topics(topic_prefix, shared_group)
        self.prefix = topic_prefix
        self.store, self.outbox = store, outbox
        self.options = options or MqttOptions(tls=tls, receive_maximum=queue_size)
        self.sink = sink or ResourceSink(store, outbox)
        self.registry = registry or DeviceRegistry(store, DEFAULT_SYSTEMS)
        self.pipeline = VitalsPipeline(self.topics, store, self.registry,
                                       states=states or StateTable(),
                                       alerts=alerts or AlertPolicy(), risk=risk,
                                       news2_interval_s=news2_interval_s)
        self.batch_max_messages = batch_max_messages
        self.on_commit = on_commit
        self.queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(maxsize=queue_size)
        self.client = make_client(client_id, self.options)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.processed = 0
        self.batches = 0
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="medgate-vitals", daemon=True)

    @property
    def deadletter_topic(self) -> str:
        return self.topics.deadletter

    def alert_topic(self, ward: str, bed: str) -> str:
        return self.topics.alert(ward, bed)

    def start(self, timeout_s: float = 10.0) -> None:
        self._worker.start()
        connect_async(self.client, self.host, self.port, self.options)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            log.warning("MQTT broker %s:%d not reachable yet; retrying in the background",
                        self.host, self.port)

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        self.queue.put(None)
        self._worker.join(timeout=30)

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
        subscriptions = self.topics.subscriptions()
        client.subscribe([(topic, 1) for topic in subscriptions])
        self.connected.set()
        log.info("MQTT bridge connected to %s:%d (session present: %s), subscribed to %s",
                 self.host, self.port, flags.session_present, ", ".join(subscriptions))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if self._stopping:
            return
        log.warning("MQTT bridge disconnected from %s:%d (%s); reconnecting with backoff",
                    self.host, self.port, reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self.queue.put(message)  # blocks only when full: back-pressure to the broker

    # -- worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.batch_max_messages:
                try:
                    message = self.queue.get_nowait()
                except queue.Empty:
                    break
                if message is None:
                    stopping = True
                    break
                batch.append(message)
            self._process(batch)

    def _process(self, batch: list[mqtt.MQTTMessage]) -> None:
        out = self.pipeline.run([(m.topic, m.payload) for m in batch])
        self._commit(out)
        committed_at = time.time()
        for message in batch:
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)
        self.processed += out.processed
        self.batches += 1
        for source, reason, payload, _ in out.dead_letters:
            letter = {"topic": source.removeprefix("mqtt:"), "reason": reason,
                      "payload_base64": base64.b64encode(payload or b"").decode("ascii")}
            self.client.publish(self.deadletter_topic, json.dumps(letter), qos=1)
        if self.on_commit is not None:
            self.on_commit(batch, committed_at)

    def _commit(self, out: BatchOut) -> None:
        while True:
            try:
                self.sink.commit(out.resources, out.dead_letters, out.outbox_rows)
                break
            except Exception:  # noqa: BLE001 - never ack what is not stored; keep trying
                log.exception("committing a batch of %d resources failed; retrying",
                              len(out.resources))
                time.sleep(COMMIT_RETRY_S)
        if out.replayed_ids:
            self.store.mark_replayed(out.replayed_ids)
        if out.beds and hasattr(self.store, "record_beds"):
            try:
                self.store.record_beds(list(out.beds.values()))
            except Exception:  # noqa: BLE001 - the census is display state; never block the batch
                log.exception("recording the bed census failed")
        if out.outbox_rows and self.outbox is not None:
            self.outbox.notify()

    def handle(self, topic: str, payload: bytes) -> list[dict]:
        """Process and commit one message outside MQTT; returns the resources it produced."""
        out = self.pipeline.run([(topic, payload)])
        self._commit(out)
        self.processed += out.processed
        return out.resources
