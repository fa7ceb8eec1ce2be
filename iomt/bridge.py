"""The MQTT vitals bridge: subscribe, partition by bed, process in batches, commit, then acknowledge.

Topics: :mod:`iomt.topics`. Processing: :mod:`iomt.pipeline`. Workers: :mod:`iomt.workers`.
Connection: :mod:`iomt.mqtt_client`.

One MQTT session (QoS 1, persistent) reads everything. ``on_message`` never blocks on work: it
appends the message to its bed's worker (:meth:`iomt.topics.Topics.partition`, ADT messages to
every worker) and returns; when ``queue_size`` messages are unacknowledged it waits, which stops
the network thread reading from the broker (back-pressure) instead of dropping. Each worker takes
up to ``batch_max_messages`` of its messages at a time, processes them in arrival order, and
commits everything the batch produced in one SQLite transaction (:func:`iomt.workers.commit`),
without waiting for the disk. One thread of the bridge then fsyncs the write-ahead log for every
batch committed meanwhile (:meth:`kernel.database.Database.sync_log`), so the workers go on with their
next batch during the fsync and one fsync covers all of them. Only then are the messages
acknowledged: in the order they arrived (MQTT 3.1.1 and 5.0 section 4.6), one write of PUBACKs
per batch. A crash before the commit leaves them unacknowledged, and
the persistent session makes the broker deliver them again; deterministic ids make that
redelivery an update.

Why not one MQTT session per worker on a shared subscription: a broker hands each message of a
shared subscription to any member (Mosquitto: round robin, message by message), so one bed's
messages would be spread over the workers and could commit out of order, and each worker would
see only part of a patient's values (NEWS2) and alerts. Several bridges may still share a
``mqtt.shared_group`` when each owns whole patients some other way (e.g. one site each). Several
nodes share the load by partitions of the topic space instead, each with a session of its own
(``subscriptions``; :mod:`iomt.partitions`).

When the store fails (the database away, a disk full) nothing is acknowledged and the process stays
up: a batch is committed again with backoff until the store takes it
(:func:`iomt.workers.commit`); one the database failed in the middle of is run again from the
state the store has (:meth:`iomt.workers.LocalWorker.process`); and one whose flush lost the
database server's connection is committed again, durably (:meth:`VitalsBridge._redo`). Meanwhile
the full ledger stops reading from the broker, which keeps the rest. A failed flush of the SQLite
file is different: the kernel may have dropped the pages, so the bridge acknowledges nothing
more until it is restarted.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
from collections import deque
from typing import Callable, Sequence
from urllib.parse import urlparse

from iomt import dead_letters, vital_records
from iomt.alerts import AlertPolicy
from iomt.config import IomtConfig, MqttConfig
from iomt.identity import DeviceRegistry, patient_reference
from iomt.mqtt_client import MqttOptions, connect_async, make_client
from iomt.pipeline import BatchOut, VitalsPipeline
from iomt.sink import ResourceSink
from iomt.state import StateTable
from iomt.topics import Topics
from iomt.workers import BatchResult, LocalWorker, ProcessWorker, WorkerSpec, commit
from kernel.wal_checkpoint import WalCheckpointer

__all__ = ["VitalsBridge", "broker_address", "patient_reference"]

log = logging.getLogger("medgate.iomt")

_MQTT, _IOMT = MqttConfig(), IomtConfig()  # the sections' defaults, the constructor's defaults
DEFAULT_SYSTEMS = _IOMT.identifiers  # iomt.identifiers' defaults
ROUTE_CACHE_SIZE = 100_000  # topics whose worker is remembered
MQTT_PORT, MQTTS_PORT = 1883, 8883  # IANA service names "mqtt" and "secure-mqtt"


def broker_address(url: str | None, embedded_port: int,
                   embedded_host: str = _MQTT.embedded_host) -> tuple[str, int, bool]:
    """(host, port, tls) of the broker: ``url`` when given, else the embedded broker."""
    if url is None:
        return embedded_host, embedded_port, False
    parsed = urlparse(url)
    tls = parsed.scheme == "mqtts"
    return parsed.hostname or embedded_host, parsed.port or (MQTTS_PORT if tls else MQTT_PORT), tls


class Received:
    """One message between arrival and acknowledgement; ``waiting``: workers yet to commit it."""

    __slots__ = ("mid", "qos", "topic", "payload", "waiting")

    def __init__(self, mid: int, qos: int, topic: str, payload: bytes, waiting: int) -> None:
        self.mid, self.qos, self.topic, self.payload, self.waiting = mid, qos, topic, payload, waiting


class VitalsBridge:
    """Connects to the broker and turns vitals payloads into stored FHIR resources.

    Parameters
    ----------
    Each default is the ``mqtt:`` or ``iomt:`` section's (:mod:`iomt.config`).

    host, port
        The broker.
    topic_prefix, shared_group
        See :class:`iomt.topics.Topics`.
    store
        :class:`iomt.store.VitalsStore`.
    outbox
        :class:`serving.delivery.outbox.Outbox` for alerts (and Bundles); None sends no alerts.
    options
        :class:`iomt.mqtt_client.MqttOptions`; ``tls=True`` alone keeps the old meaning.
    queue_size
        Messages received and not yet acknowledged, at most (then reading stops).
    sink, registry, states, alerts, risk
        Pipeline parts; defaults: local store, a registry over ``store``, one-hour staleness,
        alerts from low-medium repeated hourly, no risk model.
    workers
        ``iomt.workers``: 1 processes in this process; more start that many child processes,
        each owning the beds :meth:`iomt.topics.Topics.partition` gives it (``store`` must then
        be a file the children can open, and the parts are rebuilt there from their settings).
    on_commit
        Called after each committed batch, once it is durable and acknowledged, with
        ``(messages, durable_time_s, worker_index)`` (monitoring); each message has ``topic``,
        ``payload``, ``mid`` and ``qos``; an ADT message is in a batch of every worker.
    subscriptions
        The topic filters to subscribe to; default :meth:`iomt.topics.Topics.subscriptions`
        (everything). A partition's bridge (:mod:`iomt.partitions`) subscribes to its own.
    owns
        With one worker: which topics' ADT resources, bad ADT messages and parked messages are
        this bridge's (:class:`iomt.pipeline.VitalsPipeline`); default: all.
    checkpoints
        Whether this bridge runs a SQLite store's WAL checkpoints (:class:`kernel.wal_checkpoint.WalCheckpointer`);
        False where the process runs them once for several bridges.
    fence
        With one worker: ``(partition, lease epoch)``; each batch is committed only while that
        epoch is the partition's (:meth:`iomt.store.VitalsStore.commit_batch`), else the bridge
        stops committing and acknowledging.
    """

    def __init__(self, host: str, port: int, *, topic_prefix: str, store, outbox=None,
                 client_id: str = _MQTT.client_id, tls: bool = False, queue_size: int = _MQTT.queue_size,
                 options: MqttOptions | None = None, shared_group: str | None = None,
                 sink: ResourceSink | None = None, registry: DeviceRegistry | None = None,
                 states: StateTable | None = None, alerts: AlertPolicy | None = None, risk=None,
                 batch_max_messages: int = _IOMT.batch_max_messages,
                 news2_interval_s: float = _IOMT.news2_interval_s, workers: int = _IOMT.workers,
                 on_commit: Callable[[list[Received], float, int], None] | None = None,
                 subscriptions: Sequence[str] | None = None, owns: Callable[[str], bool] | None = None,
                 checkpoints: bool = True, fence: tuple[str, int] | None = None) -> None:
        if batch_max_messages < 1:
            raise ValueError(f"batch_max_messages must be >= 1, {batch_max_messages} is given.")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, {queue_size} is given.")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, {workers} is given.")
        if (owns is not None or fence is not None) and workers > 1:
            raise ValueError(f"owns and fence need one worker (each of several owns its own beds), "
                             f"{workers} are given.")
        if subscriptions is not None and not subscriptions:
            raise ValueError("subscriptions must name at least one topic filter, none is given.")
        self.host, self.port = host, port
        self.topics = Topics(topic_prefix, shared_group)
        self.subscriptions = list(subscriptions) if subscriptions is not None else self.topics.subscriptions()
        self.prefix = topic_prefix
        self.store, self.outbox, self.risk = store, outbox, risk
        self.options = options or MqttOptions(tls=tls, receive_maximum=queue_size)
        self.sink = sink or ResourceSink(store, outbox)
        self.registry = registry or DeviceRegistry(store, DEFAULT_SYSTEMS)
        states, alerts = states or StateTable(), alerts or AlertPolicy()
        self.pipeline: VitalsPipeline | None = None  # the in-process pipeline (one worker)
        if workers == 1:
            self.pipeline = VitalsPipeline(self.topics, store, self.registry, states=states,
                                           alerts=alerts, risk=risk,
                                           news2_interval_s=news2_interval_s, owns=owns)
            self.workers: list[LocalWorker | ProcessWorker] = [
                LocalWorker(self.pipeline, self.sink, store, fence)]
        else:
            spec = WorkerSpec.of(store=store, topic_prefix=topic_prefix, registry=self.registry,
                                 states=states, alerts=alerts, sink=self.sink,
                                 news2_interval_s=news2_interval_s, risk=risk is not None)
            commit_lock = multiprocessing.get_context("spawn").Lock()
            self.workers = [ProcessWorker(spec, i, workers, commit_lock) for i in range(workers)]
        writers_lock = commit_lock if workers > 1 else store.writer_lock
        self.batch_max_messages = batch_max_messages
        self.queue_size = queue_size
        self.on_commit = on_commit
        self.client = make_client(client_id, self.options)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_messages = self._on_messages
        self.connected = threading.Event()
        self.processed = 0
        self.batches = 0
        self._cond = threading.Condition()
        self._pending: list[list[Received]] = [[] for _ in self.workers]  # per worker, not sent
        self._ledger: deque[Received] = deque()  # arrival order, not yet acknowledged
        self._routes: dict[str, int] = {}
        self._stopping = self._disconnecting = self._abandoned = False
        self._feeders = [threading.Thread(target=self._feed, args=(i,), daemon=True,
                                          name=f"medgate-vitals-{i}")
                         for i in range(len(self.workers))]
        self._unsynced: list[tuple[int, list[Received], BatchResult]] = []  # committed, not durable
        self._sync_cond = threading.Condition()
        self._syncer = threading.Thread(target=self._sync, daemon=True, name="medgate-vitals-sync")
        self.sync_failed: Exception | None = None  # the flush that stopped the acknowledgements
        # no batch commit waits for a checkpoint; the writers wait only to let the log restart.
        # PostgreSQL runs its own checkpoints (and its "path" is a database name, not a file here)
        self.checkpointer = WalCheckpointer(store.path, lock=writers_lock) \
            if checkpoints and store.database.dialect == "sqlite" else None

    @property
    def deadletter_topic(self) -> str:
        return self.topics.deadletter

    def alert_topic(self, ward: str, bed: str) -> str:
        return self.topics.alert(ward, bed)

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect in the background; wait up to ``timeout_s`` (0: not at all) for the broker."""
        if self.checkpointer is not None:
            self.checkpointer.start()
            if self.pipeline is not None:
                self.store.defer_checkpoints()
        for worker in self.workers:
            worker.start()
        for feeder in self._feeders:
            feeder.start()
        self._syncer.start()
        connect_async(self.client, self.host, self.port, self.options)
        self.client.loop_start()
        if timeout_s > 0 and not self.connected.wait(timeout_s):
            log.warning("MQTT broker %s:%d not reachable yet; retrying in the background",
                        self.host, self.port)

    def stop(self) -> None:
        if not self._abandoned:
            self._disconnecting = True
            self.client.disconnect()
            self.client.loop_stop()  # feeders keep committing: a full ledger drains meanwhile
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
        self._join()

    def abandon(self, graceful: bool = True) -> None:
        """Stop at once, acknowledging nothing more: what is not acknowledged stays in the
        broker's session for whoever connects with this client id next (a partition's lease was
        lost, :mod:`iomt.partitions`). No batch is started; one being committed is finished, or
        given up while it waits for the database. ``graceful``: send DISCONNECT (the persistent
        session stays); False: close the connection without it, as a crash does (tests)."""
        with self._cond:
            self._abandoned = self._stopping = True
            self._ledger.clear()
            for pending in self._pending:
                pending.clear()
            self._cond.notify_all()
        for worker in self.workers:
            worker.abandon()
        with self._sync_cond:
            self._sync_cond.notify_all()
        self._disconnecting = True
        if graceful:
            self.client.disconnect()
            self.client.loop_stop()
        else:
            self.client.loop_stop()  # the loop still writes the acknowledgements queued before
            sock = self.client.socket()
            if sock is not None:
                sock.close()
        self.connected.clear()

    def _join(self) -> None:
        for feeder in (*self._feeders, self._syncer):  # the syncer ends once the feeders have
            if feeder.is_alive():
                feeder.join(timeout=30)
        for worker in self.workers:
            worker.stop()
        if self.checkpointer is not None:
            self.checkpointer.stop()

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
        subscriptions = self.subscriptions
        client.subscribe([(topic, 1) for topic in subscriptions])
        log.info("MQTT bridge connected to %s:%d (session present: %s), subscribing to %s",
                 self.host, self.port, flags.session_present, ", ".join(subscriptions))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """Connected once the broker's SUBACK grants the subscriptions: messages published before
        it would not reach a new (clean) session, so readiness waits for it."""
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("MQTT broker %s:%d refused subscriptions: %s", self.host, self.port, ", ".join(refused))
            return
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if self._disconnecting:
            return
        log.warning("MQTT bridge disconnected from %s:%d (%s); reconnecting with backoff",
                    self.host, self.port, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # paho's MQTTMessage; a broker should have refused it
            topic = bytes(getattr(message, "_topic", b"")).decode("utf-8", "replace")
        self._queue([(message, topic)])

    def _on_messages(self, client, userdata, messages) -> None:
        """The whole PUBLISH packets of one socket read (:class:`iomt.mqtt_client.BridgeClient`)."""
        self._queue([(message, message.topic) for message in messages])

    def _queue(self, messages: list) -> None:
        """Route to the workers, in arrival order; waits while the ledger is full (a read's
        messages go in together, so it may exceed ``queue_size`` by one read)."""
        workers, routes, queued = len(self.workers), self._routes, []
        for message, topic in messages:
            if self.topics.is_adt(topic):
                targets = range(workers)  # every worker's registry follows the ADT feed
            else:
                route = routes.get(topic)
                if route is None:
                    route = self.topics.partition(topic, workers)
                    if len(topic) <= self.topics.max_topic_chars:  # never cache a 64 KiB topic
                        if len(routes) >= ROUTE_CACHE_SIZE:
                            routes.clear()
                        routes[topic] = route
                targets = (route,)
            queued.append((Received(message.mid, message.qos, topic, message.payload,
                                    len(targets)), targets))
        with self._cond:
            while len(self._ledger) >= self.queue_size and not self._stopping:
                self._cond.wait()  # back-pressure: the broker keeps what is not read
            if self._abandoned:
                return  # never acknowledged: the session's next holder gets them
            for received, targets in queued:
                self._ledger.append(received)
                for target in targets:
                    self._pending[target].append(received)
            self._cond.notify_all()

    # -- feeders: one thread per worker --------------------------------------------------------
    def _feed(self, index: int) -> None:
        pending, worker = self._pending[index], self.workers[index]
        while True:
            with self._cond:
                while not pending and not self._stopping:
                    self._cond.wait()
                if not pending or self._abandoned:
                    return
                batch = pending[:self.batch_max_messages]
                del pending[:self.batch_max_messages]
            result = worker.process([(m.topic, m.payload) for m in batch])
            if result is None:
                return  # abandoned while the database was away: nothing of it is acknowledged
            with self._sync_cond:
                self._unsynced.append((index, batch, result))
                self._sync_cond.notify()

    def _sync(self) -> None:
        """Make the committed batches durable, one fsync for all that are there, and then
        acknowledge them (the workers commit without waiting for the disk: :func:`commit`)."""
        while True:
            with self._sync_cond:
                while not self._unsynced and not (self._stopping and self._feeders_done()):
                    self._sync_cond.wait(0.5)
                if not self._unsynced:
                    return
                done, self._unsynced = self._unsynced, []
            try:
                self.store.sync_log()
            except OSError as exc:
                # After a failed flush Linux may drop the pages and report the next one a success:
                # never acknowledge them. Unacknowledged, the broker delivers them again once the
                # bridge is restarted; meanwhile the full ledger stops reading (back-pressure).
                self.sync_failed = exc
                log.critical("flushing the store's write-ahead log failed (%s): the vitals bridge "
                             "acknowledges nothing more until it is restarted", exc)
                return
            except Exception as exc:  # noqa: BLE001 - the database server's connection was lost
                if not self._redo(done, exc):
                    return
            synced_at = time.time()
            for index, batch, result in done:
                result.committed_at = synced_at
                self._committed(index, batch, result)

    def _redo(self, done: list[tuple[int, list[Received], BatchResult]], exc: Exception) -> bool:
        """The flush failed with the database server's connection (PostgreSQL): the batches'
        commits, made without waiting for the server's disk, may be lost with it. Commit each
        again, durably and in order, once the database answers (deterministic ids make that an
        update); meanwhile nothing is acknowledged and the full ledger stops reading. False:
        given up (the bridge was abandoned, or a child process's batch, which is not kept)."""
        log.error("flushing %d committed batches failed (%s): committing them again once the "
                  "database answers, acknowledging nothing meanwhile", len(done), exc)
        for _, _, result in done:
            if result.redo is None:
                self.sync_failed = exc
                log.critical("a worker process's batch cannot be committed again: the vitals bridge "
                             "acknowledges nothing more until it is restarted")
                return False
            if not result.redo():
                return False
        return True

    def _feeders_done(self) -> bool:
        return not any(feeder.is_alive() for feeder in self._feeders)

    def _committed(self, index: int, batch: list[Received], result: BatchResult) -> None:
        mids = []
        with self._cond:
            if self._abandoned:
                return  # the lease is gone: the next holder is delivered these again
            for message in batch:
                message.waiting -= 1
            ledger = self._ledger
            while ledger and ledger[0].waiting == 0:  # acknowledge in arrival order
                message = ledger.popleft()
                if message.qos:
                    mids.append(message.mid)
            self.client.ack_many(mids)
            self.processed += result.processed
            self.batches += 1
            self._cond.notify_all()
        if result.outbox and self.outbox is not None:
            self.outbox.notify()
        if self.risk is not None:
            for sample in result.risk:
                self.risk.add(*sample)
        for letter in result.dead_letters:  # bounded: iomt.dead_letters
            self.client.publish(self.deadletter_topic, json.dumps(dead_letters.message(letter)),
                                qos=1)
        if self.on_commit is not None:
            self.on_commit(batch, result.committed_at, index)

    # -- without MQTT (one worker) -------------------------------------------------------------
    def _commit(self, out: BatchOut) -> None:
        commit(out, self.sink, self.store, self.outbox)

    def handle(self, topic: str, payload: bytes) -> list[dict]:
        """Process and commit one message outside MQTT; returns the resources it produced."""
        if self.pipeline is None:
            raise RuntimeError("handle() needs the in-process pipeline (workers: 1); with more "
                               "workers publish the message to the broker instead.")
        out = self.pipeline.run([(topic, payload)])
        self._commit(out)
        self.processed += out.processed
        return vital_records.observations(out.vitals) + out.resources
