"""ADT messages (HL7 v2.5.1 chapter 3): patients, visits and the beds that bind monitors.

A01 admit, A04 register, A02 transfer, A03 discharge, A08 update, A11 cancel admit, A12 cancel
transfer, A13 cancel discharge and A40 merge patient.  Each writes the FHIR Patient (PID-3, see
:mod:`iomt.hl7.identifiers`) and Encounter (PV1-19 visit number, PV1-2 class, PV1-3 bed) and a row
of ``hl7_encounters``.  The bed binds the monitors known at that bed (``VitalsStore.devices_at_bed``,
and devices whose vitals were parked as "unknown device" from that bed's topic): for each, the
listener hands the vitals pipeline the same admit / transfer / discharge message the MQTT
``P/adt`` topic carries (:mod:`iomt.identity`), so the device registry, its FHIR Device and the
replay of parked vitals are the MQTT path's own.  A bed is ``PV1-3`` PL.1 point of care (the MQTT
ward), PL.3 bed (the MQTT bed), PL.2 room and PL.4 facility (the MQTT site).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any

from iomt.hl7.identifiers import IDENTIFIER_PATTERN, V2_0203_SYSTEM, IdentifierMapper, PatientIdentity
from iomt.hl7.message import ErrorCode, Message, error, parse_time
from iomt.pipeline import BatchOut, VitalsPipeline
from iomt.store import Hl7Encounter, VitalsStore
from iomt.topics import MAX_LEVEL_CHARS
from kernel.text import describe_unsafe

ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"  # FHIR R4 Encounter.class
#: PV1-2 Patient Class (HL7 table 0004) -> v3 ActCode encounter class (C, N, U: none to name)
PATIENT_CLASS = {"I": "IMP", "O": "AMB", "E": "EMER", "P": "PRENC", "R": "AMB", "B": "IMP", "C": None, "N": None,
                 "U": None}
VISIT_NUMBER = "VN"  # HL7 table 0203: visit number
NULL_FLAVOR_SYSTEM, UNKNOWN = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "UNK"  # FHIR R4 terminology
#: Trigger event -> FHIR R4 Encounter.status after it (None: the visit keeps its status)
STATUS = {"A01": "in-progress", "A04": "in-progress", "A02": "in-progress", "A03": "finished",
          "A08": None, "A11": "cancelled", "A12": "in-progress", "A13": "in-progress", "A40": None}
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:iomt:hl7:encounter")


@dataclass(frozen=True)
class Bed:
    """A PL (person location): PL.1 point of care, PL.2 room, PL.3 bed, PL.4 facility."""

    ward: str
    bed: str
    room: str | None = None
    site: str | None = None

    def text(self) -> str:
        return "/".join(x for x in (self.site, self.ward, self.room, self.bed) if x)


def read_bed(message: Message, segment: str, field: int, occurrence: int = 1) -> Bed | None:
    """The bed in ``segment``-``field`` (a PL), or None without point of care and bed.

    Raises
    ------
    Hl7Error
        AE 102 when a part could not be an MQTT topic level (``/``, ``+``, ``#``, control
        characters, more than :data:`iomt.topics.MAX_LEVEL_CHARS` characters).
    """
    parts = {c: message.value(segment, field, c, occurrence=occurrence) for c in (1, 2, 3, 4)}
    for component, text in parts.items():
        unsafe = describe_unsafe(text)
        if any(c in text for c in "/+#") or unsafe or len(text) > MAX_LEVEL_CHARS:
            raise error(ErrorCode.DATA_TYPE_ERROR, f"{segment}^{occurrence}^{field}^1^{component}",
                        f"a location part must be at most {MAX_LEVEL_CHARS} characters without / + # or "
                        f"control characters, {text[:80]!r} is given")
    if not parts[1] or not parts[3]:
        return None
    return Bed(parts[1], parts[3], parts[2] or None, parts[4] or None)


@dataclass(frozen=True)
class AdtMessage:
    event: str  # MSH-9.2
    time: datetime  # EVN-6 event occurred, else EVN-2 recorded, else MSH-7
    patient: PatientIdentity  # PID-3
    visit_number: str  # PV1-19 CX.1, else the patient's key
    patient_class: str | None  # PV1-2
    bed: Bed | None  # PV1-3
    prior_bed: Bed | None  # PV1-6
    prior_patient: PatientIdentity | None = None  # MRG-1 (A40)


def event_time(message: Message, zone: tzinfo) -> datetime:
    for segment, field in (("EVN", 6), ("EVN", 2), ("MSH", 7)):
        value = message.value(segment, field)
        if value:
            return parse_time(value, f"{segment}^1^{field}", zone)
    raise error(ErrorCode.REQUIRED_FIELD_MISSING, "MSH^1^7", "MSH-7 Date/Time of Message is empty")


def read_adt(message: Message, identifiers: IdentifierMapper, zone: tzinfo) -> AdtMessage:
    """The ADT content of ``message``.

    Raises
    ------
    Hl7Error
        AE naming the field: PID-3 missing or unmapped, a bad date/time or location, A40 without MRG-1.
    """
    event = message.header.trigger_event
    if not message.count("PID"):
        raise error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "PID^1", f"ADT^{event} must carry a PID segment")
    patient = identifiers.read(message, "PID", 3)
    prior = None
    if event == "A40":
        if not message.count("MRG"):
            raise error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "MRG^1", "ADT^A40 must carry an MRG segment")
        prior = identifiers.read(message, "MRG", 1)
    patient_class = message.value("PV1", 2)
    if patient_class and patient_class not in PATIENT_CLASS:
        raise error(ErrorCode.TABLE_VALUE_NOT_FOUND, "PV1^1^2",
                    f"PV1-2 must be a patient class of HL7 table 0004 ({', '.join(PATIENT_CLASS)}), "
                    f"{patient_class[:16]!r} is given")
    visit = message.value("PV1", 19)
    if visit and not IDENTIFIER_PATTERN.fullmatch(visit):
        raise error(ErrorCode.DATA_TYPE_ERROR, "PV1^1^19",
                    f"a visit number must be 1-64 letters, digits or . _ / -, {visit[:80]!r} is given")
    return AdtMessage(event=event, time=event_time(message, zone), patient=patient,
                      visit_number=visit or f"{patient.patient_system}|{patient.patient_id}",
                      patient_class=patient_class or None, bed=read_bed(message, "PV1", 3),
                      prior_bed=read_bed(message, "PV1", 6), prior_patient=prior)


def _encounter_class(patient_class: str | None) -> dict[str, str]:
    """Encounter.class (required): the ActCode of PV1-2, inpatient when PV1-2 is empty, else unknown."""
    code = PATIENT_CLASS.get(patient_class or "I")
    if code is None:
        return {"system": NULL_FLAVOR_SYSTEM, "code": UNKNOWN}
    return {"system": ACT_CODE_SYSTEM, "code": code}


def encounter_resource(row: Hl7Encounter, patient_ref: str) -> dict[str, Any]:
    """The FHIR R4 Encounter of a visit."""
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": str(uuid.uuid5(ID_NAMESPACE, f"{row.sending_facility}|{row.visit_number}")),
        "status": row.status,
        "class": _encounter_class(row.patient_class),
        "identifier": [{"type": {"coding": [{"system": V2_0203_SYSTEM, "code": VISIT_NUMBER}]},
                        "value": row.visit_number, "assigner": {"display": row.sending_facility}}],
        "subject": {"reference": patient_ref},
    }
    if row.ward and row.bed:  # where the visit is (was), since the event that put it there
        where = Bed(row.ward, row.bed, row.room, row.site).text()
        resource["location"] = [{"location": {"display": where}, "period": {"start": row.since},
                                 "status": "active" if row.status == "in-progress" else "completed"}]
    return resource


class AdtApplier:
    """Applies ADT messages: visits, Patients, Encounters and the monitors at their beds.

    ``pipeline`` is the vitals pipeline the HL7 listener feeds; its registry is the one the
    MQTT bridge reads when both run in one process.
    """

    def __init__(self, store: VitalsStore, pipeline: VitalsPipeline) -> None:
        self.store, self.pipeline = store, pipeline
        self.topics, self.registry = pipeline.topics, pipeline.registry

    def apply(self, adt: AdtMessage, facility: str, out: BatchOut) -> list[Hl7Encounter]:
        """Apply one message; returns the ``hl7_encounters`` rows to commit with ``out``."""
        if adt.prior_patient is not None:
            return self._merge(adt, facility, out)
        stored = self.store.hl7_encounter(facility, adt.visit_number)
        status = STATUS[adt.event] or (stored.status if stored else "in-progress")
        bed = adt.bed or self._bed_of(stored)
        before = self._bed_of(stored) or adt.prior_bed
        row = Hl7Encounter(facility, adt.visit_number, adt.patient.patient_id, adt.patient.patient_system, status,
                           adt.patient_class or (stored.patient_class if stored else None),
                           bed.site if bed else None, bed.ward if bed else None, bed.room if bed else None,
                           bed.bed if bed else None, adt.time.isoformat())
        if status != "in-progress":
            for place in {b for b in (before, bed) if b is not None}:
                self._release(place, adt.patient, adt.time, out)
        else:
            if before is not None and bed is not None and (before.ward, before.bed) != (bed.ward, bed.bed):
                self._release(before, adt.patient, adt.time, out)
            if bed is not None:
                self._bind(bed, adt.patient, adt.time, out, "transfer" if stored else "admit")
        # after the devices' Patient (identifier of the primary alone): this one has them all
        out.resources.append(adt.patient.patient_resource())
        out.resources.append(encounter_resource(row, adt.patient.reference))
        return [row]

    def _merge(self, adt: AdtMessage, facility: str, out: BatchOut) -> list[Hl7Encounter]:
        """A40: the prior patient's visits and monitors become the surviving patient's."""
        survivor, prior = adt.patient, adt.prior_patient
        rows = [replace(e, patient_id=survivor.patient_id, patient_system=survivor.patient_system)
                for e in self.store.hl7_encounters_of(prior.patient_id, prior.patient_system)]
        gone = prior.patient_resource()
        gone["active"] = False
        gone["link"] = [{"other": {"reference": survivor.reference}, "type": "replaced-by"}]
        kept = survivor.patient_resource()
        kept["link"] = [{"other": {"reference": prior.reference}, "type": "replaces"}]
        for assoc in self.store.associations():
            if (assoc.patient_id, assoc.patient_system) == (prior.patient_id, prior.patient_system):
                self._device_event("transfer", assoc.device, survivor, adt.time, out,
                                   Bed(assoc.ward, assoc.bed, None, assoc.site) if assoc.ward and assoc.bed else None)
        out.resources += [gone, kept, *(encounter_resource(r, survivor.reference) for r in rows)]  # after theirs
        return rows

    @staticmethod
    def _bed_of(row: Hl7Encounter | None) -> Bed | None:
        if row is None or not row.ward or not row.bed:
            return None
        return Bed(row.ward, row.bed, row.room, row.site)

    def _devices(self, bed: Bed) -> list[str]:
        """Monitors at ``bed``: known to the store, or parked from that bed's vitals topic."""
        found = set(self.store.devices_at_bed(bed.ward, bed.bed))
        for device, source in self.store.parked_sources():
            try:
                where = self.topics.location(source.removeprefix("mqtt:"))
            except ValueError:
                continue
            if (where.ward, where.bed) == (bed.ward, bed.bed):
                found.add(device)
        return sorted(found)

    def _bind(self, bed: Bed, patient: PatientIdentity, at: datetime, out: BatchOut, event: str) -> None:
        for device in self._devices(bed):
            self._device_event(event, device, patient, at, out, bed)

    def _release(self, bed: Bed, patient: PatientIdentity, at: datetime, out: BatchOut) -> None:
        """Discharge the monitors at ``bed`` that are this patient's (another's stay bound)."""
        for device in self._devices(bed):
            assoc = self.registry.lookup(device)
            if assoc is None or (assoc.patient_id, assoc.patient_system) != (patient.patient_id,
                                                                            patient.patient_system):
                continue
            self._device_event("discharge", device, patient, at, out, None)

    def _device_event(self, event: str, device: str, patient: PatientIdentity, at: datetime, out: BatchOut,
                      bed: Bed | None) -> None:
        """The MQTT ADT message (iomt/schemas/adt.schema.json) for ``device``, through the pipeline."""
        doc: dict[str, Any] = {"event": event, "device": device, "time": at.isoformat()}
        if event != "discharge":
            doc["patient"] = {"id": patient.patient_id, "system": patient.patient_system}
            if bed is not None:
                doc.update({k: v for k, v in (("site", bed.site), ("ward", bed.ward), ("bed", bed.bed)) if v})
        self.pipeline.handle(self.topics.adt, json.dumps(doc).encode("utf-8"), out)
