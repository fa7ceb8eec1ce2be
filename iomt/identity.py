"""Device → patient association: ADT messages, the registry, FHIR Patient and Device resources.

A bedside device sends readings, not patients. Admission, transfer and discharge messages on
``{prefix}/adt`` (schema ``iomt/schemas/adt.schema.json``) say which patient a device is attached
to; :class:`DeviceRegistry` keeps that in the store (table ``device_associations``) and answers the
bridge. The same registry is the Python API for an ADT feed that is not MQTT (an HL7 v2 listener):
call :meth:`DeviceRegistry.apply`.

Identifier systems are configuration (``iomt.identifiers``, :class:`iomt.config.IdentifierSystems`,
where the defaults are written). They are the draft VN Core FHIR IG (HL7 Vietnam) NamingSystems of
the citizen identity card (CCCD) and of the health insurance card, issued by Viet Nam Social
Security (BHXH); the IG defines no separate URI for the 10-digit BHXH number, which that card
number may be. Devices have no national system: the default is a local placeholder.
"""
from __future__ import annotations

import json
import re
import threading
import time as _time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iomt.config import IdentifierSystems
from iomt.payload import EARLIEST, LATEST, TIME_PATTERN, PayloadError
from iomt.store import StoredAssociation, VitalsStore

ADT_EVENTS = ("admit", "transfer", "discharge")
ADT_KEYS = frozenset({"event", "device", "patient", "insurance", "time", "site", "ward", "bed",
                      "spo2_scale"})
#: FHIR R4 id datatype: [A-Za-z0-9\-\.]{1,64}.
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
DISCHARGED = ""  # device_associations.patient_id of a device whose patient was discharged
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:iomt:identity")


def patient_reference(patient_id: str, system: str | None = None) -> str:
    """``Patient/<id>``: the identifier itself when it is a valid FHIR id, else a stable uuid5 of it."""
    if _FHIR_ID.match(patient_id):
        return f"Patient/{patient_id}"
    key = f"{system or ''}|{patient_id}"
    return f"Patient/{uuid.uuid5(uuid.NAMESPACE_URL, key)}"


def device_reference(device: str) -> str:
    """``Device/<id>``, with the same rule as :func:`patient_reference`."""
    if _FHIR_ID.match(device):
        return f"Device/{device}"
    return f"Device/{uuid.uuid5(ID_NAMESPACE, device)}"


@dataclass(frozen=True)
class AdtEvent:
    event: str
    device: str
    time: datetime
    patient_id: str | None = None
    patient_system: str | None = None
    insurance_id: str | None = None
    site: str | None = None
    ward: str | None = None
    bed: str | None = None
    spo2_scale: int = 1


@dataclass(frozen=True)
class Association:
    device: str
    patient_id: str
    patient_system: str
    spo2_scale: int
    since: datetime
    site: str | None = None
    ward: str | None = None
    bed: str | None = None

    @property
    def patient_ref(self) -> str:
        return patient_reference(self.patient_id, self.patient_system)


def _text(doc: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"must be a non-blank string, {value!r} is given", f"/{key}")
    return value


def parse_adt(payload: bytes) -> AdtEvent:
    """Parse one ADT message.

    Raises
    ------
    PayloadError
        When the message is not acceptable; ``reason`` names the problem.
    """
    try:
        doc = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"ADT message is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PayloadError(f"ADT message must be a JSON object, {type(doc).__name__} is given")
    unknown = sorted(set(doc) - ADT_KEYS)
    if unknown:
        raise PayloadError(f"unknown field(s) {', '.join(unknown)}")
    event = doc.get("event")
    if event not in ADT_EVENTS:
        raise PayloadError(f"must be one of {', '.join(ADT_EVENTS)}, {event!r} is given", "/event")
    when = doc.get("time")
    if not isinstance(when, str) or not TIME_PATTERN.fullmatch(when):
        raise PayloadError(f"must be a date-time with a UTC offset, {when!r} is given", "/time")
    patient_id = patient_system = insurance_id = None
    if event != "discharge":
        patient = doc.get("patient")
        if not isinstance(patient, dict) or set(patient) - {"id", "system"}:
            raise PayloadError("must be an object with 'id' and optional 'system'", "/patient")
        patient_id = _text(patient, "id", required=True)
        patient_system = _text(patient, "system")
        insurance = doc.get("insurance")
        if insurance is not None:
            if not isinstance(insurance, dict) or set(insurance) != {"id"}:
                raise PayloadError("must be an object with 'id'", "/insurance")
            insurance_id = _text(insurance, "id", required=True)
    scale = doc.get("spo2_scale", 1)
    if isinstance(scale, bool) or scale not in (1, 2):
        raise PayloadError(f"must be 1 or 2, {scale!r} is given", "/spo2_scale")
    try:
        at = datetime.fromisoformat(when)
    except ValueError as exc:
        raise PayloadError(f"is not a valid date-time, {when!r} is given ({exc})", "/time") from None
    if not EARLIEST <= at <= LATEST:
        raise PayloadError(f"must be between {EARLIEST.date()} and {LATEST.date()}, {when!r} is given", "/time")
    return AdtEvent(event=event, device=_text(doc, "device", required=True),
                    time=at, patient_id=patient_id,
                    patient_system=patient_system, insurance_id=insurance_id,
                    site=_text(doc, "site"), ward=_text(doc, "ward"), bed=_text(doc, "bed"),
                    spo2_scale=int(scale))


