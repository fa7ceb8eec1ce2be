"""Several bridge nodes: one vitals bridge per partition of the topic space this node leases.

The topic space is split into partitions (``iomt.partitions``: wards, or one site's wards,
:class:`iomt.topics.Partition`). Each is a named lease (``bridge/{partition}``) in the shared
database, held by one node at a time (:class:`kernel.leases.LeaseKeeper`: each node takes its fair
share). For each partition it holds, a node runs one :class:`iomt.bridge.VitalsBridge` with an MQTT
session of the partition's own:

- client id ``{mqtt.client_id}-{partition}`` (:func:`client_id`), the same on every node, and a
  persistent session (MQTT 3.1.1 ``clean_session=False``; MQTT 5 ``clean_start=False`` with a
  Session Expiry Interval above 0, :mod:`iomt.mqtt_client`): while no node holds the partition,
  the broker queues its QoS 1 messages in that session, and the next holder is delivered them
  (with the ones the last holder had received and not acknowledged) when it connects;
- subscriptions to the partition's vitals topics alone (:meth:`iomt.topics.Partition.vitals_filters`)
  and to ``{prefix}/adt``: every partition's session receives every ADT message.

**One bed's order.** A bed's topics belong to one partition, so to one session, one node and one
worker at a time. When a node loses a lease (not renewed in time by its own clock, or shed to
another node) its bridge stops at once and acknowledges nothing more (:meth:`VitalsBridge.abandon`):
the broker keeps what was not acknowledged for the next holder. Each batch is committed only
while the node's lease epoch is the partition's (``partition_fences``,
:meth:`iomt.store.VitalsStore.commit_batch`): a node that lost the lease while paused (a long GC
pause, a stalled network) can no longer write that partition's batches after the next holder
has started.

**Taking over.** Before a new holder's bridge takes a message, the NEWS2 state and the last alert
of the patients in the partition's beds are rebuilt from the store (:mod:`iomt.rebuild`), and the
device associations are read again: a message the last holder committed but did not
acknowledge is stored again (the same ids) without being scored or alerted twice.

**ADT.** Device associations live in the store and in each node's one
:class:`iomt.identity.DeviceRegistry`, which all its partitions share. An ADT message reaches every
partition's session; each applies it to the registry (an event not newer than the device's
association changes nothing) and replays the messages parked for the device from its own topics;
the first configured partition alone stores its Patient and Device and dead-letters a bad one.
Associations applied on other nodes (their ADT, the HL7 listener) are read from the store every
``iomt.registry_refresh_s`` and at each takeover.

**The database lost.** A batch is committed again with backoff until the database takes it and
only then acknowledged (:func:`iomt.workers.commit`); a flush the server's connection lost is
committed again, durably (:meth:`VitalsBridge._redo`). The leases cannot be renewed meanwhile: after
``iomt.partition_lease_ttl_s`` the node stops its bridges without acknowledging, and once the
database answers it takes its share again; either way the broker still holds every message not
acknowledged.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

from iomt import rebuild
from iomt.bridge import VitalsBridge
from iomt.identity import DeviceRegistry
from iomt.topics import Partition, Topics
from kernel.leases import LeaseKeeper
from kernel.periodic import PeriodicWorker
from kernel.wal_checkpoint import WalCheckpointer

log = logging.getLogger("medgate.iomt")

LEASE_PREFIX = "bridge/"  # lease names: bridge/{partition}
#: Characters kept as they are in a partition's client id (the MQTT 3.1.1 section 3.1.3.1 set
#: every server accepts, with '-', '_' and '.'); others become '-', and the name's CRC-32 is added.
CLIENT_ID_SAFE = re.compile(r"[^0-9A-Za-z._-]")
STOP_TIMEOUT_S = 30.0  # a lost partition's bridge finishing its batch


def client_id(base: str, partition: Partition) -> str:
    """The partition's MQTT client id, the same on every node: ``{base}-{partition}`` with
    characters outside ``[0-9A-Za-z._-]`` replaced by ``-`` and, when any was, the CRC-32 of the
    name added (``h1/icu``: ``{base}-h1-icu-1a2b3c4d``), so two partitions never share one."""
    name = partition.name
    safe = CLIENT_ID_SAFE.sub("-", name)
    if safe != name:
        safe += f"-{zlib.crc32(name.encode('utf-8')):08x}"
    return f"{base}-{safe}"


@dataclass(frozen=True)
class PartitionSpec:
    """What :class:`PartitionSupervisor` asks its bridge factory for: one partition's bridge."""

    partition: Partition
    client_id: str
    subscriptions: tuple[str, ...]
    owns: Callable[[str], bool]  # the topics whose ADT resources and parked messages are its
    fence: tuple[str, int] | None  # (partition, lease epoch): see iomt.store.VitalsStore.commit_batch


