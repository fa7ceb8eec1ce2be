"""IHE PCD-01 Communicate PCD Data (ORU^R01) into the vitals pipeline.

IHE PCD Technical Framework Vol. 2, section 3.1 (Device Enterprise Communication): each OBX is one
observation of the device hierarchy (OBX-4 ``MDS.VMD.CHAN.METRIC``); rows without a value type
(OBX-2 empty) describe the MDS, VMD and channel, and their OBX-18 names the equipment (EI, often
an EUI-64) that the metric rows below them inherit.  A metric's OBX-3 is an IEEE 11073-10101
code (``150456^MDC_PULS_OXIM_SAT_O2^MDC``, or as the alternate identifier beside a LOINC one),
OBX-5 its value (NM), OBX-6 its unit (MDC, or UCUM), OBX-14 its time (else OBR-7, else MSH-7).
The MDC table is data: ``mdc_vitals.json`` beside this module, with its source edition.

The patient is PID-3 (:mod:`iomt.hl7.identifiers`); without it the visit in progress at the
PV1-3 bed (``hl7_encounters``), else the device's association (:mod:`iomt.identity`).  Readings
become the MQTT full-form payloads (``iomt/schemas/vitals.schema.json``) of their device and time,
handed to :meth:`iomt.pipeline.VitalsPipeline.handle` on the bed's vitals topic: the same
normalisation, NEWS2, vitals model, Observations and alerts as MQTT vitals.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any

from iomt.hl7.adt import Bed, read_bed
from iomt.hl7.identifiers import IdentifierMapper, PatientIdentity
from iomt.hl7.message import ErrorCode, Message, error, parse_time
from iomt.payload import MAX_VITALS, UNIT_CONVERSIONS
from iomt.pipeline import BatchOut, VitalsPipeline
from iomt.store import BedDevice, VitalsStore
from kernel.logs import Untrusted
from models import clinical_codes as codes

log = logging.getLogger("medgate.iomt")

TABLE_PATH = Path(__file__).with_name("mdc_vitals.json")
MDC_CODING_SYSTEM = "MDC"  # OBX-3.3 / OBX-6.3 name of coding system (IHE PCD TF-2, HL7 table 0396)
UCUM_CODING_SYSTEM = "UCUM"  # HL7 table 0396
LOINC_CODING_SYSTEM = "LN"  # HL7 table 0396
NUMERIC = "NM"  # OBX-2 value type (HL7 table 0125)
SKIPPED_STATUSES = ("X", "D")  # OBX-11 (HL7 table 0085): results cannot be obtained, deleted
NM_PATTERN = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$", re.ASCII)  # HL7 v2.5.1 section 2.A.47 NM
MDC_CODE_PATTERN = re.compile(r"^\d{1,10}$", re.ASCII)
DEVICE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", re.ASCII)  # EI.1 / EI.3, a topic level
_ANNOTATION = re.compile(r"\{[^{}]*\}")  # UCUM annotations ({beats}/min = /min), UCUM section 2.4


@dataclass(frozen=True)
class MdcTable:
    """MDC observation codes -> LOINC vital sign (None: known, not used), MDC units -> UCUM."""

    source: str
    observations: dict[str, str | None]
    units: dict[str, str]
    codes: dict[str, str]  # reference id (MDC_PULS_OXIM_SAT_O2) -> code, observations and units


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> MdcTable:
    doc = json.loads(path.read_text(encoding="utf-8"))
    observations = {row["code"]: row["loinc"] for row in doc["observations"]}
    unknown = sorted({v for v in observations.values() if v is not None} - set(codes.VITAL_SIGNS))
    if unknown:
        raise ValueError(f"{path}: LOINC codes must be vital signs of models.clinical_codes, {unknown} are given")
    return MdcTable(doc["source"], observations, {row["code"]: row["ucum"] for row in doc["units"]},
                    {row["reference_id"]: row["code"] for row in doc["observations"] + doc["units"]})


@dataclass(frozen=True)
class Reading:
    """One usable metric: ``value`` in ``unit`` (UCUM) of ``loinc``, from OBX ``index``."""

    index: int
    code: str  # MDC code (or the LOINC code when sent without one)
    system: str  # FHIR system of ``code``
    loinc: str
    value: float
    unit: str
    time: datetime
    device: str | None


@dataclass(frozen=True)
class Pcd01Message:
    patient: PatientIdentity | None  # PID-3
    bed: Bed | None  # PV1-3
    readings: tuple[Reading, ...]


def _concept(message: Message, index: int, table: MdcTable) -> tuple[str, str] | None:
    """(code, FHIR system) of OBX-3: its MDC identifier (first or alternate; by its reference id
    when the code is left out), else a LOINC vital sign."""
    obx = lambda c: message.value("OBX", 3, c, occurrence=index)  # noqa: E731
    for code, text, system in ((obx(1), obx(2), obx(3)), (obx(4), obx(5), obx(6))):
        if system.upper() == MDC_CODING_SYSTEM and (code or text):
            return code or table.codes.get(text, text), codes.MDC_SYSTEM
    for code, system in ((obx(1), obx(3)), (obx(4), obx(6))):
        if system.upper() == LOINC_CODING_SYSTEM and codes.LOINC_ALIASES.get(code, code) in codes.VITAL_SIGNS:
            return code, codes.LOINC_SYSTEM
    return None


def _unit(message: Message, index: int, loinc: str, table: MdcTable) -> str:
    where = f"OBX^{index}^6"
    unit = lambda c: message.value("OBX", 6, c, occurrence=index)  # noqa: E731
    code, system = unit(1) or table.codes.get(unit(2), ""), unit(3).upper()
    if not code:
        raise error(ErrorCode.REQUIRED_FIELD_MISSING, where, "OBX-6 must give the unit of a numeric observation")
    if system == MDC_CODING_SYSTEM or (not system and MDC_CODE_PATTERN.fullmatch(code)):
        if code not in table.units:
            raise error(ErrorCode.TABLE_VALUE_NOT_FOUND, where,
                        f"unknown MDC unit code {code!r} (known: {', '.join(sorted(table.units))})")
        ucum = table.units[code]
    else:
        ucum = _ANNOTATION.sub("", code) or code
    if ucum not in UNIT_CONVERSIONS[loinc]:
        raise error(ErrorCode.TABLE_VALUE_NOT_FOUND, where,
                    f"unit {code!r} is not a unit of {codes.VITAL_SIGNS[loinc].display} "
                    f"(accepted: {', '.join(UNIT_CONVERSIONS[loinc])})")
    return ucum


def _equipment(message: Message, index: int) -> str | None:
    value = message.value("OBX", 18, 1, occurrence=index) or message.value("OBX", 18, 3, occurrence=index)
    if not value:
        return None
    if not DEVICE_PATTERN.fullmatch(value):
        raise error(ErrorCode.DATA_TYPE_ERROR, f"OBX^{index}^18",
                    f"an equipment identifier must be 1-64 letters, digits or . _ : -, {value[:80]!r} is given")
    return value


def read_pcd01(message: Message, identifiers: IdentifierMapper, zone: tzinfo,
               table: MdcTable | None = None) -> Pcd01Message:
    """The readings of an ORU^R01.

    Raises
    ------
    Hl7Error
        AE naming the OBX field: an unknown MDC code (103), a non-numeric NM value (102), a unit
        that is not the vital sign's (103), a bad time (102); PID-3 present but unusable.
    """
    table = table or load_table()
    patient = identifiers.read(message, "PID", 3) if message.value("PID", 3) else None
    fallback_time = message.value("OBR", 7) and parse_time(message.value("OBR", 7), "OBR^1^7", zone)
    readings, device = [], None
    for index in range(1, message.count("OBX") + 1):
        device = _equipment(message, index) or device
        value_type = message.value("OBX", 2, occurrence=index)
        if not value_type or message.value("OBX", 11, occurrence=index) in SKIPPED_STATUSES:
            continue  # an MDS / VMD / channel row, or a metric without a result
        concept = _concept(message, index, table)
        if concept is None:
            log.debug("OBX %d %s: not an MDC or LOINC vital sign, left out", index,
                      Untrusted(message.value("OBX", 3, occurrence=index)))
            continue
        code, system = concept
        if system == codes.MDC_SYSTEM:
            if code not in table.observations:
                if value_type != NUMERIC:
                    continue  # a setting, alarm or text row: not a measurement
                raise error(ErrorCode.TABLE_VALUE_NOT_FOUND, f"OBX^{index}^3",
                            f"unknown MDC code {code!r} ({message.value('OBX', 3, 2, occurrence=index)[:64]!r}); "
                            f"the known codes are those of {TABLE_PATH.name}")
            loinc = table.observations[code]
            if loinc is None:
                continue  # known, not a vital sign medgate uses
        else:
            loinc = codes.LOINC_ALIASES.get(code, code)
        if value_type != NUMERIC:
            raise error(ErrorCode.DATA_TYPE_ERROR, f"OBX^{index}^2",
                        f"a vital sign must have value type NM, {value_type!r} is given")
        text = message.value("OBX", 5, occurrence=index)
        if not NM_PATTERN.fullmatch(text):
            raise error(ErrorCode.DATA_TYPE_ERROR, f"OBX^{index}^5",
                        f"OBX-5 of an NM observation must be a number, {text[:64]!r} is given")
        unit = _unit(message, index, loinc, table)
        when = message.value("OBX", 14, occurrence=index)
        at = parse_time(when, f"OBX^{index}^14", zone) if when else fallback_time \
            or parse_time(message.value("MSH", 7), "MSH^1^7", zone)
        readings.append(Reading(index, code, system, loinc, float(text), unit, at, device))
    return Pcd01Message(patient, read_bed(message, "PV1", 3), tuple(readings))


def _coded(reading: Reading) -> dict[str, str]:
    """The payload's code of a reading: its MDC code where the payload parser maps it
    (:data:`models.clinical_codes.MDC_TO_LOINC`), else the LOINC vital sign of the table."""
    if reading.system == codes.MDC_SYSTEM and reading.code in codes.MDC_TO_LOINC:
        return {"code": reading.code, "system": codes.MDC_SYSTEM}
    return {"code": reading.loinc, "system": codes.LOINC_SYSTEM}


class Pcd01Feeder:
    """Hands the readings of a PCD-01 message to the vitals pipeline (see the module docstring)."""

    def __init__(self, store: VitalsStore, pipeline: VitalsPipeline) -> None:
        self.store, self.pipeline = store, pipeline

    def _patient(self, msg: Pcd01Message, device: str | None) -> tuple[str, str]:
        if msg.patient is not None:
            return msg.patient.patient_id, msg.patient.patient_system
        if msg.bed is not None:
            visit = self.store.hl7_encounter_at_bed(msg.bed.ward, msg.bed.bed)
            if visit is not None:
                return visit.patient_id, visit.patient_system
        assoc = self.pipeline.registry.lookup(device)
        if assoc is not None:
            return assoc.patient_id, assoc.patient_system
        where = f"bed {msg.bed.text()}" if msg.bed else "no bed (PV1-3)"
        raise error(ErrorCode.REQUIRED_FIELD_MISSING, "PID^1^3",
                    f"PID-3 is empty and no patient is known at {where} or for device {device or '(none)'}")

    def _bed(self, msg: Pcd01Message, device: str | None) -> Bed:
        if msg.bed is not None:
            return msg.bed
        assoc = self.pipeline.registry.lookup(device)
        if assoc is not None and assoc.ward and assoc.bed:
            return Bed(assoc.ward, assoc.bed, None, assoc.site)
        raise error(ErrorCode.REQUIRED_FIELD_MISSING, "PV1^1^3",
                    f"PV1-3 must give the bed (point of care^room^bed) of device {device or '(none)'}: "
                    f"no association names it")

    def payloads(self, msg: Pcd01Message) -> list[tuple[str, bytes, BedDevice | None]]:
        """``(topic, payload, bed device row)`` per device and time; checks every reading first."""
        groups: dict[tuple[str | None, datetime], dict[str, Reading]] = {}
        for reading in msg.readings:  # one value a vital sign: the first row sent (ECG before pleth)
            groups.setdefault((reading.device, reading.time), {}).setdefault(reading.loinc, reading)
        result = []
        for (device, at), by_loinc in groups.items():
            readings = list(by_loinc.values())
            patient_id, system = self._patient(msg, device)
            bed = self._bed(msg, device)
            topics = self.pipeline.topics
            topic = topics.vitals(bed.ward, bed.bed, bed.site, device) if bed.site and device \
                else topics.vitals(bed.ward, bed.bed)
            row = BedDevice(bed.ward, bed.bed, device, bed.site, at.isoformat()) if device else None
            for start in range(0, len(readings), MAX_VITALS):
                doc: dict[str, Any] = {
                    "patient": {"id": patient_id, "system": system}, "time": at.isoformat(),
                    "vitals": [{**_coded(r), "value": r.value, "unit": r.unit}
                               for r in readings[start:start + MAX_VITALS]]}
                if device:
                    doc["device"] = device
                result.append((topic, json.dumps(doc).encode("utf-8"), row))
        return result

    def feed(self, msg: Pcd01Message, out: BatchOut) -> list[BedDevice]:
        """Run the pipeline over the message's payloads; the bed device rows to commit.

        Raises
        ------
        Hl7Error
            AE when the pipeline refuses a payload (its reason), or the patient or bed is unknown.
        """
        rows: dict[tuple[str, str, str], BedDevice] = {}
        for topic, payload, row in self.payloads(msg):
            letters = len(out.dead_letters)
            self.pipeline.handle(topic, payload, out)
            if len(out.dead_letters) > letters:
                raise error(ErrorCode.APPLICATION_INTERNAL_ERROR, "OBX^1",
                            f"the vitals pipeline refused the readings: {out.dead_letters[-1].reason}")
            if row is not None:
                rows[(row.ward, row.bed, row.device)] = row
        return list(rows.values())
