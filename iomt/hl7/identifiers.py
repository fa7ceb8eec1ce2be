"""Patient identifiers of PID-3 (and MRG-1): CX values mapped to the configured systems.

Each repetition of PID-3 is a CX: CX.1 the identifier, CX.4 its assigning authority (HD), CX.5 its
identifier type (HL7 table 0203: MR medical record number, NI national unique individual
identifier, HC health card number, ...).  ``hl7.assigning_authorities`` (by CX.4.1, checked first)
and ``hl7.identifier_types`` (by CX.5) name a key of ``iomt.identifiers`` (the Vietnam citizen
identity card CCCD, the social insurance BHXH/BHYT number, the hospital MRN) or give a system URI;
the first of ``hl7.patient_id_order`` found names the patient, as an MQTT ADT message's patient
does (:func:`iomt.identity.patient_reference`).  Every identifier is checked against its grammar
before it reaches the store, a path or a log; each keeps its authority and type in FHIR
(``Identifier.assigner``, ``Identifier.type``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from iomt.config import IdentifierSystems
from iomt.hl7.message import ErrorCode, Message, error
from iomt.identity import patient_reference

V2_0203_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"  # FHIR R4: HL7 table 0203
#: CX.1: letters, digits and . - _ / after a letter or digit (what HIS numbers use), at most 64
IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$", re.ASCII)
#: The personal identification number of the CCCD card: 12 digits (Law on Citizen Identification 2014, art. 19)
CCCD_PATTERN = re.compile(r"^\d{12}$", re.ASCII)
CODE_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,32}$", re.ASCII)  # CX.4.1 namespace id, CX.5 type code


@dataclass(frozen=True)
class PatientIdentifier:
    """One CX: its value, assigning authority (CX.4.1), type (CX.5) and mapped system (or None)."""

    value: str
    authority: str
    type_code: str
    system: str | None

    def fhir(self) -> dict[str, Any]:
        identifier: dict[str, Any] = {"value": self.value}
        if self.system:
            identifier["system"] = self.system
        if self.type_code:
            identifier["type"] = {"coding": [{"system": V2_0203_SYSTEM, "code": self.type_code}]}
        if self.authority:
            identifier["assigner"] = {"display": self.authority}
        return identifier


@dataclass(frozen=True)
class PatientIdentity:
    """The identifiers of one patient; ``primary`` names the patient."""

    identifiers: tuple[PatientIdentifier, ...]
    primary: PatientIdentifier

    @property
    def patient_id(self) -> str:
        return self.primary.value

    @property
    def patient_system(self) -> str:
        return self.primary.system or ""

    @property
    def reference(self) -> str:
        return patient_reference(self.patient_id, self.patient_system)

    def patient_resource(self) -> dict[str, Any]:
        """The FHIR Patient: identifiers only (no name or address is kept)."""
        return {"resourceType": "Patient", "id": self.reference.split("/", 1)[1],
                "identifier": [i.fhir() for i in self.identifiers], "active": True}


class IdentifierMapper:
    """Reads CX repetitions into a :class:`PatientIdentity` (see the module docstring)."""

    def __init__(self, systems: IdentifierSystems, authorities: Mapping[str, str],
                 types: Mapping[str, str], order: Sequence[str]) -> None:
        named = systems.model_dump()
        self.citizen_id = systems.citizen_id
        self.authorities = {k: named.get(v, v) for k, v in authorities.items()}
        self.types = {k: named.get(v, v) for k, v in types.items()}
        self.order = [named.get(v, v) for v in order]

    def system_of(self, authority: str, type_code: str) -> str | None:
        return self.authorities.get(authority) or self.types.get(type_code)

    def read(self, message: Message, segment: str = "PID", field: int = 3) -> PatientIdentity:
        """The identity in ``segment``-``field``.

        Raises
        ------
        Hl7Error
            AE 101 when the field is empty, 102 when a value breaks its grammar, 103 when no
            repetition maps to a configured system.
        """
        where = f"{segment}^1^{field}"
        count = message.repetitions(segment, field)
        if not count or not message.value(segment, field):
            raise error(ErrorCode.REQUIRED_FIELD_MISSING, where,
                        f"{segment}-{field} must identify the patient, it is empty")
        found = []
        for rep in range(1, count + 1):
            value = message.value(segment, field, 1, rep)
            if not value:
                continue
            authority, type_code = message.value(segment, field, 4, rep), message.value(segment, field, 5, rep)
            if not IDENTIFIER_PATTERN.fullmatch(value):
                raise error(ErrorCode.DATA_TYPE_ERROR, f"{where}^{rep}^1",
                            f"an identifier must be 1-64 letters, digits or . _ / -, {value[:80]!r} is given")
            for part, text in ((4, authority), (5, type_code)):
                if text and not CODE_PATTERN.fullmatch(text):
                    raise error(ErrorCode.DATA_TYPE_ERROR, f"{where}^{rep}^{part}",
                                f"must be 1-32 letters, digits or . _ -, {text[:80]!r} is given")
            system = self.system_of(authority, type_code)
            if system == self.citizen_id and not CCCD_PATTERN.fullmatch(value):
                raise error(ErrorCode.DATA_TYPE_ERROR, f"{where}^{rep}^1",
                            f"a CCCD citizen identity number has 12 digits, {value!r} is given")
            found.append(PatientIdentifier(value, authority, type_code, system))
        mapped = [i for i in found if i.system]
        if not mapped:
            shown = ", ".join(f"{i.authority or '-'}/{i.type_code or '-'}" for i in found)
            raise error(ErrorCode.TABLE_VALUE_NOT_FOUND, f"{where}^1^4",
                        f"no identifier's assigning authority or type (CX.4/CX.5: {shown}) maps to a configured "
                        f"identifier system (hl7.assigning_authorities, hl7.identifier_types)")
        rank = {system: i for i, system in enumerate(self.order)}
        primary = min(mapped, key=lambda i: rank.get(i.system, len(rank)))
        return PatientIdentity(tuple(found), primary)
