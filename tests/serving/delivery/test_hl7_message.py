"""The ORU^R01 of imaging results: parsed by the ``hl7`` package, every field where HL7 v2.5.1 puts
it, every text escaped, MSH-10 stable per result."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import hl7
import numpy as np
import pytest
from pydicom import Dataset

from models.finding import NOT_FOR_CLINICAL_USE, OUTSIDE_TRAINING_DISTRIBUTION, Concept, Finding, OutOfDistribution
from serving.delivery.hl7_message import (CONTROL_ID_CHARS, MessageHeader, build_oru, control_id, escape,
                                          patient_identifiers)
from serving.imaging.findings import source_image
from training.synthetic.dicom import make_dx_dataset

TB = Concept("56717001", "SCT", "Tuberculosis")
HEADER = MessageHeader("MEDGATE", "BV_CHORAY", "RIS", "RADIOLOGY")
MADE = datetime(2026, 12, 3, 9, 30, 5, tzinfo=timezone.utc)


def cxr(**kw) -> Dataset:
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16), patient_id="079123456789", issuer="CCCD",
                         patient_name="Nguyễn^Văn A|B^Thị^Dr.^Jr.", accession="ACC-77&1", **kw)
    ds.PatientBirthDate, ds.PatientSex = "19800102", "M"
    ds.StudyDate, ds.StudyTime, ds.TimezoneOffsetFromUTC = "20261203", "081500", "+0700"
    ds.PlacerOrderNumberImagingServiceRequest = "ORD~42"
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "RIS_CR"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = "BN12345", "BV_CHORAY", "TEXT"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType, qualifiers.IdentifierTypeCode = (
        "2.16.704.1.99", "ISO", "MR")
    other.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.OtherPatientIDsSequence = [other]
    return ds


def finding(ds, probability: float, threshold: float = 0.5) -> Finding:
    return Finding(model="tb", model_version="1.2.0", code=TB, probability=probability, threshold=threshold,
                   source=source_image(ds))


def oru(findings, ds) -> hl7.Message:
    text = build_oru(findings, ds, HEADER, "ABCDEFGHIJKLMNOPQRST", MADE, {"CCCD": "NNVNM"})
    assert text.endswith("\r") and "\n" not in text
    return hl7.parse(text)


def test_fields_are_where_hl7_v251_puts_them():
    ds = cxr()
    message = oru([finding(ds, 0.91), finding(ds, 0.12)], ds)
    assert [str(s[0]) for s in message] == ["MSH", "PID", "ORC", "OBR", "NTE", "NTE", "OBX", "OBX", "OBX", "OBX",
                                            "OBX"]
    msh = message.segment("MSH")
    assert str(msh(2)) == "^~\\&"
    assert [str(msh(n)) for n in (3, 4, 5, 6)] == ["MEDGATE", "BV_CHORAY", "RIS", "RADIOLOGY"]
    assert str(msh(7)) == "20261203093005+0000"
    assert str(msh(9)) == "ORU^R01^ORU_R01" and str(msh(10)) == "ABCDEFGHIJKLMNOPQRST"
    assert str(msh(11)) == "P" and str(msh(12)) == "2.5.1" and str(msh(18)) == "UNICODE UTF-8"
    assert str(msh(15)) == str(msh(16)) == ""  # original-mode acknowledgment

    pid = message.segment("PID")
    cccd, mrn = pid(3)
    assert str(cccd) == "079123456789^^^CCCD^NNVNM"
    assert str(mrn) == "BN12345^^^BV_CHORAY&2.16.704.1.99&ISO^MR"
    assert message.unescape(str(pid(5)(1)(1))) == "Nguyễn"
    assert message.unescape(str(pid(5)(1)(2))) == "Văn A|B"  # the | inside a name stays in its component
    assert [str(pid(5)(1)(n)) for n in (3, 4, 5)] == ["Thị", "Jr.", "Dr."]  # XPN: suffix before prefix
    assert str(pid(7)) == "19800102" and str(pid(8)) == "M"

    orc, obr = message.segment("ORC"), message.segment("OBR")
    assert str(orc(1)) == "RE"
    assert message.unescape(str(orc(2))) == "ORD~42" == message.unescape(str(obr(2)))  # placer
    assert message.unescape(str(obr(3)(1)(1))) == "ACC-77&1" == message.unescape(str(orc(3)(1)(1)))  # filler
    assert str(obr(3)(1)(2)) == "RIS_CR"
    assert str(obr(4)) == "18748-4^Diagnostic imaging study^LN"
    assert str(obr(7)) == "20261203081500+0700" and str(obr(22)) == "20261203093005+0000"
    assert str(obr(24)) == "RAD" and str(obr(25)) == "P"

    notes = [message.unescape(str(n(3))) for n in message.segments("NTE")]
    assert notes[0] == NOT_FOR_CLINICAL_USE and "medgate-tb 1.2.0" in notes[1] and "0.5" in notes[1]

    study, present, p_present, absent, p_absent = message.segments("OBX")
    assert [str(study(n)) for n in (1, 2, 3, 5, 11)] == ["1", "HD", "113014^Study^DCM", ds.StudyInstanceUID, "P"]
    assert [str(present(n)) for n in (1, 2, 3, 4, 5, 8, 9, 11)] == [
        "2", "CWE", "56717001^Tuberculosis^SCT", "1", "52101004^Present^SCT", "A", "0.9100", "P"]
    assert [str(p_present(n)) for n in (1, 2, 3, 4, 5, 6, 8)] == [
        "3", "NM", "122157^Probability^DCM", "1", "0.9100", "1^1^UCUM", "A"]
    assert [str(absent(n)) for n in (4, 5, 8)] == ["2", "272519000^Absent^SCT", "N"]
    assert [str(p_absent(n)) for n in (4, 5, 8)] == ["2", "0.1200", "N"]
    assert str(present(14)) == "20261203081500+0700" and str(present(19)) == "20261203093005+0000"
    assert str(present(18)) == "medgate-tb 1.2.0" and str(present(17)) == "^medgate-tb 1.2.0"


def test_every_text_is_escaped():
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert escape("line\rbreak\nend\x07") == "line\\X0D\\break\\X0A\\end "
    header = MessageHeader("MEDGATE", "", "RIS", "")
    ds = cxr()
    ds.PatientID = "ID|1^2"
    text = build_oru([finding(ds, 0.7)], ds, header, "ID1", MADE)
    message = hl7.parse(text)
    assert len(message.segment("PID")) == 9  # the | in the Patient ID made no extra field
    assert message.unescape(str(message.segment("PID")(3)(1)(1))) == "ID|1^2"


def test_the_triage_flag_follows_the_models_operating_point():
    ds = cxr()
    message = oru([finding(ds, 0.62, threshold=0.62), finding(ds, 0.619, threshold=0.62)], ds)
    flags = [str(obx(8)) for obx in message.segments("OBX")[1:]]
    assert flags == ["A", "A", "N", "N"]


def test_control_id_is_stable_per_result_and_differs_between_results():
    one = control_id("1.2.3", "tb", "1.2.0", "ris", ["1.2.3.4", "1.2.3.5"])
    assert one == control_id("1.2.3", "tb", "1.2.0", "ris", ["1.2.3.5", "1.2.3.4"])  # order of images
    assert len(one) == CONTROL_ID_CHARS and one.isalnum()
    others = {control_id("1.2.3", "tb", "1.3.0", "ris", ["1.2.3.4", "1.2.3.5"]),
              control_id("1.2.3", "tb", "1.2.0", "his", ["1.2.3.4", "1.2.3.5"]),
              control_id("1.2.3", "tb", "1.2.0", "ris", ["1.2.3.4"]),
              control_id("1.2.9", "tb", "1.2.0", "ris", ["1.2.3.4", "1.2.3.5"])}
    assert one not in others and len(others) == 4


def test_a_study_without_optional_attributes_still_gives_a_message():
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
    for keyword in ("StudyDate", "StudyTime", "PatientBirthDate", "PatientSex"):
        if keyword in ds:
            delattr(ds, keyword)
    message = hl7.parse(build_oru([finding(ds, 0.3)], ds, HEADER, "X1", MADE))
    assert str(message.segment("PID")(3)) == "079123456789"  # no issuer: no assigning authority
    assert str(message.segment("OBR")(7)) == ""
    assert patient_identifiers(Dataset(), {}) == ""


@pytest.mark.parametrize("bad, match", [
    ("empty", "at least one finding"),
    ("two models", "one model version about one study"),
    ("long id", "message_id must be 1-20 characters"),
    ("delimiter in id", "message_id must be"),
    ("unknown scheme", "coding scheme 'ICD10' of code 'A15' has no HL7 coding system"),
])
def test_bad_input_is_refused_by_name(bad, match):
    ds = cxr()
    findings, message_id = [finding(ds, 0.5)], "X1"
    if bad == "empty":
        findings = []
    elif bad == "two models":
        findings.append(Finding(model="nodule", model_version="1.0.0", code=TB, probability=0.5, threshold=0.5,
                                source=source_image(ds)))
    elif bad == "long id":
        message_id = "X" * 21
    elif bad == "delimiter in id":
        message_id = "X|1"
    elif bad == "unknown scheme":
        findings = [Finding(model="tb", model_version="1.2.0", code=Concept("A15", "ICD10", "Respiratory TB"),
                            probability=0.5, threshold=0.5, source=source_image(ds))]
    with pytest.raises(ValueError, match=match):
        build_oru(findings, ds, HEADER, message_id, MADE)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_oru([finding(ds, 0.5)], ds, HEADER, "X1", datetime(2026, 1, 1))


def test_the_result_writer_queues_one_oru_per_destination_that_takes_the_model(tmp_path):
    from serving.config import Hl7Section
    from serving.delivery.outbox import Outbox
    from serving.imaging.results import HL7_KIND, ResultWriter
    from serving.store import Store

    cfg = Hl7Section(facility="BV_CHORAY", destinations=[
        {"name": "ris", "port": 2575, "receiving_application": "RIS"},
        {"name": "his", "port": 2576, "receiving_application": "HIS", "models": ["tb"]},
        {"name": "derm-only", "port": 2577, "models": ["derm"]}])
    store = Store(tmp_path / "db.sqlite3")
    try:
        box = Outbox(store, {HL7_KIND: lambda destination, payload: None})
        writer = ResultWriter(store, box, tmp_path / "results", hl7=cfg)
        ds = cxr()
        info = {"name": "tb", "version": "1.2.0"}
        first = writer.hl7([finding(ds, 0.8)], ds, info)
        assert writer.hl7([finding(ds, 0.8)], ds, info) == first  # processed again: the same ids ...
        items = box.items()
        assert len(items) == 2  # ... and nothing queued twice; derm-only does not take tb
        for item, destination, application in zip(items, ("ris", "his"), ("RIS", "HIS")):
            message = hl7.parse(json.loads(item.payload)["message"])
            assert item.kind == HL7_KIND and item.destination == destination
            assert item.key == f"hl7:{destination}:{message.segment('MSH')(10)}"
            assert str(message.segment("MSH")(4)) == "BV_CHORAY" and str(message.segment("MSH")(5)) == application
    finally:
        store.close()
    with pytest.raises(ValueError, match="an outbox is required .* HL7 destinations \\['derm-only', 'his', 'ris'\\]"):
        ResultWriter(store, None, tmp_path, hl7=cfg)


@pytest.mark.parametrize("section, match", [
    ({"destinations": [{"name": "ris", "port": 1}, {"name": "ris", "port": 2}]}, "each destination name must be unique"),
    ({"destinations": [{"name": "ris/../x", "port": 1}]}, "1-64 letters, digits"),
    ({"destinations": [{"name": "ris", "port": 1, "receiving_facility": "A^B"}]}, "without \\| \\^ ~"),
    ({"facility": "X" * 21}, "at most 20 characters"),
    ({"processing_id": "X"}, "'P', 'T' or 'D'"),
    ({"issuer_identifier_types": {"CCCD": "N|I"}}, "HL7 table 0203 code"),
])
def test_a_bad_hl7_section_names_the_key(section, match):
    from serving.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match) as raised:
        load_config(hl7=section)
    assert "hl7." in str(raised.value)


def test_the_example_in_the_docs_is_what_medgate_builds():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "hl7-results.md").read_text(encoding="utf-8")
    shown = doc.split("```text\n", 1)[1].split("```", 1)[0]
    ds = make_dx_dataset(np.zeros((64, 64), np.uint16), patient_id="079123456789", issuer="CCCD",
                         patient_name="Nguyễn^Văn An", study_uid="1.2.826.0.1.3680043.8.498.1", accession="CR240117")
    ds.PatientBirthDate, ds.PatientSex = "19800102", "M"
    ds.StudyDate, ds.StudyTime, ds.TimezoneOffsetFromUTC = "20261203", "081500", "+0700"
    ds.PlacerOrderNumberImagingServiceRequest = "HIS-884211"
    example = Finding(model="tb", model_version="1.1.0", code=TB, probability=0.873, threshold=0.5,
                      source=source_image(ds))
    built = build_oru([example], ds, MessageHeader("MEDGATE", "BV_CHORAY", "RIS", "RADIOLOGY"),
                      "Q5M2K7XW3D4HJ6TA2BNE", datetime(2026, 12, 3, 1, 16, 2, tzinfo=timezone.utc), {"CCCD": "NI"})
    assert built.replace("\r", "\n") == shown


def test_an_input_outside_the_training_distribution_makes_no_call():
    ds = cxr()
    outside = Finding(model="tb", model_version="1.2.0", code=TB, probability=0.97, threshold=0.5,
                      source=source_image(ds), ood=OutOfDistribution(score=9.5, threshold=3.0, outside=True))
    message = oru([outside, finding(ds, 0.8)], ds)
    names = [str(s[0]) for s in message]
    assert names[6:] == ["OBX", "OBX", "NTE", "OBX", "OBX"]  # study; no call + why; the next finding's call
    study, no_call, call, p_call = message.segments("OBX")
    assert [str(no_call(n)) for n in (1, 3, 4, 5, 8, 9, 11)] == ["2", "56717001^Tuberculosis^SCT", "1", "", "", "",
                                                                 "X"]
    why = message.unescape(str(message.segments("NTE")[2](3)))
    assert OUTSIDE_TRAINING_DISTRIBUTION in why and "0.97" in why and "withheld" in why
    assert "0.9700" not in str(message)  # the probability is not sent as a result
    assert [str(call(n)) for n in (1, 4, 8)] == ["3", "2", "A"] and [str(p_call(n)) for n in (1, 4)] == ["4", "2"]
