"""Where the bridge's batches are processed and committed: in its own process, or in N children.

The bridge (:mod:`iomt.bridge`) keeps one MQTT session and hands each bed's messages, in arrival
order, to the same worker (``iomt.workers``; :meth:`iomt.topics.Topics.partition`):

- :class:`LocalWorker` (one worker): the pipeline runs in the bridge's process, as one thread.
- :class:`ProcessWorker` (several): each partition is a child process (``spawn``) with its own
  SQLite connection, device registry, NEWS2 state and alert de-duplication, built from a
  picklable :class:`WorkerSpec`. A child that dies is started again and given the batch it had.

Either way a worker runs the pipeline over one batch, commits everything it produced in one
SQLite transaction (:func:`commit`), and returns a :class:`BatchResult`. Children take turns at
the database through one shared lock: SQLite alone would make a worker that finds the database
busy sleep 5, 10, ... 100 ms before trying again, straight onto the bridge's tail latency. The
lock only orders the commits; SQLite still guarantees them, so a child that dies holding it costs
the others at most :data:`COMMIT_LOCK_WAIT_S` before they commit without it. The commit does
not wait for the disk; the bridge fsyncs the write-ahead log after it, for the batches of every
worker at once, and acknowledges the messages only then. ADT messages go to every worker (each
keeps its own registry); a parked message is replayed by the worker that owns its topic.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from iomt.alerts import BAND_RANK, AlertPolicy
from iomt.config import IdentifierSystems, IomtConfig
from iomt.dead_letters import DeadLetter
from iomt.identity import DeviceRegistry
from iomt.pipeline import BatchOut, VitalsPipeline
from iomt.sink import ResourceSink
from iomt.state import StateTable
from iomt.store import FencedOut, ResourceTables, VitalsStore
from iomt.topics import Topics
from kernel import heap
from kernel.logs import JsonFormatter, configure

log = logging.getLogger("medgate.iomt")

_IOMT = IomtConfig()  # the ``iomt:`` section's defaults, the constructor's defaults
COMMIT_RETRY_MIN_S = 0.5  # first wait when the store refuses a batch (e.g. disk full, database down)
COMMIT_RETRY_MAX_S = 30.0  # the waits double up to this
RESTART_WAIT_S = 1.0  # wait before starting a child again after it died
READY_TIMEOUT_S = 120.0  # a child imports the pipeline and opens the store before it is ready
COMMIT_LOCK_WAIT_S = 5.0  # then commit without the lock (its holder may have died mid-commit)


@dataclass
class BatchResult:
    """What the bridge needs to know about one committed batch."""

    processed: int
    committed_at: float  # epoch seconds, just after the commit (the bridge: once durable)
    dead_letters: list[DeadLetter] = field(default_factory=list)  # to publish
    outbox: bool = False  # outbox rows were written: wake the outbox
    risk: list[tuple[str, float, list[tuple[str, float]]]] = field(default_factory=list)
    alerts: int = 0
    #: Commits the batch again, durably, retrying until the store takes it (False: given up):
    #: for a batch whose flush failed with the database's connection (its commit may be lost).
    #: None from a child process, whose batch is not kept.
    redo: Callable[[], bool] | None = None


def retry_wait_s(attempt: int) -> float:
    """The wait before the ``attempt``-th retry (1, 2, ...): doubling from
    :data:`COMMIT_RETRY_MIN_S` up to :data:`COMMIT_RETRY_MAX_S`."""
    return min(COMMIT_RETRY_MAX_S, COMMIT_RETRY_MIN_S * 2 ** min(attempt - 1, 16))


def commit(out: BatchOut, sink: ResourceSink, store, outbox=None, lock=None,
           durable: bool = True, give_up: threading.Event | None = None,
           fence: tuple[str, int] | None = None) -> bool:
    """Commit what one batch produced, in one transaction, retrying with backoff until the store
    takes it: nothing is acknowledged that is not stored, and the process stays up while the
    database is away. The transaction is committed holding ``lock`` (the children's commit
    lock, when given) without waiting for the disk; with ``durable`` it is then made durable
    (:meth:`kernel.database.Database.sync_log`), else the caller must do that before it
    acknowledges the batch (the bridge does, for several batches at once). Returns False, with
    nothing committed, when ``give_up`` is set meanwhile (the bridge was stopped: its messages
    stay unacknowledged at the broker), or when ``fence`` (a partition's lease epoch,
    :meth:`iomt.store.VitalsStore.commit_batch`) is no longer the partition's."""
    attempt = 0
    while True:
        try:
            locked = lock is not None and lock.acquire(timeout=COMMIT_LOCK_WAIT_S)
            try:
                sink.commit(out.resources, out.dead_letters, out.outbox_rows, out.beds.values(),
                            out.vitals, durable=False, contexts=out.contexts, replayed=out.replayed_ids,
                            fence=fence)
            finally:
                if locked:
                    lock.release()
            if durable:
                store.sync_log()
            break
        except FencedOut as exc:
            log.error("a batch of %d messages is not committed: %s", out.processed, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - never ack what is not stored; keep trying
            attempt += 1
            wait_s = retry_wait_s(attempt)
            if attempt == 1:
                log.exception("committing a batch of %d resources and %d vitals messages failed; "
                              "retrying with backoff, acknowledging nothing meanwhile",
                              len(out.resources), len(out.vitals))
            else:
                log.error("committing a batch failed again (attempt %d: %s); next try in %.1f s",
                          attempt, exc, wait_s)
            if give_up is not None:
                if give_up.wait(wait_s):
                    return False
            else:
                time.sleep(wait_s)
    if attempt:
        log.warning("a batch was committed after %d failed attempts", attempt)
    if out.outbox_rows and outbox is not None:
        outbox.notify()
    return True


def _result(out: BatchOut, risk: list | None = None) -> BatchResult:
    return BatchResult(processed=out.processed, committed_at=time.time(),
                       dead_letters=list(out.dead_letters),
                       outbox=bool(out.outbox_rows), risk=risk or [], alerts=out.alerts)


class LocalWorker:
    """The pipeline in the bridge's own process (one worker)."""

    def __init__(self, pipeline: VitalsPipeline, sink: ResourceSink, store,
                 fence: tuple[str, int] | None = None) -> None:
        self.pipeline, self.sink, self.store, self.fence = pipeline, sink, store, fence
        self.abandoned = threading.Event()  # set: a batch being retried is given up

    def start(self) -> None:
        pass

    def process(self, messages: list[tuple[str, bytes]]) -> BatchResult | None:
        """The batch's result once committed; None when the worker was abandoned first. A batch
        the database failed in the middle of (:meth:`iomt.pipeline.VitalsPipeline.run`) is run
        again, with backoff, from the state the store has (:meth:`~iomt.pipeline.VitalsPipeline.reset`)."""
        attempt = 0
        while True:
            try:
                if attempt:
                    self.pipeline.reset()
                out = self.pipeline.run(messages)
                break
            except Exception as exc:  # noqa: BLE001 - the database: nothing of the batch is kept
                attempt += 1
                wait_s = retry_wait_s(attempt)
                log.error("processing a batch of %d messages failed on the database (%s); running it "
                          "again in %.1f s from the stored state", len(messages), exc, wait_s)
                if self.abandoned.wait(wait_s):
                    return None
        # the bridge wakes the outbox
        if not commit(out, self.sink, self.store, durable=False, give_up=self.abandoned, fence=self.fence):
            return None
        result = _result(out)
        result.redo = lambda: commit(out, self.sink, self.store, durable=True, give_up=self.abandoned,
                                     fence=self.fence)
        return result

    def abandon(self) -> None:
        self.abandoned.set()

    def stop(self) -> None:
        pass


class _RiskSamples:
    """A child's stand-in for the risk scorer: the samples go back to the bridge's scorer."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, float, list[tuple[str, float]]]] = []

    def add(self, patient_ref: str, time_s: float, samples: list[tuple[str, float]]) -> None:
        self.samples.append((patient_ref, time_s, samples))

    def take(self) -> list[tuple[str, float, list[tuple[str, float]]]]:
        samples, self.samples = self.samples, []
        return samples


class _OutboxInParent:
    """A child has no outbox worker: ``BatchResult.outbox`` asks the bridge to wake its own."""

    def notify(self) -> None:
        pass


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a child process needs to build its pipeline (picklable).

    The child opens a :class:`iomt.store.VitalsStore` of its own on ``store_path`` with
    ``tables``, the (stateless) resource and outbox writer of the store the bridge was given: the
    bridge is handed its store by whoever wires it and names no class of the layer above.
    """

    store_path: Path
    tables: ResourceTables
    topic_prefix: str
    systems: IdentifierSystems
    staleness_s: float
    alerts_min_band: str
    alerts_repeat_after_s: float
    news2_interval_s: float
    fhir_base_url: str | None = None
    bundle_max_entries: int = _IOMT.bundle_max_entries
    risk: bool = False
    log_level: int = logging.INFO
    log_format: str = "text"  # kernel.logs formats: text or json

    @classmethod
    def of(cls, *, store: VitalsStore, topic_prefix: str, registry: DeviceRegistry, states: StateTable,
           alerts: AlertPolicy, sink: ResourceSink, news2_interval_s: float,
           risk: bool) -> "WorkerSpec":
        """The spec that rebuilds the parts the bridge was given, in a child."""
        band = next(b for b, rank in BAND_RANK.items() if rank == alerts.min_rank)
        return cls(store_path=Path(store.path), tables=store.tables, topic_prefix=topic_prefix,
                   systems=registry.systems, staleness_s=states.staleness_s,
                   alerts_min_band=band.value, alerts_repeat_after_s=alerts.repeat_after_s,
                   news2_interval_s=news2_interval_s, fhir_base_url=sink.base_url,
                   bundle_max_entries=sink.bundle_max_entries, risk=risk,
                   log_level=logging.getLogger("medgate").getEffectiveLevel(),
                   log_format="json" if any(isinstance(h.formatter, JsonFormatter)
                                            for h in logging.getLogger().handlers) else "text")

    def build(self, store, owns: Callable[[str], bool]) -> tuple[VitalsPipeline, ResourceSink]:
        sink = ResourceSink(store, _OutboxInParent() if self.fhir_base_url else None,
                            self.fhir_base_url, self.bundle_max_entries)
        pipeline = VitalsPipeline(
            Topics(self.topic_prefix), store, DeviceRegistry(store, self.systems),
            states=StateTable(self.staleness_s),
            alerts=AlertPolicy(self.alerts_min_band, self.alerts_repeat_after_s),
            risk=_RiskSamples() if self.risk else None, news2_interval_s=self.news2_interval_s,
            owns=owns)
        return pipeline, sink


def serve(spec: WorkerSpec, index: int, count: int, conn, commit_lock=None) -> None:
    """A child's main loop: receive a batch, process and commit it, send its result."""
    threading.current_thread().name = f"medgate-vitals-{index}"  # the thread of JSON log lines
    configure(logging.getLevelName(spec.log_level), spec.log_format)
    topics = Topics(spec.topic_prefix)
    store = VitalsStore.open(spec.store_path, spec.tables)
    store.defer_checkpoints()  # the bridge's WalCheckpointer runs them
    pipeline, sink = spec.build(store, lambda topic: topics.partition(topic, count) == index)
    heap.settle()  # a batch allocates ~40 containers a message and makes no cycles
    conn.send("ready")
    try:
        while True:
            try:
                messages = conn.recv()
            except EOFError:
                break
            if messages is None:
                break
            out = pipeline.run(messages)
            commit(out, sink, store, lock=commit_lock, durable=False)
            conn.send(_result(out, pipeline.risk.take() if pipeline.risk is not None else None))
    finally:
        store.close()


class ProcessWorker:
    """One partition in a child process; see the module docstring."""

    def __init__(self, spec: WorkerSpec, index: int, count: int, commit_lock=None) -> None:
        if not 0 <= index < count:
            raise ValueError(f"index must be in [0, {count}), {index} is given.")
        self.spec, self.index, self.count = spec, index, count
        self.commit_lock = commit_lock  # shared by the partitions' children: see the module docstring
        self._context = multiprocessing.get_context("spawn")  # never fork a threaded server
        self._proc = None
        self._conn = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        parent, child = self._context.Pipe()
        self._proc = self._context.Process(target=serve,
                                           args=(self.spec, self.index, self.count, child, self.commit_lock),
                                           name=f"medgate-vitals-{self.index}", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        try:
            ready = parent.poll(READY_TIMEOUT_S) and parent.recv() == "ready"
        except EOFError:
            raise RuntimeError(f"bridge worker {self.index} exited while starting (exit code "
                               f"{self._proc.exitcode}); its log says why") from None
        if not ready:
            raise RuntimeError(f"bridge worker {self.index} did not start within {READY_TIMEOUT_S} s")

    def process(self, messages: list[tuple[str, bytes]]) -> BatchResult:
        while True:
            try:
                self._conn.send(messages)
                return self._conn.recv()
            except (EOFError, OSError) as exc:
                log.error("bridge worker %d stopped (%s); starting it again with its batch of %d",
                          self.index, exc, len(messages))
                self._restart()

    def _restart(self) -> None:
        self._close()
        self.restarts += 1
        while True:
            time.sleep(RESTART_WAIT_S)
            try:
                self.start()
                return
            except Exception:  # noqa: BLE001 - keep trying: its messages are not acknowledged
                log.exception("starting bridge worker %d failed; retrying", self.index)
                self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()
            self._proc.join(10)
            self._proc = None

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
        if self._proc is not None:
            self._proc.join(timeout_s)
        self._close()

    def abandon(self) -> None:
        """Nothing: a child finishes the batch it has (its children's batches are not kept)."""

    def kill(self) -> None:
        """Kill the child at once (tests: a crash between batches)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(10)
