"""MSH checks and HL7 date/times: each refusal an AR or AE naming its field."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from iomt.hl7.message import Hl7Error, header_of, parse, parse_time
from hl7_fixtures import message

ADT = message("adt_a01_admit.hl7")


@pytest.mark.parametrize("raw, location, code", [
    (b"EVN|A01|20261203\rMSH|^~\\&|HIS", "MSH^1", 100),  # MSH is not first
    (ADT.replace(b"MSH|^~\\&|", b"MSH#^~\\&#", 1), "MSH^1^1", 102),
    (ADT.replace(b"^~\\&", b"^~", 1), "MSH^1^2", 102),
    (ADT.replace(b"^~\\&", b"ABCD", 1), "MSH^1^2", 102),
    (ADT.replace(b"ADT^A01^ADT_A01", b"SIU^S12^SIU_S12"), "MSH^1^9^1^1", 200),
    (ADT.replace(b"ADT^A01^ADT_A01", b"ADT"), "MSH^1^9", 101),
    (ADT.replace(b"|ADT0001|P|2.5|", b"|ADT0001|X|2.5|"), "MSH^1^11", 202),
    (ADT.replace(b"|ADT0001|P|2.5|", b"|ADT0001|P|2.1|"), "MSH^1^12", 203),
    (ADT.replace(b"NGUYEN", "NGUY\u00caN".encode("latin-1")), "MSH^1^18", 102),  # not UTF-8
    (ADT.replace(b"NGUYEN", "NGUYEN\u202e".encode()), "MSH^1", 102),  # a bidirectional override
])
def test_a_bad_header_is_rejected_naming_the_field(raw, location, code):
    with pytest.raises(Hl7Error) as caught:
        parse(raw)
    assert (caught.value.ack.value, caught.value.location, caught.value.code) == ("AR", location, code)


def test_a_good_message_exposes_its_header_and_fields():
    msg = parse(ADT.replace(b"\r", b"\r\n"))  # CR LF segment ends are read too
    assert msg.header.kind == "ADT^A01" and msg.header.control_id == "ADT0001" and msg.header.version == "2.5"
    assert msg.repetitions("PID", 3) == 3 and msg.value("PID", 3, 4, 2) == "CCCD"
    assert msg.value("PV1", 3, 3) == "B3" and msg.value("ZZZ", 1) == "" and msg.count("OBX") == 0


def test_the_header_of_an_unparsable_message_is_read_for_its_ack():
    header = header_of(ADT.replace(b"^~\\&", b"^^^^", 1))
    assert (header.sending_facility, header.control_id, header.trigger_event) == ("BVDK_HN", "ADT0001", "A01")
    assert header_of(b"garbage").control_id == ""


def test_hl7_date_times():
    zone = ZoneInfo("Asia/Ho_Chi_Minh")
    assert parse_time("20261203081455+0700", "X", zone) == datetime(2026, 12, 3, 1, 14, 55, tzinfo=timezone.utc)
    assert parse_time("202612030814", "X", zone).utcoffset() == timedelta(hours=7)
    assert parse_time("20261203081455.1234-0500", "X", zone).microsecond == 123400
    for bad in ("20261203", "2026-12-03T08:14", "20261332081455"):
        with pytest.raises(Hl7Error, match="date/time") as caught:
            parse_time(bad, "OBX^2^14", zone)
        assert caught.value.location == "OBX^2^14" and caught.value.ack.value == "AE"
