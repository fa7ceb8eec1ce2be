"""Turning a batch of MQTT messages into FHIR resources, dead letters and alerts (no I/O).

The bridge drains its queue in batches and hands each batch here; :meth:`VitalsPipeline.run`
returns everything the batch produced, and the bridge commits it in one SQLite transaction
before acknowledging the messages. Per message:

1. ``{prefix}/adt``: apply the admission/transfer/discharge to the device registry, store the
   Patient and Device, and replay the messages parked for that device.
2. Vitals topics: decode (full, compact or ECG form); find the patient (in the payload, else the
   device's association; none: park as dead letter "unknown device", never guess); keep the
   message as one row whose vital-sign Observations are built when read
   (:mod:`iomt.vital_records`), or build the ECG Observation; merge into the patient's state
   and, for the patient's newest message, score NEWS2 from the latest values within the
   staleness window; alert per :class:`iomt.alerts.AlertPolicy`; feed the risk scorer.

Every newest message is scored; a NEWS2 Observation is written when the score (total, band,
completeness or a sub-score) changes, when it alerts, or ``news2_interval_s`` (measurement time)
after the last one written — a 1 Hz monitor does not need 3,600 identical scores an hour.

The vital-sign Observations, the NEWS2 Observation and the Flag name the patient as the imaging
DiagnosticReports do: the literal ``Patient/...`` reference and the identifier (the message's or
association's system, else ``iomt.identifiers.citizen_id``, the system the registry gives an ADT
patient without one); the vitals row keeps the identifier for its Observations.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from iomt import rebuild, vital_records
from iomt.alerts import AlertPolicy, alert_message, flag_resource
from iomt.compact import EcgChunk, decode
from iomt.config import IomtConfig
from iomt.dead_letters import DeadLetter, dead_letter
from iomt.identity import AdtEvent, DeviceRegistry, device_reference, parse_adt, patient_reference
from iomt.message_id import each_message
from iomt.observations import news2_observation, unix_us
from iomt.payload import PayloadError
from iomt.rebuild import Rebuilt
from iomt.state import CONSCIOUSNESS, ON_OXYGEN, StateTable
from iomt.topics import Topics
from iomt.waveforms import ecg_observation
from kernel.correlation import current_id
from kernel.logs import Untrusted

log = logging.getLogger("medgate.iomt")

_IOMT = IomtConfig()  # the ``iomt:`` section's defaults, the constructor's defaults
UNKNOWN_DEVICE = "unknown device"  # dead-letter reason of a parked message
REF_CACHE_SIZE = 100_000  # patient and device references remembered per pipeline
MQTT_KIND = "mqtt"  # outbox sender kind for alerts
CENSUS_REFRESH = timedelta(seconds=30)  # a bed's census row is rewritten at least this often
#: A patient's NEWS2 context (oxygen, consciousness) is rewritten at least this often while sent
CONTEXT_REFRESH = timedelta(seconds=60)


@dataclass
class BatchOut:
    """What one batch produced."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    vitals: list[tuple] = field(default_factory=list)  # iomt.vital_records rows
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outbox_rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    replayed_ids: list[int] = field(default_factory=list)
    beds: dict[tuple[str, str], tuple] = field(default_factory=dict)  # (ward, bed) -> census row
    contexts: list[tuple] = field(default_factory=list)  # iomt.store.News2Context rows
    alerts: int = 0
    processed: int = 0


def context_row(patient_ref: str, oxygen: tuple[datetime, bool] | None,
                conscious: tuple[datetime, Any] | None, alert: tuple[datetime, Any] | None) -> tuple:
    """The ``news2_context`` row (:class:`iomt.store.News2Context`, without ``updated_at``)
    of a patient's latest oxygen and consciousness ``(measured, value)`` and last alert
    ``(time, band)``."""
    return (patient_ref,
            None if oxygen is None else int(oxygen[1]), None if oxygen is None else unix_us(oxygen[0]),
            None if conscious is None else getattr(conscious[1], "value", conscious[1]),
            None if conscious is None else unix_us(conscious[0]),
            None if alert is None else unix_us(alert[0]),
            None if alert is None else getattr(alert[1], "value", alert[1]))


def _score_key(result) -> tuple:
    """What makes two NEWS2 results the same score (total, band, completeness, sub-scores)."""
    return result.total, result.band, result.complete, tuple(result.scores.items())


