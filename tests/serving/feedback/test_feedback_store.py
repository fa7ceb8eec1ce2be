"""The feedback store: verdicts per model version (what monitoring and retraining read), cards issued;
on SQLite and on PostgreSQL (``backend``)."""
from __future__ import annotations

from serving.feedback.records import Feedback
from serving.feedback.store import FeedbackStore, IssuedCard


def verdict(i: int, version: str, verdict: str = "agree") -> Feedback:
    return Feedback(id=f"f{i}", kind="finding", verdict=verdict, model="tb", model_version=version,
                    target=f"Observation/o{i}", who="dr a", role="clinician", recorded_at=1000.0 + i,
                    study_uid="1.2.3", site="MODALITY", reason=None if verdict == "agree" else "false-positive")


def test_verdicts_are_read_back_per_model_version_and_study(database_location):
    store = FeedbackStore(database_location)
    assert store.add([verdict(1, "1.0.0"), verdict(2, "1.1.0", "disagree"), verdict(3, "1.0.0")]) == 3
    assert store.add([verdict(3, "1.0.0")]) == 0  # the same verdict again
    assert [f.id for f in store.of_model("tb", "1.0.0")] == ["f1", "f3"]
    assert [f.id for f in store.of_model("tb", since=1001.5)] == ["f2", "f3"]
    assert store.of_model("tb", "1.1.0")[0] == verdict(2, "1.1.0", "disagree")
    assert len(store.of_study("1.2.3")) == 3 and store.of_target("Observation/o2")[0].reason == "false-positive"


def test_issued_cards_are_found_by_uuid(database_location):
    store = FeedbackStore(database_location)
    card = IssuedCard("u-1", "medgate-patient-view", "Patient/p", "news2", "RCP-2017", "NEWS2 7", "https://ehr", 5.0)
    store.add_cards([card])
    assert store.cards(["u-1", "u-2"]) == {"u-1": card}
