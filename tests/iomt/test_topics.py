"""Vitals topics: location by position; NUL, control characters and 60,000-character levels refused."""
from __future__ import annotations

import json
import re
import logging

import pytest

from iomt.bridge import VitalsBridge
from iomt.dead_letters import MAX_REASON_CHARS, MAX_SOURCE_CHARS
from iomt.topics import MAX_LEVEL_CHARS, Location, Topics
from kernel.logs import TextFormatter
from serving.store import Store
from training.synthetic.vitals import vitals_course

FORGED = "\n2026-11-22 10:00:00,000 INFO    medgate.iomt: forged"


def test_short_and_full_form():
    topics = Topics("medgate")
    assert topics.location("medgate/w1/b1/vitals") == Location(ward="w1", bed="b1")
    assert topics.location("medgate/h1/w1/b1/MON-1/vitals") == Location("w1", "b1", "h1", "MON-1")
    assert topics.location(f"medgate/{'w' * MAX_LEVEL_CHARS}/b1/vitals").ward == "w" * MAX_LEVEL_CHARS


@pytest.mark.parametrize("topic, says", [
    ("medgate/w1\x00/b1/vitals", "U+0000"),
    (f"medgate/w1{FORGED}/b1/vitals", "U+000A"),
    ("medgate/w1/b1\x1b[2J/vitals", "U+001B"),
    (f"medgate/h1/w1/b1/{'M' * 60_000}/vitals", "at most"),
    (f"medgate/{'w' * (MAX_LEVEL_CHARS + 1)}/b1/vitals", f"at most {MAX_LEVEL_CHARS}"),
    ("medgate/w1\u202e1b/b1/vitals", "U+202E (Cf)"),  # right-to-left override: shows as ward "w1b1"
    ("medgate/w1/b1\u2028x/vitals", "U+2028 (Zl)"),
    ("medgate/h1/w1/b1/MON\u2066-1/vitals", "U+2066 (Cf)"),
    ("medgate/w\u200b1/b1/vitals", "U+200B (Cf)"),  # zero-width space: a second "w1"
    ("medgate/w1/b1\x85/vitals", "U+0085 (Cc)"),
])
def test_refused_with_a_short_reason(topic, says):
    with pytest.raises(ValueError, match=re.escape(says)) as refused:
        Topics("medgate").location(topic)
    assert len(str(refused.value)) < 300


@pytest.fixture
def bridge(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    yield VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals), store
    store.close()


def compact() -> bytes:
    return json.dumps(vitals_course(1, patient_id="P1", deteriorating=False)[0]).encode()


def test_bad_topics_are_dead_lettered_and_the_bridge_goes_on(bridge, caplog):
    b, store = bridge
    caplog.handler.setFormatter(TextFormatter())
    bad = [f"medgate/h1/w1/b1/{'M' * 60_000}/vitals", "medgate/h1/w1\x00/b1/MON-1/vitals",
           f"medgate/w1{FORGED}/vitals"]
    with caplog.at_level(logging.WARNING, logger="medgate"):
        for topic in bad:
            assert b.handle(topic, compact()) == []
    assert b.handle("medgate/h1/w1/b1/MON-1/vitals", compact())  # still working
    rows = store.vitals.dead_letters()
    assert len(rows) == len(bad)
    assert all(len(r["reason"]) <= MAX_REASON_CHARS and len(r["source"]) <= MAX_SOURCE_CHARS + 40
               for r in rows)
    assert "at most" in rows[0]["reason"] and "U+0000" in rows[1]["reason"]
    lines = caplog.text.splitlines()
    assert len(lines) == len(bad)  # one line a refusal, the forged one escaped in it
    assert not any(line.startswith("2026-11-22 10:00:00,000 INFO") for line in lines)
    assert all(len(line) < 1000 for line in lines)
