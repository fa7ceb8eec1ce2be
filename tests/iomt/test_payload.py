"""MQTT vitals payload parsing: good payloads, conversions, range flags, every rejection reason."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from iomt.news2 import ACVPU, News2Input
from iomt.payload import MAX_PAYLOAD_BYTES, MAX_VITALS, PayloadError, parse_payload
from models import clinical_codes as codes

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "iomt" / "schemas" / "vitals.schema.json"

EXAMPLE = {
    "patient": {"id": "079123456789", "system": "urn:oid:2.16.840.1.113883.2.24"},
    "device": "MON-3-12",
    "time": "2026-11-22T10:15:00+07:00",
    "vitals": [
        {"code": "8867-4", "value": 92, "unit": "/min"},
        {"code": "150456", "system": "urn:iso:std:iso:11073:10101", "value": 0.95, "unit": "1"},
    ],
    "on_oxygen": False,
    "consciousness": "A",
    "spo2_scale": 1,
}


def encode(doc) -> bytes:
    return json.dumps(doc).encode("utf-8")


def with_vitals(*vitals) -> dict:
    doc = copy.deepcopy(EXAMPLE)
    doc["vitals"] = list(vitals)
    return doc


def one_vital(code, value, unit, system=None):
    vital = {"code": code, "value": value, "unit": unit}
    if system is not None:
        vital["system"] = system
    msg = parse_payload(encode(with_vitals(vital)))
    assert len(msg.vitals) == 1
    return msg.vitals[0]


# --- good payloads --------------------------------------------------------------------------------

def test_documented_example():
    msg = parse_payload(encode(EXAMPLE))
    assert msg.patient_id == "079123456789"
    assert msg.patient_system == "urn:oid:2.16.840.1.113883.2.24"
    assert msg.device == "MON-3-12"
    assert msg.time == datetime(2026, 11, 22, 3, 15, tzinfo=timezone.utc)
    assert msg.time.utcoffset() == timedelta(hours=7)
    assert msg.on_oxygen is False and msg.consciousness is ACVPU.ALERT and msg.spo2_scale == 1
    hr, spo2 = msg.vitals
    assert (hr.loinc, hr.value, hr.unit, hr.out_of_range) == (codes.HEART_RATE, 92, "/min", False)
    assert (spo2.loinc, spo2.value, spo2.unit) == (codes.OXYGEN_SATURATION, 95.0, "%")
    assert (spo2.source_code, spo2.source_system, spo2.source_value, spo2.source_unit) == (
        "150456", codes.MDC_SYSTEM, 0.95, "1")


def test_optional_fields_absent():
    doc = {"patient": {"id": "p1"}, "time": "2026-11-22T10:15:00Z",
           "vitals": [{"code": "8867-4", "value": 80, "unit": "/min"}]}
    msg = parse_payload(encode(doc))
    assert msg.patient_system is None and msg.device is None
    assert msg.on_oxygen is None and msg.consciousness is None and msg.spo2_scale == 1
    assert msg.time.tzinfo is not None and msg.time.utcoffset() == timedelta(0)


def test_nulls_mean_unknown():
    doc = {**EXAMPLE, "on_oxygen": None, "consciousness": None}
    msg = parse_payload(encode(doc))
    assert msg.on_oxygen is None and msg.consciousness is None


@pytest.mark.parametrize("mdc, loinc", sorted(codes.MDC_TO_LOINC.items()))
@pytest.mark.parametrize("with_system", [True, False])
def test_mdc_codes_map_to_loinc(mdc, loinc, with_system):
    unit = codes.VITAL_SIGNS[loinc].ucum
    vital = one_vital(mdc, 60, unit, codes.MDC_SYSTEM if with_system else None)
    assert vital.loinc == loinc and vital.source_system == codes.MDC_SYSTEM


@pytest.mark.parametrize("loinc", sorted(codes.VITAL_SIGNS))
def test_loinc_codes(loinc):
    vital = one_vital(loinc, 60, codes.VITAL_SIGNS[loinc].ucum, codes.LOINC_SYSTEM)
    assert vital.loinc == loinc and vital.source_system == codes.LOINC_SYSTEM


def test_pulse_oximetry_loinc_is_spo2():
    assert one_vital("59408-5", 97, "%").loinc == codes.OXYGEN_SATURATION


@pytest.mark.parametrize(
    "code, value, unit, expected, canonical_unit",
    [
        ("8310-5", 98.6, "[degF]", 37.0, "Cel"),
        ("8310-5", 96.8, "[degF]", 36.0, "Cel"),
        ("8310-5", 37.2, "Cel", 37.2, "Cel"),
        ("8480-6", 16, "kPa", 120.00992, "mm[Hg]"),
        ("8462-4", 10, "kPa", 75.0062, "mm[Hg]"),
        ("8480-6", 120, "mmHg", 120, "mm[Hg]"),
        ("2708-6", 0.95, "1", 95.0, "%"),
        ("2708-6", 1, "1", 100.0, "%"),
        ("2708-6", 0.0, "1", 0.0, "%"),
        ("8867-4", 72, "{beats}/min", 72, "/min"),
        ("8867-4", 72, "beats/min", 72, "/min"),
        ("9279-1", 18, "{breaths}/min", 18, "/min"),
        ("9279-1", 18, "breaths/min", 18, "/min"),
    ],
)
def test_unit_normalisation(code, value, unit, expected, canonical_unit):
    vital = one_vital(code, value, unit)
    assert vital.value == pytest.approx(expected, abs=1e-9)
    assert vital.unit == canonical_unit
    assert vital.source_value == value and vital.source_unit == unit


@pytest.mark.parametrize(
    "code, value, unit",
    [("8867-4", 19, "/min"), ("8867-4", 301, "/min"), ("2708-6", 49, "%"), ("2708-6", 101, "%"),
     ("2708-6", 0.3, "1"), ("8310-5", 24.9, "Cel"), ("8310-5", 46, "Cel"), ("8310-5", 120, "[degF]"),
     ("9279-1", 1, "/min"), ("9279-1", 81, "/min"), ("8480-6", 39, "mm[Hg]"),
     ("8480-6", 301, "mm[Hg]"), ("8462-4", 10, "mm[Hg]")],
)
def test_out_of_range_is_flagged_not_dropped(code, value, unit):
    vital = one_vital(code, value, unit)
    assert vital.out_of_range


@pytest.mark.parametrize(
    "code, value, unit",
    [("8867-4", 20, "/min"), ("8867-4", 300, "/min"), ("2708-6", 50, "%"), ("2708-6", 100, "%"),
     ("8310-5", 25, "Cel"), ("8310-5", 45, "Cel"), ("9279-1", 2, "/min"), ("9279-1", 80, "/min"),
     ("8480-6", 40, "mm[Hg]"), ("8480-6", 300, "mm[Hg]")],
)
def test_range_limits_are_inclusive(code, value, unit):
    assert not one_vital(code, value, unit).out_of_range


def test_news2_input_takes_latest_value_per_parameter():
    doc = with_vitals(
        {"code": "8867-4", "value": 80, "unit": "/min"},
        {"code": "9279-1", "value": 18, "unit": "/min"},
        {"code": "147842", "value": 130, "unit": "/min"},
        {"code": "150021", "value": 118, "unit": "mm[Hg]"},
        {"code": "8462-4", "value": 70, "unit": "mm[Hg]"},
        {"code": "8310-5", "value": 100.4, "unit": "[degF]"},
    )
    doc.update(on_oxygen=True, consciousness="C", spo2_scale=2)
    msg = parse_payload(encode(doc))
    assert msg.latest()[codes.HEART_RATE].value == 130
    assert msg.news2_input() == News2Input(
        respiratory_rate_per_min=18, spo2_percent=None, on_oxygen=True, systolic_bp_mmhg=118,
        pulse_per_min=130, consciousness=ACVPU.CONFUSION, temperature_cel=38.0, spo2_scale=2)


def test_news2_input_with_no_values_is_all_none():
    doc = with_vitals({"code": "8462-4", "value": 70, "unit": "mm[Hg]"})
    for key in ("on_oxygen", "consciousness", "spo2_scale"):
        del doc[key]
    assert parse_payload(encode(doc)).news2_input() == News2Input()


def test_bytes_like_payloads():
    data = encode(EXAMPLE)
    assert parse_payload(bytearray(data)) == parse_payload(memoryview(data)) == parse_payload(data)


def test_fractional_seconds_and_z():
    msg = parse_payload(encode({**EXAMPLE, "time": "2026-11-22T03:15:00.250Z"}))
    assert msg.time == datetime(2026, 11, 22, 3, 15, 0, 250000, tzinfo=timezone.utc)


# --- bad payloads ---------------------------------------------------------------------------------

def bad(**changes) -> dict:
    doc = copy.deepcopy(EXAMPLE)
    for key, value in changes.items():
        if value is _DELETE:
            del doc[key]
        else:
            doc[key] = value
    return doc


_DELETE = object()


def v(code, value, unit, **extra) -> dict:
    return {"code": code, "value": value, "unit": unit, **extra}

# (id, document, reason fragment, whether the JSON Schema alone also rejects it)
BAD_DOCUMENTS = [
    ("no-patient", bad(patient=_DELETE), "missing patient", True),
    ("patient-not-object", bad(patient="079123456789"), "missing patient", True),
    ("no-patient-id", bad(patient={"system": "urn:x"}), "missing patient id", True),
    ("blank-patient-id", bad(patient={"id": "  "}), "missing patient id", True),
    ("numeric-patient-id", bad(patient={"id": 79123456789}), "missing patient id", True),
    ("unknown-patient-field", bad(patient={"id": "p", "name": "x"}), "unknown field(s) name", True),
    ("no-time", bad(time=_DELETE), "missing time", True),
    ("naive-time", bad(time="2026-11-22T10:15:00"), "UTC offset", True),
    ("date-only", bad(time="2026-11-22"), "UTC offset", True),
    ("no-seconds", bad(time="2026-11-22T10:15+07:00"), "UTC offset", True),
    ("space-separator", bad(time="2026-11-22 10:15:00+07:00"), "UTC offset", True),
    ("numeric-time", bad(time=1795000000), "UTC offset", True),
    # ECMA-262 '$' rejects this; Python's re (used by jsonschema) lets '$' match before a final \n.
    ("time-trailing-newline", bad(time="2026-11-22T10:15:00+07:00\n"), "UTC offset", False),
    ("impossible-date", bad(time="2026-13-22T10:15:00+07:00"), "not a valid date-time", False),
    ("no-vitals", bad(vitals=_DELETE), "no vitals", True),
    ("empty-vitals", bad(vitals=[]), "no vitals", True),
    ("vitals-not-array", bad(vitals={"code": "8867-4"}), "no vitals", True),
    ("too-many-vitals", bad(vitals=[v("8867-4", 80, "/min")] * (MAX_VITALS + 1)),
     "too many vitals", True),
    ("vital-not-object", with_vitals(92), "each vital must be an object", True),
    ("unknown-loinc", with_vitals(v("1234-5", 1, "/min")), "unknown LOINC code", False),
    ("panel-loinc", with_vitals(v("85354-9", 1, "mm[Hg]")), "unknown LOINC code", False),
    ("malformed-code", with_vitals(v("HR", 1, "/min")), "unknown LOINC code", True),
    ("unknown-mdc", with_vitals(v("149530", 1, "/min")), "unknown MDC code", False),
    ("loinc-as-mdc", with_vitals(v("8867-4", 1, "/min", system=codes.MDC_SYSTEM)),
     "unknown MDC code", False),
    ("unknown-system", with_vitals(v("364075005", 1, "/min", system="http://snomed.info/sct")),
     "unknown code system", True),
    ("numeric-code", with_vitals(v(150456, 97, "%")), "code must be a non-empty string", True),
    ("no-code", with_vitals({"value": 97, "unit": "%"}), "missing 'code'", True),
    ("no-value", with_vitals({"code": "2708-6", "unit": "%"}), "missing 'value'", True),
    ("no-unit", with_vitals({"code": "2708-6", "value": 97}), "missing 'unit'", True),
    ("string-value", with_vitals(v("8867-4", "92", "/min")), "value must be a number", True),
    ("bool-value", with_vitals(v("8867-4", True, "/min")), "value must be a number", True),
    ("null-value", with_vitals(v("8867-4", None, "/min")), "value must be a number", True),
    ("huge-value", with_vitals(v("8867-4", 10 ** 400, "/min")), "must be a finite number", False),
    ("unknown-unit", with_vitals(v("8867-4", 92, "Hz")), "not compatible", True),
    ("hr-in-percent", with_vitals(v("8867-4", 92, "%")), "not compatible", False),
    ("bp-in-celsius", with_vitals(v("8480-6", 120, "Cel")), "not compatible", False),
    ("temp-in-kpa", with_vitals(v("8310-5", 37, "kPa")), "not compatible", False),
    ("rr-in-beats", with_vitals(v("9279-1", 18, "{beats}/min")), "not compatible", False),
    ("spo2-percent-as-fraction", with_vitals(v("2708-6", 95, "1")), "fraction within [0, 1]", False),
    ("negative-fraction", with_vitals(v("2708-6", -0.1, "1")), "fraction within [0, 1]", False),
    ("unknown-vital-field", with_vitals(v("8867-4", 92, "/min", quality=1)),
     "unknown field(s) quality", True),
    ("unknown-top-field", bad(ward="3"), "unknown field(s) ward", True),
    ("misspelt-field", bad(consciousnes="A"), "unknown field(s) consciousnes", True),
    ("on-oxygen-string", bad(on_oxygen="yes"), "true, false or null", True),
    ("on-oxygen-int", bad(on_oxygen=1), "true, false or null", True),
    ("consciousness-word", bad(consciousness="alert"), "one of A, C, V, P, U", True),
    ("consciousness-lowercase", bad(consciousness="a"), "one of A, C, V, P, U", True),
    ("spo2-scale-3", bad(spo2_scale=3), "must be 1 or 2", True),
    ("spo2-scale-bool", bad(spo2_scale=True), "must be 1 or 2", True),
    ("spo2-scale-null", bad(spo2_scale=None), "must be 1 or 2", True),
    ("blank-device", bad(device=" "), "non-blank string", True),
    ("numeric-device", bad(device=12), "non-blank string", True),
]


@pytest.mark.parametrize("doc, reason", [pytest.param(d, r, id=i) for i, d, r, _ in BAD_DOCUMENTS])
def test_bad_documents(doc, reason):
    with pytest.raises(PayloadError) as info:
        parse_payload(encode(doc))
    assert reason in info.value.reason


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "payload is empty"),
        (b"{not json", "payload is not JSON"),
        (b"\xff\xfe{}", "payload is not UTF-8"),
        (b"[1, 2]", "must be a JSON object, list is given"),
        (b'"vitals"', "must be a JSON object, str is given"),
        (b"null", "must be a JSON object, NoneType is given"),
        (b'{"patient": {"id": "a"}, "patient": {"id": "b"}}', "repeats the key 'patient'"),
        (b'{"vitals": [{"value": NaN}]}', "non-finite number NaN"),
        (b'{"vitals": [{"value": Infinity}]}', "non-finite number Infinity"),
        (b"[" * 100_000, "payload is"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "more than"),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(PayloadError) as info:
        parse_payload(data)
    assert reason in info.value.reason


def test_error_names_the_place():
    doc = with_vitals({"code": "8867-4", "value": 92, "unit": "/min"},
                      {"code": "8867-4", "value": "fast", "unit": "/min"})
    with pytest.raises(PayloadError) as info:
        parse_payload(encode(doc))
    assert info.value.path == "/vitals/1/value"
    assert str(info.value).startswith("/vitals/1/value: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("place, value, says", [
    ("/device", "MON-3\n2026-11-22 10:00:00 INFO forged", "U+000A (Cc)"),
    ("/device", "MON\u202e21-3", "U+202E (Cf)"),
    ("/device", "MON-3\u2028", "U+2028 (Zl)"),
    ("/patient/id", "0791234\u20665678", "U+2066 (Cf)"),
    ("/patient/system", "urn:oid:1.2\x00", "U+0000 (Cc)"),
])
def test_identifiers_with_control_or_format_characters_are_refused(place, value, says):
    doc = copy.deepcopy(EXAMPLE)
    if place == "/device":
        doc["device"] = value
    else:
        doc["patient"][place.rsplit("/", 1)[1]] = value
    with pytest.raises(PayloadError) as info:
        parse_payload(encode(doc))
    assert info.value.path == place and says in info.value.reason


def test_str_payload_is_a_programming_error():
    with pytest.raises(TypeError, match="payload must be bytes, str is given"):
        parse_payload(json.dumps(EXAMPLE))  # type: ignore[arg-type]


# --- the JSON Schema and the parser agree ---------------------------------------------------------

@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


GOOD_DOCUMENTS = [
    EXAMPLE,
    {"patient": {"id": "p1"}, "time": "2026-11-22T10:15:00Z",
     "vitals": [{"code": "8867-4", "value": 80, "unit": "/min"}]},
    bad(on_oxygen=None, consciousness=None),
    with_vitals({"code": "150021", "value": 16, "unit": "kPa"},
                {"code": "8310-5", "system": "http://loinc.org", "value": 98.6, "unit": "[degF]"},
                {"code": "59408-5", "value": 97, "unit": "%"},
                {"code": "8867-4", "value": 400, "unit": "{beats}/min"}),
]


@pytest.mark.parametrize("doc", GOOD_DOCUMENTS)
def test_schema_accepts_what_the_parser_accepts(validator, doc):
    parse_payload(encode(doc))
    validator.validate(doc)


@pytest.mark.parametrize(
    "doc", [pytest.param(d, id=i) for i, d, _, schema_rejects in BAD_DOCUMENTS if schema_rejects]
)
def test_schema_rejects_what_it_can_express(validator, doc):
    assert not validator.is_valid(doc)
