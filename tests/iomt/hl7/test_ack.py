"""Original-mode ACKs: MSA and an ERR naming the field, readable by python-hl7."""
from __future__ import annotations

import hl7

from iomt.hl7.ack import acknowledgement, escape
from iomt.hl7.message import AckCode, ErrorCode, Header, error

HEADER = Header("HIS", "BVDK_HN", "ADT0001", "ADT", "A01", "P", "2.5")


def test_an_error_ack_names_the_field_the_code_and_the_reason():
    failure = error(ErrorCode.REQUIRED_FIELD_MISSING, "PID^1^3", "PID-3 must identify the patient | ^~&")
    raw = acknowledgement(HEADER, AckCode.ERROR, failure, application="MEDGATE", facility="BVDK_HN")
    assert raw.endswith(b"\r") and b"\n" not in raw
    ack = hl7.parse(raw)
    msh = ack.segment("MSH")
    assert (str(msh[3]), str(msh[5]), str(msh[6]), str(msh[9]), str(msh[12])) == \
        ("MEDGATE", "HIS", "BVDK_HN", "ACK^A01^ACK", "2.5")
    assert 0 < len(str(msh[10])) <= 20
    assert (str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])) == ("AE", "ADT0001")
    err = ack.segment("ERR")
    assert (str(err[2]), str(err[3]), str(err[4])) == ("PID^1^3", "101^Required field missing^HL70357", "E")
    assert ack.unescape(str(err[8])) == "PID-3 must identify the patient | ^~&"


def test_an_accept_has_no_err_and_each_ack_its_own_control_id():
    first, second = (hl7.parse(acknowledgement(HEADER, AckCode.ACCEPT, application="M", facility="F"))
                     for _ in range(2))
    assert [s[0][0] for s in first] == ["MSH", "MSA"]
    assert str(first.segment("MSH")[10]) != str(second.segment("MSH")[10])


def test_escape():
    assert escape("a|b^c&d~e\\f\rg") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f g"
