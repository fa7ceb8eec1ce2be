"""Compact numeric and ECG payloads, the topic scheme, and late/out-of-order NEWS2 state."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fhir.resources.R4B.observation import Observation

from iomt.bridge import VitalsBridge
from iomt.compact import EcgChunk, decode
from iomt.identity import AdtEvent
from iomt.payload import PayloadError, VitalsMessage
from iomt.state import StateTable
from iomt.topics import Topics
from iomt.waveforms import ecg_observation
from serving.store import Store

SCHEMA = Path(__file__).resolve().parents[2] / "iomt" / "schemas" / "vitals.schema.json"
T0_MS = 1_795_000_000_000
COMPACT = {"d": "MON-1", "t": T0_MS, "v": [[147842, 92], [150456, 97], [150021, 118]], "o": False, "c": "A"}
ECG = {"d": "MON-1", "t": T0_MS, "ecg": {"period_ms": 4, "factor": 0.005, "origin": 0,
                                         "leads": [{"code": 131330, "data": [0, 12, 40, -8]},
                                                   {"code": "131329", "data": [1, 2, 3, 4]}]}}


def test_compact_decodes_to_canonical_vitals():
    msg = decode(json.dumps(COMPACT).encode())
    assert isinstance(msg, VitalsMessage) and msg.patient_id is None and msg.device == "MON-1"
    assert msg.time == datetime.fromtimestamp(T0_MS / 1000, tz=timezone.utc)
    assert {v.loinc: v.value for v in msg.vitals} == {"8867-4": 92, "2708-6": 97, "8480-6": 118}


def test_ecg_chunk_to_sampled_data_observation():
    chunk = decode(json.dumps(ECG).encode())
    assert isinstance(chunk, EcgChunk) and len(chunk.leads) == 2
    resource = ecg_observation(chunk, "Patient/P", "Device/MON-1")
    obs = Observation.model_validate(resource)
    assert obs.code.coding[0].code == "131328"
    sampled = resource["component"][0]["valueSampledData"]
    assert sampled["period"] == 4 and sampled["data"] == "0 12 40 -8"
    assert resource["effectivePeriod"]["end"].endswith(":40.012000+00:00")  # 3 periods after the start


@pytest.mark.parametrize("doc, reason", [
    ({**COMPACT, "v": [[999, 1]]}, "unknown MDC code"),
    ({**COMPACT, "v": [[147842]]}, r"\[code, value\] pair"),
    ({**COMPACT, "t": "now"}, "epoch milliseconds"),
    ({**COMPACT, "x": 1}, "unknown field"),
    ({**COMPACT, "d": " "}, "non-blank device"),
    ({**ECG, "ecg": {**ECG["ecg"], "leads": [{"code": 1, "data": [1]}]}}, "unknown ECG lead"),
    ({**ECG, "ecg": {**ECG["ecg"], "period_ms": 0}}, "positive"),
    ({**ECG, "ecg": {**ECG["ecg"], "leads": [{"code": 131329, "data": [1]},
                                              {"code": 131330, "data": [1, 2]}]}}, "samples"),
])
def test_bad_compact_documents(doc, reason):
    with pytest.raises(PayloadError, match=reason):
        decode(json.dumps(doc).encode())


@pytest.mark.parametrize("device, says", [
    ("MON\u202e21-3", "U+202E (Cf) at character 3"),  # right-to-left override: reads "MON3-12"
    ("MON-1\nINFO forged", "U+000A (Cc) at character 5"),
    ("MON\u200b-1", "U+200B (Cf) at character 3"),  # zero-width space: two devices look alike
    ("MON-1\u2028", "U+2028 (Zl) at character 5"),
])
@pytest.mark.parametrize("form", [COMPACT, ECG])
def test_a_device_id_with_a_control_or_format_character_is_refused(form, device, says):
    """The compact forms' ``d`` is checked as the full form's ``device`` is (:mod:`kernel.text`)."""
    with pytest.raises(PayloadError, match=f"control or format characters, {re.escape(says)}") as refused:
        decode(json.dumps({**form, "d": device}).encode())
    assert refused.value.path == "/d"


def test_schema_describes_the_compact_and_ecg_forms():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert validator.is_valid(COMPACT) and validator.is_valid(ECG)
    assert not validator.is_valid({**COMPACT, "v": [[999, 1]]})


def test_topic_forms_and_shared_subscriptions():
    topics = Topics("hospital/medgate", shared_group="workers")
    full = topics.location("hospital/medgate/h1/w3/b12/MON-1/vitals")
    assert (full.site, full.ward, full.bed, full.device) == ("h1", "w3", "b12", "MON-1")
    short = topics.location("hospital/medgate/w3/b12/vitals")
    assert (short.ward, short.bed, short.device) == ("w3", "b12", None)
    assert topics.subscriptions()[0] == "$share/workers/hospital/medgate/+/+/vitals"
    with pytest.raises(ValueError, match="levels"):
        topics.location("hospital/medgate/w3/vitals")
    with pytest.raises(ValueError, match="shared_group"):
        Topics("medgate", shared_group="a/b")


def _msg(seconds: float, **vitals) -> bytes:
    codes = {"hr": 147842, "rr": 151562, "spo2": 150456, "sbp": 150021, "temp": 150364}
    return json.dumps({"d": "MON-1", "t": T0_MS + int(seconds * 1000), "o": False, "c": "A",
                       "v": [[codes[k], v] for k, v in vitals.items()]}).encode()


@pytest.fixture
def bridge(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    b = VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals, states=StateTable(600),
                     news2_interval_s=0)
    b.registry.apply(AdtEvent("admit", "MON-1", datetime(2026, 1, 1, tzinfo=timezone.utc), patient_id="P"))
    yield b, store
    store.close()


def news2(resources):
    found = [r for r in resources if r.get("valueInteger") is not None]
    return found[0] if found else None


def test_news2_combines_the_latest_values_of_several_messages(bridge):
    b, _ = bridge
    topic = "medgate/h/w/b/MON-1/vitals"
    b.handle(topic, _msg(0, sbp=120, temp=37.0))
    score = news2(b.handle(topic, _msg(10, hr=80, rr=16, spo2=97)))
    assert score["status"] == "final" and score["valueInteger"] == 0
    assert len(score["derivedFrom"]) == 5  # RR, SpO2, BP panel, HR from t=10 and t=0
    stale = news2(b.handle(topic, _msg(700, hr=80, rr=16, spo2=97)))  # BP, temp now > 600 s old
    assert stale["status"] == "preliminary"


def test_a_late_message_is_stored_but_never_overrides_newer_state(bridge):
    b, store = bridge
    topic = "medgate/h/w/b/MON-1/vitals"
    b.handle(topic, _msg(100, hr=80, rr=16, spo2=97, sbp=120, temp=37.0))
    late = b.handle(topic, _msg(50, hr=150, rr=30, spo2=85))
    assert late and news2(late) is None  # its Observations, but no score
    after = news2(b.handle(topic, _msg(110, temp=37.0)))
    assert after["valueInteger"] == 0  # still HR 80, RR 16, SpO2 97 from t=100
    assert len([r for r in store.resources("Observation") if r["code"]["coding"][0]["code"] == "8867-4"]) == 2


def test_duplicate_compact_message_is_idempotent(bridge):
    b, store = bridge
    topic = "medgate/h/w/b/MON-1/vitals"
    first = b.handle(topic, _msg(0, hr=80))
    again = b.handle(topic, _msg(0, hr=80))
    assert [r["id"] for r in first] == [r["id"] for r in again]
    assert len(store.resources("Observation")) == len(first)
