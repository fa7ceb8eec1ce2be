"""Agreement and PPV per site from the feedback store's verdicts; the judged finding's call is
found by the Observation id the FHIR report gave it."""
from __future__ import annotations

import pytest

from clinical_data import fill
from serving.feedback.records import Feedback, feedback_id
from serving.feedback.store import FeedbackStore
from serving.monitoring.verdicts import Tally, positive_calls, tally
from serving.store import Store


@pytest.fixture
def data(tmp_path):
    store = Store(tmp_path / "medgate.sqlite3")
    found = fill(store)  # tb 1.0.0 on one CXR from CXR_ROOM_1: finding 1 positive (0.85), finding 2 not (0.2)
    yield store, FeedbackStore(store.database), found
    store.close()


def verdict(data, target: str, who: str, verdict: str, at: float, reason: str | None = None,
            site: str | None = "CXR_ROOM_1") -> Feedback:
    return Feedback(feedback_id(target, who, at), "finding", verdict, "tb", "1.0.0", target, who, "clinician", at,
                    study_uid=data[2]["study_uid"], site=site, reason=reason)


def test_calls_are_found_by_the_report_observation_ids(data):
    store, _, found = data
    calls = positive_calls(store, found["study_uid"], "tb", "1.0.0")
    first, second = (f"Observation/{o['id']}" for o in found["observations"])
    assert calls == {first: True, second: False}


def test_agreement_and_ppv_from_the_newest_verdict_of_each_reviewer(data):
    store, feedback, found = data
    positive, negative = (f"Observation/{o['id']}" for o in found["observations"])
    report = f"DiagnosticReport/{found['report']['id']}"
    feedback.add([
        verdict(data, positive, "dr a", "disagree", 1.0, "false-positive"),
        verdict(data, positive, "dr a", "agree", 2.0),                 # dr a changed their mind: agree counts
        verdict(data, positive, "dr b", "disagree", 3.0, "wrong-location"),
        verdict(data, negative, "dr a", "agree", 4.0),
        verdict(data, report, "dr b", "disagree", 5.0, "missed-finding"),
        verdict(data, negative, "dr c", "agree", 6.0, site=None),       # an uploaded image's verdict
    ])
    sites = tally(feedback, store, "tb", "1.0.0", since=0.0)
    room = sites["CXR_ROOM_1"]
    # 2 agree of 4 verdicts; on the positive call: dr a agrees (TP), dr b disagrees (FP)
    assert (room.agree, room.disagree, room.agreement) == (2, 2, 0.5)
    assert (room.true_positive, room.false_positive, room.ppv) == (1, 1, 0.5)
    assert sites["upload"].agreement == 1.0 and sites["upload"].ppv is None  # no verdict on a positive call
    assert tally(feedback, store, "tb", "1.0.0", since=5.5)["upload"].n == 1  # the window's verdicts only


def test_no_verdict_gives_no_figure():
    assert Tally().agreement is None and Tally().ppv is None