class DeviceRegistry:
    """Which patient each device is attached to, persisted in the store.

    Parameters
    ----------
    store
        :class:`iomt.store.VitalsStore` holding ``device_associations``.
    systems
        Identifier systems used when an ADT message names none.
    """

    def __init__(self, store: VitalsStore, systems: IdentifierSystems) -> None:
        self.store, self.systems = store, systems
        self._lock = threading.Lock()
        self._by_device: dict[str, Association] = {}
        self._since: dict[str, datetime] = {}  # device -> time of its latest applied ADT event
        self.reload()

    def reload(self) -> None:
        """Hold the associations the store has (what other bridge nodes and the HL7 listener
        applied, and nothing a batch left half done); raises while the store does not answer."""
        by_device, since = {}, {}
        with self._lock:  # apply() writes the store and then these, holding it
            for row in self.store.associations():
                since[row.device] = datetime.fromisoformat(row.since)
                if row.patient_id == DISCHARGED:
                    continue
                by_device[row.device] = Association(
                    device=row.device, patient_id=row.patient_id, patient_system=row.patient_system,
                    spo2_scale=row.spo2_scale, since=datetime.fromisoformat(row.since), site=row.site,
                    ward=row.ward, bed=row.bed)
            self._by_device, self._since = by_device, since

    def lookup(self, device: str | None) -> Association | None:
        if device is None:
            return None
        return self._by_device.get(device)

    def apply(self, event: AdtEvent) -> tuple[Association | None, list[dict[str, Any]]]:
        """Apply one ADT event; returns the new association (None after a discharge) and the
        FHIR Patient and Device resources to store. An event older than the device's current
        association changes nothing."""
        with self._lock:
            current = self._by_device.get(event.device)
            since = self._since.get(event.device)
            if since is not None and event.time < since:
                return current, []
            self._since[event.device] = event.time
            if event.event == "discharge":
                self._by_device.pop(event.device, None)
                self.store.put_association(StoredAssociation(  # keep the time: a late admission is stale
                    event.device, DISCHARGED, None, 1, None, None, None, event.time.isoformat(), _time.time()))
                return None, []
            assoc = Association(device=event.device, patient_id=event.patient_id,
                                patient_system=event.patient_system or self.systems.citizen_id,
                                spo2_scale=event.spo2_scale, since=event.time, site=event.site,
                                ward=event.ward, bed=event.bed)
            self.store.put_association(StoredAssociation(
                assoc.device, assoc.patient_id, assoc.patient_system, assoc.spo2_scale, assoc.site,
                assoc.ward, assoc.bed, assoc.since.isoformat(), _time.time()))
            self._by_device[event.device] = assoc
        return assoc, [self.patient_resource(assoc, event.insurance_id), self.device_resource(assoc)]

    def patient_resource(self, assoc: Association, insurance_id: str | None = None) -> dict[str, Any]:
        identifiers = [{"use": "official", "system": assoc.patient_system, "value": assoc.patient_id}]
        if insurance_id:
            identifiers.append({"use": "secondary", "system": self.systems.social_insurance,
                                "value": insurance_id})
        return {"resourceType": "Patient", "id": assoc.patient_ref.split("/", 1)[1],
                "identifier": identifiers, "active": True}

    def device_resource(self, assoc: Association) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "Device", "id": device_reference(assoc.device).split("/", 1)[1],
            "identifier": [{"system": self.systems.device, "value": assoc.device}],
            "status": "active", "patient": {"reference": assoc.patient_ref},
        }
        location = "/".join(x for x in (assoc.site, assoc.ward, assoc.bed) if x)
        if location:
            resource["note"] = [{"text": f"at {location} since {assoc.since.isoformat()}"}]
        return resource