class VitalsPipeline:
    """Stateful message processing; see the module docstring. Not thread-safe: one worker.

    ``owns(topic)`` says which topics this pipeline's worker owns when the bridge has several
    (:mod:`iomt.workers`): every worker applies each ADT message to its own registry, but only
    the owner of a topic stores the ADT resources, dead-letters a bad ADT message or replays a
    message parked from that topic. None: this pipeline owns everything.
    """

    def __init__(self, topics: Topics, store, registry: DeviceRegistry, *, states: StateTable,
                 alerts: AlertPolicy, risk=None, news2_interval_s: float = _IOMT.news2_interval_s,
                 owns: Callable[[str], bool] | None = None) -> None:
        if news2_interval_s < 0:
            raise ValueError(f"news2_interval_s must be >= 0, {news2_interval_s} is given.")
        self.topics, self.store, self.registry = topics, store, registry
        self.states, self.alerts, self.risk = states, alerts, risk
        self.owns = owns
        self.news2_interval_s = news2_interval_s
        # patient -> (time, score key, result) of the NEWS2 Observation written last
        self._news2_written: dict[str, tuple[datetime, tuple, Any]] = {}
        self._patient_refs: dict[tuple[str, str | None], str] = {}
        self._device_refs: dict[str, str] = {}
        self._beds: dict[tuple[str, str], tuple[str, str | None, datetime]] = {}  # census: due
        self._database_errors: tuple[type[Exception], ...] = getattr(store, "errors", ())
        # patient -> (oxygen, consciousness, alert, due) of the NEWS2 context row written last
        self._contexts: dict[str, tuple[Any, Any, Any, datetime]] = {}

    def run(self, messages: list[tuple[str, bytes]]) -> BatchOut:
        """What ``messages`` produce. A database error (an ADT message's association, the
        messages parked for its device) is raised, not dead-lettered: the batch is then run again
        after :meth:`reset`, once the database answers."""
        out = BatchOut()
        for topic, payload in each_message(messages):  # each message's lines carry its id
            try:
                self.handle(topic, payload, out)
            except self._database_errors:
                raise
            except Exception:  # noqa: BLE001 - one bad message must not stop the bridge
                log.exception("message on %s failed", Untrusted(topic))
                self._dead(out, topic, payload, "internal error while processing")
        return out

    def handle(self, topic: str, payload: bytes, out: BatchOut) -> None:
        if self.topics.is_adt(topic):
            self._adt(topic, payload, out)
            return
        try:
            location = self.topics.location(topic)
            msg = decode(payload)
        except (PayloadError, ValueError) as exc:
            self._dead(out, topic, payload, str(exc))
            return
        device = msg.device or location.device
        scale = getattr(msg, "spo2_scale", 1)  # an ECG chunk has none
        patient_id, patient_system = msg.patient_id, msg.patient_system
        if patient_id is None:
            assoc = self.registry.lookup(device)
            if assoc is None:
                self._dead(out, topic, payload, UNKNOWN_DEVICE, device)
                return
            patient_id, patient_system = assoc.patient_id, assoc.patient_system
            scale = max(scale, assoc.spo2_scale)  # scale 2 when the ADT or the payload says so
        patient_ref = self._patient_ref(patient_id, patient_system)
        # beside the reference, the identifier: a patient sent without a system is in the
        # citizen-id system, as DeviceRegistry.apply records an ADT one
        system = patient_system or self.registry.systems.citizen_id
        if location.ward and location.bed:  # the bed census of the dashboard's ward board
            self._census(out, location, patient_ref, device, msg.time)
        if isinstance(msg, EcgChunk):
            out.resources.append(ecg_observation(msg, patient_ref, self._device_ref(device) if device else None,
                                                 {"system": system, "value": patient_id}))
            out.processed += 1
            return
        out.vitals.append(vital_records.record(msg, patient_ref, device, (system, patient_id)))
        out.processed += 1
        if self.risk is not None:
            self.risk.add(patient_ref, msg.time.timestamp(),
                          [(v.loinc, v.value) for v in msg.vitals])
        snapshot = self.states.update(patient_ref, msg, scale)
        if snapshot is None:
            if msg.on_oxygen is not None or msg.consciousness is not None:
                self._context(out, patient_ref, msg.time)
            return  # a late message: stored, but never overrides the newer state
        result = snapshot.score()
        decision = self.alerts.decide(patient_ref, result, msg.time)
        if decision is not None or msg.on_oxygen is not None or msg.consciousness is not None:
            self._context(out, patient_ref, msg.time)
        last = self._news2_written.get(patient_ref)
        if decision is None and last is not None \
                and (msg.time - last[0]).total_seconds() < self.news2_interval_s \
                and (last[2] is result or last[1] == _score_key(result)):
            return  # same score, written recently: no new NEWS2 Observation
        self._news2_written[patient_ref] = (msg.time, _score_key(result), result)
        identifier = {"system": system, "value": patient_id}
        news2 = news2_observation(result, msg, patient_ref, snapshot.measured, patient_identifier=identifier)
        out.resources.append(news2)
        if decision is None:
            return
        flag = flag_resource(patient_ref, result, msg.time, decision, news2["id"], patient_identifier=identifier)
        out.resources.append(flag)
        where = {"site": location.site, "ward": location.ward, "bed": location.bed}
        alert = alert_message(patient_id=patient_id, patient_ref=patient_ref, location=where,
                              device=device, result=result, at=msg.time, decision=decision,
                              news2_id=news2["id"], flag=flag["id"])
        out.outbox_rows.append((f"alert:{news2['id']}", MQTT_KIND,
                                self.topics.alert(location.ward, location.bed), json.dumps(alert),
                                current_id()))
        out.alerts += 1
        log.info("NEWS2 %s (%d) for %s at %s/%s: %s alert queued", result.band.value, result.total,
                 Untrusted(patient_id), Untrusted(location.ward), Untrusted(location.bed),
                 decision.reason)

    def _census(self, out: BatchOut, location, patient_ref: str, device: str | None,
                at: datetime) -> None:
        """Rewrite the bed's census row when its patient or device changes, or when
        ``CENSUS_REFRESH`` of measurement time has passed since it was written: one row a
        message would be most of the bridge's writes to the database."""
        bed = (location.ward, location.bed)
        held = self._beds.get(bed)
        if held is not None and held[0] == patient_ref and held[1] == device and at < held[2]:
            return
        if held is None and len(self._beds) >= REF_CACHE_SIZE:
            self._beds.clear()
        self._beds[bed] = (patient_ref, device, at + CENSUS_REFRESH)
        out.beds[bed] = (location.ward, location.bed, location.site, patient_ref, device,
                         at.isoformat())

    def reset(self) -> Rebuilt:
        """Forget what a batch that was not committed may have left in memory, and read back
        from the store the NEWS2 state and last alerts of the patients known so far
        (:mod:`iomt.rebuild`) and the device associations; raises while the store does not
        answer."""
        states, alerts = StateTable(self.states.staleness_s), self.alerts.empty_copy()
        rebuilt = rebuild.restore(self.store, self.states.patients(), states, alerts)
        self.registry.reload()
        self.states.replace(states)  # nothing is changed unless the store answered
        self.alerts.replace(alerts)
        self._news2_written.clear()
        self._contexts.clear()
        self._beds.clear()
        return rebuilt

    def _context(self, out: BatchOut, patient_ref: str, at: datetime) -> None:
        """Write the patient's NEWS2 context row (:class:`iomt.store.News2Context`) when its
        oxygen, consciousness or last alert changed, or ``CONTEXT_REFRESH`` of measurement time
        after the last write: what a node taking the partition over reads back
        (:mod:`iomt.rebuild`) beside the vitals rows."""
        state = self.states.get(patient_ref)
        values = state.values if state is not None else {}
        oxygen, conscious = values.get(ON_OXYGEN), values.get(CONSCIOUSNESS)
        alert = self.alerts.last(patient_ref)
        key = (oxygen and oxygen[1], conscious and conscious[1], alert)
        held = self._contexts.get(patient_ref)
        if held is not None and held[:3] == key and at < held[3]:
            return
        if held is None and len(self._contexts) >= REF_CACHE_SIZE:
            self._contexts.clear()
        self._contexts[patient_ref] = (*key, at + CONTEXT_REFRESH)
        out.contexts.append(context_row(patient_ref, oxygen, conscious, alert))

    def _patient_ref(self, patient_id: str, system: str | None) -> str:
        ref = self._patient_refs.get((patient_id, system))
        if ref is None:
            if len(self._patient_refs) >= REF_CACHE_SIZE:
                self._patient_refs.clear()
            ref = self._patient_refs[(patient_id, system)] = patient_reference(patient_id, system)
        return ref

    def _device_ref(self, device: str) -> str:
        ref = self._device_refs.get(device)
        if ref is None:
            if len(self._device_refs) >= REF_CACHE_SIZE:
                self._device_refs.clear()
            ref = self._device_refs[device] = device_reference(device)
        return ref

    def _adt(self, topic: str, payload: bytes, out: BatchOut) -> None:
        owner = self.owns is None or self.owns(topic)
        try:
            event: AdtEvent = parse_adt(payload)
        except PayloadError as exc:
            if owner:
                self._dead(out, topic, payload, str(exc))
            return
        assoc, resources = self.registry.apply(event)
        if owner:
            out.resources.extend(resources)
            out.processed += 1
        if assoc is None or assoc.device != event.device:
            return
        # Replay what was parked for this device: earlier batches (committed) and this one.
        pending = [d for d in out.dead_letters
                   if d.reason == UNKNOWN_DEVICE and d.device == event.device]
        out.dead_letters = [d for d in out.dead_letters if d not in pending]
        for letter in pending:
            self.handle(letter.source.removeprefix("mqtt:"), letter.payload, out)
        for row in self.store.parked(event.device):
            source = row["source"].removeprefix("mqtt:")
            if self.owns is not None and not self.owns(source):
                continue  # another worker's partition replays it
            out.replayed_ids.append(row["id"])
            self.handle(source, bytes(row["payload"]), out)
        if pending or out.replayed_ids:
            log.info("device %s associated with %s: replayed %d parked message(s)",
                     Untrusted(event.device), Untrusted(assoc.patient_ref),
                     len(pending) + len(out.replayed_ids))

    @staticmethod
    def _dead(out: BatchOut, topic: str, payload: bytes, reason: str, device: str | None = None) -> None:
        """Dead-letter ``payload`` (bounded: :mod:`iomt.dead_letters`); a parked message
        (``UNKNOWN_DEVICE``) is kept whole to be replayed."""
        log.warning("payload on %s dead-lettered: %s", Untrusted(topic), Untrusted(reason))
        out.dead_letters.append(dead_letter(f"mqtt:{topic}", reason, payload, device,
                                            whole=reason == UNKNOWN_DEVICE))

