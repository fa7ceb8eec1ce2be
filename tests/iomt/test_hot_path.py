"""The bridge's fast paths give what the plain ones give: trusted message construction, cached
compact vitals, memoised NEWS2 scores, shared Observation parts (valid FHIR R4 all the same)."""
from __future__ import annotations

import itertools
import json
import random
from datetime import datetime, timezone

import orjson
from fhir.resources.R4B.observation import Observation

from iomt.compact import decode
from iomt.news2 import News2Input, score
from iomt.observations import news2_observation, vital_observations
from iomt.payload import VitalsMessage
from iomt.state import StateTable
from models import clinical_codes as codes

T0_MS = 1_795_000_000_000


def compact(**doc) -> bytes:
    return orjson.dumps({"d": "MON-1", "t": T0_MS, **doc})


def test_checked_message_equals_the_validated_one():
    msg = decode(compact(v=[[147842, 72], [150456, 97.5]], o=True, c="V", s=2))
    rebuilt = VitalsMessage(patient_id=None, patient_system=None, time=msg.time, vitals=msg.vitals,
                            device="MON-1", on_oxygen=True, consciousness=msg.consciousness,
                            spo2_scale=2)
    assert msg == rebuilt and hash(msg) == hash(rebuilt)
    assert VitalsMessage.checked(patient_id="p", patient_system=None, time=msg.time,
                                 vitals=msg.vitals).device is None  # class default


def test_cached_vitals_keep_what_the_device_sent():
    as_int = decode(compact(v=[[147842, 72]])).vitals[0]
    as_float = decode(compact(v=[[147842, 72.0]])).vitals[0]
    assert type(as_int.source_value) is int and type(as_float.source_value) is float
    assert as_int.value == as_float.value == 72.0
    assert decode(compact(v=[[147842, 72]])).vitals[0] is as_int  # the same reading, cached


def test_memoised_scores_match_scoring_each_input():
    rng = random.Random(5)
    table = StateTable(900)
    for k in range(3000):
        vitals = [[code, round(rng.uniform(lo, hi), rng.choice([0, 1]))]
                  for code, lo, hi in ((147842, 30, 160), (150456, 80, 100), (151562, 5, 35),
                                       (150021, 70, 230), (150364, 34.0, 40.0))
                  if rng.random() < 0.7] or [[147842, 80]]
        doc = {"v": vitals, "t": T0_MS + k * 1000}
        if rng.random() < 0.5:
            doc["o"] = rng.random() < 0.5
        if rng.random() < 0.3:
            doc["c"] = rng.choice("ACVPU")
        msg = decode(compact(**doc))
        snapshot = table.update(f"Patient/P{k % 7}", msg, rng.choice([1, 2]))
        assert snapshot.score() == score(snapshot.inp)
        assert snapshot.inp == News2Input(**{f: getattr(snapshot.inp, f)
                                             for f in News2Input.__dataclass_fields__})


def test_compact_path_observations_validate_and_serialise_independently():
    msgs = [decode(compact(t=T0_MS + k, v=[[147842, 60 + k], [150456, 95], [151562, 14],
                                            [150021, 120], [150022, 80], [150364, 36.6 + k / 10]]))
            for k in range(3)]
    resources = list(itertools.chain.from_iterable(
        vital_observations(m, "Patient/P1", "Device/MON-1") for m in msgs))
    table = StateTable()
    snapshot = table.update("Patient/P1", msgs[-1], 1)
    resources.append(news2_observation(snapshot.score(), msgs[-1], "Patient/P1", snapshot.measured))
    for resource in resources:
        Observation.model_validate(resource)
        assert json.loads(orjson.dumps(resource)) == resource
    heart = [r for r in resources if r["code"]["coding"][0]["code"] == codes.HEART_RATE]
    assert [r["valueQuantity"]["value"] for r in heart] == [60, 61, 62]
    assert len({r["id"] for r in resources}) == len(resources)
    assert heart[0]["effectiveDateTime"] == datetime.fromtimestamp(
        T0_MS / 1000, tz=timezone.utc).isoformat()


def test_ids_are_time_ordered_version_8_uuids():
    import uuid

    from iomt.observations import observation_id

    times = [datetime(2026, 11, 22, 3, 15, tzinfo=timezone.utc).replace(microsecond=k * 1000)
             for k in range(0, 999, 7)]
    ids = [observation_id("Patient/P1", codes.LOINC_SYSTEM, codes.HEART_RATE, t) for t in times]
    for text, at in zip(ids, times):
        parsed = uuid.UUID(text)
        assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
        assert int(parsed.hex[:12], 16) == round(at.timestamp() * 1000)  # unix_ts_ms first
    assert ids == sorted(ids)  # one patient's readings sort by time: the index grows at its end


def test_bed_census_is_written_on_change_and_refreshed(tmp_path):
    from iomt.alerts import AlertPolicy
    from iomt.bridge import DEFAULT_SYSTEMS
    from iomt.identity import AdtEvent, DeviceRegistry
    from iomt.pipeline import CENSUS_REFRESH, VitalsPipeline
    from iomt.topics import Topics
    from serving.store import Store

    store = Store(tmp_path / "db.sqlite3")
    try:
        registry = DeviceRegistry(store.vitals, DEFAULT_SYSTEMS)
        since = datetime(2020, 1, 1, tzinfo=timezone.utc)
        registry.apply(AdtEvent("admit", "MON-1", since, patient_id="P1"))
        registry.apply(AdtEvent("admit", "MON-2", since, patient_id="P2"))
        pipeline = VitalsPipeline(Topics("medgate"), store.vitals, registry, states=StateTable(),
                                  alerts=AlertPolicy())
        refresh_ms = int(CENSUS_REFRESH.total_seconds() * 1000)

        def census(device: str, t_ms: int) -> list:
            payload = orjson.dumps({"d": device, "t": t_ms, "v": [[147842, 72]]})
            return list(pipeline.run([("medgate/h1/w1/b1/x/vitals", payload)]).beds.values())

        assert [row[3:5] for row in census("MON-1", T0_MS)] == [("Patient/P1", "MON-1")]
        assert census("MON-1", T0_MS + 1000) == []  # unchanged, written 1 s ago
        assert census("MON-1", T0_MS - 5000) == []  # a late message never rewrites it
        [row] = census("MON-1", T0_MS + refresh_ms)  # refreshed
        assert row[5] == datetime.fromtimestamp((T0_MS + refresh_ms) / 1000, timezone.utc).isoformat()
        assert [row[3:5] for row in census("MON-2", T0_MS + refresh_ms + 1)] == [("Patient/P2", "MON-2")]
    finally:
        store.close()
