"""The window's SRs with their sending site (the calling AE title, or upload): Store.results_since."""
from __future__ import annotations

import time

import pytest

from serving.monitoring.window import UNKNOWN_SITE, UPLOAD_SITE, ResultWindow
from serving.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "medgate.sqlite3")
    yield s
    s.close()


def _summary(p: float, **more) -> dict:
    return {"model": "tb", "version": "1.1.0", "findings": [{"probability": p, "positive": p > 0.5, "source": "1.2"}],
            **more}


def test_rows_carry_site_score_call_and_inputs(store):
    store.add_instance({"sop_instance_uid": "1.2.3.1", "study_uid": "1.2.3", "series_uid": "1.2.3.0",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1", "modality": "DX", "path": "/x.dcm",
                        "calling_ae": "CXR_ROOM_1"})
    store.add_result("1.2.3", "sr", "/r/SR.dcm", _summary(0.9, inputs={"mean_intensity": 0.4, "note": "x"}))
    store.add_result("1.2.3", "sc", "/r/SC.dcm", _summary(0.9))  # the same finding again: not read
    store.add_result("1.2.4", "sr", "/r/SR2.dcm", _summary(0.2, source="upload"))
    store.add_result("1.2.5", "sr", "/r/SR3.dcm", _summary(0.3))  # no instance row, not an upload
    store.add_result("1.2.6", "sr", None, {"model": "tb", "version": "1.1.0", "findings": []})  # no finding
    rows = ResultWindow(store).since(0.0, 100)
    assert [(r.study_uid, r.site, r.score, r.positive) for r in rows] == [
        ("1.2.3", "CXR_ROOM_1", 0.9, True), ("1.2.4", UPLOAD_SITE, 0.2, False), ("1.2.5", UNKNOWN_SITE, 0.3, False)]
    assert rows[0].inputs == {"mean_intensity": 0.4}


def test_the_window_keeps_the_newest_rows_after_since(store):
    for i in range(5):
        store.add_result(f"1.2.{i}", "sr", None, _summary(i / 10))
    assert [r.study_uid for r in ResultWindow(store).since(0.0, 2)] == ["1.2.3", "1.2.4"]
    assert ResultWindow(store).since(time.time() + 60, 10) == []
    with pytest.raises(ValueError, match="at least 1, 0 is given"):
        ResultWindow(store).since(0.0, 0)
