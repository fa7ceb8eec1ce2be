"""PCD-01 readings: the MDC table as data, OBX rows to readings, units, equipment and times."""
from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from iomt.config import Hl7Config, IdentifierSystems
from iomt.hl7.identifiers import IdentifierMapper
from iomt.hl7.message import Hl7Error, parse
from iomt.hl7.pcd01 import load_table, read_pcd01
from models import clinical_codes as codes
from hl7_fixtures import message

SCADA, DIM = 2, 4  # IEEE 11073-10101 partitions: observations, units
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def mapper() -> IdentifierMapper:
    cfg = Hl7Config()
    return IdentifierMapper(IdentifierSystems(), cfg.assigning_authorities, cfg.identifier_types, cfg.patient_id_order)


def test_the_mdc_table_is_data_with_its_source_edition_and_agrees_with_the_codes_module():
    table = load_table()
    assert "IEEE 11073-10101" in table.source and "Rosetta" in table.source
    assert all(int(code) >> 16 == SCADA for code in table.observations)
    assert all(int(code) >> 16 == DIM for code in table.units)
    for mdc, loinc in codes.MDC_TO_LOINC.items():  # the MQTT compact form's codes mean the same here
        assert table.observations[mdc] == loinc
    assert set(table.units.values()) == {"/min", "%", "1", "mm[Hg]", "kPa", "Cel", "[degF]"}


def test_an_intellivue_message_gives_one_reading_per_metric_with_its_equipment_and_time():
    msg = read_pcd01(parse(message("pcd01_intellivue.hl7")), mapper(), ZONE)
    assert msg.patient.patient_id == "MRN0012345" and (msg.bed.ward, msg.bed.bed) == ("ICU", "B3")
    got = [(r.index, r.loinc, r.value, r.unit) for r in msg.readings]
    assert got == [(2, "8867-4", 118, "/min"), (3, "2708-6", 91, "%"), (4, "8867-4", 117, "/min"),
                   (5, "9279-1", 24, "/min"), (6, "8480-6", 98, "mm[Hg]"), (7, "8462-4", 60, "mm[Hg]"),
                   (9, "8310-5", 38.6, "Cel")]  # the MDS row (1) and the mean pressure (8) left out
    assert {r.device for r in msg.readings} == {"0018FFFF00000001"}  # OBX-18 of the MDS row, inherited
    assert {r.time.isoformat() for r in msg.readings} == {"2026-12-03T08:14:55+07:00"}


def test_ucum_annotations_and_the_obr_time_without_an_offset():
    msg = read_pcd01(parse(message("pcd01_bed_only.hl7")), mapper(), ZONE)
    assert msg.patient is None
    assert [(r.loinc, r.unit) for r in msg.readings] == [("2708-6", "%"), ("8867-4", "/min"), ("9279-1", "/min")]
    assert msg.readings[0].time.isoformat() == "2026-12-03T08:30:00+07:00"


def replaced(old: bytes, new: bytes) -> bytes:
    raw = message("pcd01_intellivue.hl7")
    assert old in raw
    return raw.replace(old, new, 1)


@pytest.mark.parametrize("old, new, location, code", [
    (b"|NM|150456", b"|ST|150456", "OBX^3^2", 102),  # a vital sign must be NM
    (b"|91|262688^MDC_DIM_PERCENT^MDC", b"|91|999999^MDC_DIM_NONE^MDC", "OBX^3^6", 103),  # unknown unit
    (b"|98|266016^MDC_DIM_MMHG^MDC", b"|98|262688^MDC_DIM_PERCENT^MDC", "OBX^6^6", 103),  # % is no pressure
    (b"|24|264928^MDC_DIM_RESP_PER_MIN^MDC", b"|24|", "OBX^5^6", 101),  # no unit
    (b"|R|||20261203081455+0700\rOBX|6", b"|R|||2026-12-03 08:14\rOBX|6", "OBX^5^14", 102),  # not a DTM
])
def test_each_obx_fault_names_its_field(old, new, location, code):
    with pytest.raises(Hl7Error) as caught:
        read_pcd01(parse(replaced(old, new)), mapper(), ZONE)
    assert (caught.value.ack.value, caught.value.location, caught.value.code) == ("AE", location, code)


def test_kilopascal_and_a_loinc_coded_row_with_its_mdc_alternate():
    raw = replaced(b"|98|266016^MDC_DIM_MMHG^MDC", b"|13|265987^MDC_DIM_KILO_PASCAL^MDC")
    raw = raw.replace(b"147842^MDC_ECG_HEART_RATE^MDC",
                      b"8889-8^Heart rate by Oximetry^LN^149530^MDC_PULS_OXIM_PULS_RATE^MDC")
    msg = read_pcd01(parse(raw), mapper(), ZONE)
    assert (msg.readings[4].loinc, msg.readings[4].unit) == ("8480-6", "kPa")
    assert (msg.readings[0].code, msg.readings[0].loinc) == ("149530", "8867-4")


def test_codes_sent_by_reference_id_and_rows_that_are_not_measurements():
    raw = replaced(b"|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.150456|91|262688^MDC_DIM_PERCENT^MDC",
                   b"|NM|^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.150456|91|^MDC_DIM_PERCENT^MDC")
    raw = raw.replace(b"\rOBX|2|", b"\rOBX|1|CWE|184326^MDC_ATTR_NOT_IN_THE_TABLE^MDC|1.0.0.1|ON^on^L|||||||R\rOBX|2|")
    msg = read_pcd01(parse(raw), mapper(), ZONE)
    assert ("150456", "2708-6", 91, "%") in [(r.code, r.loinc, r.value, r.unit) for r in msg.readings]