BridgeFactory = Callable[[PartitionSpec], VitalsBridge]


class _Connected:
    """``is_set()``: every running partition bridge is connected (none running: True, a standby)."""

    def __init__(self, supervisor: "PartitionSupervisor") -> None:
        self._supervisor = supervisor

    def is_set(self) -> bool:
        return all(b.connected.is_set() for b in self._supervisor.bridges().values())


class _RegistryRefresh(PeriodicWorker):
    """Reads the device associations again every ``interval_s`` (those other nodes applied)."""

    worker_name = "medgate-registry-refresh"

    def __init__(self, registry: DeviceRegistry, interval_s: float) -> None:
        super().__init__(interval_s)
        self.registry = registry
        self.failing = False

    def tick(self) -> None:
        try:
            self.registry.reload()
        except Exception as exc:  # noqa: BLE001 - the database away: logged once, tried again
            if not self.failing:
                log.warning("reading the device associations failed (%s); retrying every %.1f s",
                            exc, self.interval_s)
            self.failing = True
            return
        self.failing = False


class PartitionSupervisor:
    """Runs one :class:`iomt.bridge.VitalsBridge` per partition this node leases (see the module
    docstring).

    Parameters
    ----------
    partitions
        ``iomt.partitions``: partition names or :class:`iomt.topics.Partition`; at least one.
    cluster, node_id, ttl_s
        The :class:`kernel.cluster.ClusterStore`, this node's id (the lease holder; the node
        should be a member, :class:`kernel.leases.Membership`, for the fair share to count it)
        and ``iomt.partition_lease_ttl_s``.
    store
        :class:`iomt.store.VitalsStore`, shared by the nodes.
    registry
        The node's :class:`iomt.identity.DeviceRegistry`, shared by its partitions' bridges.
    topic_prefix, client_id_base
        ``mqtt.topic_prefix`` and ``mqtt.client_id``.
    make_bridge
        Builds a partition's bridge (not started) from a :class:`PartitionSpec`; it must give
        the bridge ``registry``, one worker, and the spec's client id, subscriptions, ``owns``
        and ``fence`` (:func:`iomt.wiring.build_partitioned_bridge` does).
    registry_refresh_s
        ``iomt.registry_refresh_s``: the associations are read from the store this often.
    risk
        The node's risk scorer its bridges share (None: none); the caller starts and stops it.
    role
        The cluster role of the nodes that run partition bridges (the server's ``bridge`` role):
        the fair share counts only those; None counts every live node.
    keeper
        The lease keeper's class (:class:`kernel.leases.LeaseKeeper`; tests give a fake).
    """

    def __init__(self, partitions: Sequence[str | Partition], *, cluster, node_id: str, ttl_s: float,
                 store, registry: DeviceRegistry, topic_prefix: str, client_id_base: str,
                 make_bridge: BridgeFactory, registry_refresh_s: float = 5.0,
                 risk=None, role: str | None = None, keeper: type = LeaseKeeper) -> None:
        parsed = [p if isinstance(p, Partition) else Partition.parse(p) for p in partitions]
        if not parsed:
            raise ValueError("partitions must name at least one partition, none is given.")
        for i, first in enumerate(parsed):
            for second in parsed[i + 1:]:
                if first.overlaps(second):
                    raise ValueError(f"partitions must not overlap, {first.name!r} and {second.name!r} "
                                     f"are given.")
        self.partitions = {LEASE_PREFIX + p.name: p for p in parsed}
        self.store, self.registry, self.risk = store, registry, risk
        self.topics = Topics(topic_prefix)
        self.client_id_base = client_id_base
        self.make_bridge = make_bridge
        self.node_id = node_id
        self._adt_owner = parsed[0]
        self._lock = threading.Lock()
        self._bridges: dict[str, VitalsBridge] = {}  # lease name -> running bridge
        self._stopping: list[threading.Thread] = []
        self.keeper = keeper(cluster, node_id, list(self.partitions), ttl_s, self._acquired, self._lost,
                             role=role)
        self._refresh = _RegistryRefresh(registry, registry_refresh_s)
        # one checkpointer for the bridges of a SQLite store (their own are off: make_bridge)
        self._checkpointer = WalCheckpointer(store.path, lock=store.writer_lock) \
            if store.database.dialect == "sqlite" else None
        self.connected = _Connected(self)
        self.takeovers: list[tuple[str, float]] = []  # (partition, seconds to rebuild and start)

    # -- the node ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._checkpointer is not None:
            self.store.defer_checkpoints()
            self._checkpointer.start()
        self._refresh.start()
        self.keeper.start()

    def stop(self) -> None:
        """Stop every bridge (nothing more acknowledged) and release the leases."""
        self.keeper.stop(release=True)
        self._refresh.stop()
        self._join()
        if self._checkpointer is not None:
            self._checkpointer.stop()

    def halt(self) -> None:
        """Stop as a node that dies: every session closed without DISCONNECT, nothing more
        acknowledged, the leases left to expire (tests and drills)."""
        with self._lock:
            bridges, self._bridges = dict(self._bridges), {}
        for bridge in bridges.values():
            bridge.abandon(graceful=False)
        self.keeper.stop(release=False)
        self._refresh.stop()
        for bridge in bridges.values():
            bridge.stop()
        self._join()
        if self._checkpointer is not None:
            self._checkpointer.stop()

    def held(self) -> list[str]:
        """The partitions whose bridge runs here, by name."""
        with self._lock:
            return sorted(self.partitions[name].name for name in self._bridges)

    def bridges(self) -> dict[str, VitalsBridge]:
        """The running bridges by partition name."""
        with self._lock:
            return {self.partitions[name].name: b for name, b in self._bridges.items()}

    @property
    def processed(self) -> int:
        return sum(b.processed for b in self.bridges().values())

    def publish(self, topic: str, payload: dict, timeout_s: float = 10.0) -> None:
        """Publish through a connected partition bridge (the outbox's MQTT sender)."""
        for bridge in self.bridges().values():
            if bridge.connected.is_set():
                bridge.publish(topic, payload, timeout_s)
                return
        raise ConnectionError(f"no partition bridge of node {self.node_id} is connected to publish {topic}")

    # -- the keeper's callbacks (its thread, one at a time) -------------------------------------
    def spec(self, lease: str) -> PartitionSpec:
        partition = self.partitions[lease]
        epoch = self.keeper.epochs.get(lease)
        return PartitionSpec(
            partition=partition, client_id=client_id(self.client_id_base, partition),
            subscriptions=(*partition.vitals_filters(self.topics.prefix), self.topics.adt),
            owns=self._owner(partition), fence=None if epoch is None else (partition.name, epoch))

    def _owner(self, partition: Partition) -> Callable[[str], bool]:
        topics, owns_adt = self.topics, partition == self._adt_owner

        def owns(topic: str) -> bool:
            if topics.is_adt(topic):
                return owns_adt
            try:
                return partition.holds(topics.location(topic))
            except ValueError:
                return False
        return owns

    def _acquired(self, lease: str) -> None:
        """Fence the partition with this node's epoch, rebuild its state from the store, then
        start its bridge; raising hands the lease back (:class:`kernel.leases.LeaseKeeper`)."""
        started = time.monotonic()
        spec = self.spec(lease)
        if spec.fence is not None and not self.store.fence_partition(*spec.fence):
            raise RuntimeError(f"partition {spec.partition.name} is fenced by a newer epoch than "
                               f"{spec.fence[1]}")
        bridge = self.make_bridge(spec)
        if bridge.pipeline is None:
            raise ValueError("a partition's bridge must have one worker (iomt.workers: 1)")
        self.registry.reload()
        rebuild.restore_partitions(self.store, [spec.partition], bridge.pipeline.states,
                                   bridge.pipeline.alerts)
        bridge.start(timeout_s=0)
        with self._lock:
            self._bridges[lease] = bridge
        took_s = time.monotonic() - started
        self.takeovers.append((spec.partition.name, took_s))
        log.info("partition %s: bridge started on node %s as MQTT client %s (%.3f s)",
                 spec.partition.name, self.node_id, spec.client_id, took_s)

    def _lost(self, lease: str) -> None:
        """Stop the partition's bridge at once, acknowledging nothing more; it finishes in the
        background."""
        with self._lock:
            bridge = self._bridges.pop(lease, None)
        if bridge is None:
            return
        bridge.abandon()
        stopper = threading.Thread(target=bridge.stop, daemon=True,
                                   name=f"medgate-partition-stop-{self.partitions[lease].name}")
        stopper.start()
        with self._lock:
            self._stopping = [t for t in self._stopping if t.is_alive()] + [stopper]
        log.warning("partition %s: bridge stopped on node %s (lease lost)", self.partitions[lease].name,
                    self.node_id)

    def _join(self) -> None:
        with self._lock:
            stopping, self._stopping = self._stopping, []
        for thread in stopping:
            thread.join(STOP_TIMEOUT_S)
