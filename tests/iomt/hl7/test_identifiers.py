"""PID-3 identifiers: assigning authority and type kept, mapped to the configured systems, checked."""
from __future__ import annotations

import pytest

from iomt.config import Hl7Config, IdentifierSystems
from iomt.hl7.identifiers import IdentifierMapper
from iomt.hl7.message import Hl7Error, parse
from hl7_fixtures import message

CCCD, BHYT, MRN = ("http://fhir.hl7.org.vn/core/sid/cccd", "http://fhir.hl7.org.vn/core/sid/bhyt",
                   "urn:medgate:hospital-mrn")


def mapper(**changes) -> IdentifierMapper:
    cfg = Hl7Config(**changes)
    return IdentifierMapper(IdentifierSystems(), cfg.assigning_authorities, cfg.identifier_types, cfg.patient_id_order)


def with_pid3(value: str):
    raw = message("adt_a01_admit.hl7")
    old = b"MRN0012345^^^BVDK_HN^MR~079123456789^^^CCCD^NI~GD4797912345678^^^BHYT^HC"
    return parse(raw.replace(old, value.encode()))


def test_each_identifier_keeps_authority_and_type_and_the_mrn_names_the_patient():
    identity = mapper().read(parse(message("adt_a01_admit.hl7")))
    assert [(i.value, i.authority, i.type_code, i.system) for i in identity.identifiers] == [
        ("MRN0012345", "BVDK_HN", "MR", MRN), ("079123456789", "CCCD", "NI", CCCD),
        ("GD4797912345678", "BHYT", "HC", BHYT)]
    assert identity.reference == "Patient/MRN0012345"
    assert mapper(patient_id_order=["citizen_id"]).read(parse(message("adt_a01_admit.hl7"))).reference == \
        "Patient/079123456789"


def test_the_assigning_authority_is_read_before_the_type_and_a_uri_may_be_configured():
    identity = mapper(assigning_authorities={"BHXH": "urn:oid:1.2.704.0.1"}).read(with_pid3("0123456789^^^BHXH^PI"))
    assert identity.primary.system == "urn:oid:1.2.704.0.1"


@pytest.mark.parametrize("pid3, location, code", [
    ("", "PID^1^3", 101),
    ("MRN 1^^^BVDK_HN^MR", "PID^1^3^1^1", 102),  # a space breaks the identifier grammar
    ("MRN1^^^BVDK_HN^MR~07912345^^^CCCD^NI", "PID^1^3^2^1", 102),  # a CCCD number has 12 digits
    ("MRN1^^^BVDK/HN^MR", "PID^1^3^1^4", 102),
    ("X1^^^OTHER^XX", "PID^1^3^1^4", 103),  # nothing maps to a configured system
])
def test_unusable_identifiers_are_refused_naming_the_repetition(pid3, location, code):
    with pytest.raises(Hl7Error) as caught:
        mapper().read(with_pid3(pid3))
    assert (caught.value.ack.value, caught.value.location, caught.value.code) == ("AE", location, code)


def test_a_gateway_s_patient_internal_identifier_is_the_hospital_s():
    identity = mapper().read(with_pid3("HO2009001^^^NIST^PI"))  # as IHE PCD examples send it
    assert (identity.patient_id, identity.patient_system) == ("HO2009001", MRN)
