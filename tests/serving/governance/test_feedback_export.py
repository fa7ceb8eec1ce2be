"""``export-training --with-feedback``: only studies with verdicts; each image's verdicts, de-identified."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np

from serving.feedback.service import FeedbackService, Reviewer
from serving.feedback.store import FeedbackStore
from serving.governance.export_training import export_training
from serving.governance.feedback_export import UNPLACED_MISSED
from serving.store import Store
from training.synthetic.dicom import make_dx_dataset


def add_study(store: Store, folder, images: int, positive: bool = True) -> str:
    """A study of ``images`` DX images, one tb 1.1.0 finding on each (one SR per image)."""
    study_uid = None
    for k in range(images):
        ds = make_dx_dataset((np.random.default_rng(k).random((64, 64)) * 4000).astype(np.uint16),
                             study_uid=study_uid)
        study_uid = ds.StudyInstanceUID
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        store.add_instance({"sop_instance_uid": ds.SOPInstanceUID, "study_uid": study_uid,
                            "series_uid": ds.SeriesInstanceUID, "sop_class_uid": ds.SOPClassUID, "modality": "DX",
                            "path": str(path), "calling_ae": "CXR_ROOM_1"})
        store.add_result(study_uid, "sr", str(folder / f"SR-{k}.dcm"), {
            "model": "tb", "version": "1.1.0", "sop_instance_uid": f"1.2.3.{k}",
            "findings": [{"probability": 0.9 if positive else 0.1, "positive": positive, "location": None,
                          "point": [16, 32] if positive else None, "source": ds.SOPInstanceUID}]})
    store.set_study_status(study_uid, "done")
    return study_uid


def test_only_studies_with_verdicts_are_exported_with_them_and_no_reviewer_is_named(tmp_path):
    state = tmp_path / "var"
    (state / "spool").mkdir(parents=True)
    store = Store(state / "medgate.sqlite3")
    service = FeedbackService(store, FeedbackStore(store.database))
    judged, unjudged, two_images = (add_study(store, state / "spool", n) for n in (1, 1, 2))
    ask = {"model": "tb", "version": "1.1.0"}
    service.on_finding(Reviewer("Dr Nguyen Van A", "radiologist"),
                       {**ask, "study_uid": judged, "finding": 1, "verdict": "disagree", "reason": "false-positive",
                        "comment": "calcified granuloma, patient known"})
    service.on_finding(Reviewer("Dr Tran Thi B", "clinician"), {**ask, "study_uid": judged, "finding": 1,
                                                                "verdict": "agree"})
    service.on_finding(Reviewer("Dr Nguyen Van A", "radiologist"),
                       {**ask, "study_uid": two_images, "finding": 2, "verdict": "agree"})
    service.on_finding(Reviewer("Dr Nguyen Van A", "radiologist"),  # on the report: which of the two images?
                       {**ask, "study_uid": two_images, "finding": None, "verdict": "disagree",
                        "reason": "missed-finding", "point_fraction": [0.5, 0.5]})
    store.close()

    report = export_training(state, datetime(2000, 1, 1, tzinfo=timezone.utc), tmp_path / "out", with_feedback=True)
    assert report.studies == 2 and report.images == {"tb": 3} and report.feedback_cases == {"tb": 2}
    assert report.feedback_skipped == {UNPLACED_MISSED: 1}
    text = (tmp_path / "out" / "tb" / "feedback.json").read_text()
    assert "Nguyen" not in text and "Tran" not in text and "granuloma" not in text and unjudged not in text
    cases = json.loads(text)["cases"]
    first = next(c for c in cases if len(c["verdicts"]) == 2)
    assert first["model_call"] == {"positive": True, "probability": 0.9, "centres": [[0.25, 0.5]]}
    assert [(v["verdict"], v["reason"], v["reviewer"], v["role"]) for v in first["verdicts"]] == [
        ("disagree", "false-positive", "reviewer-1", "radiologist"), ("agree", None, "reviewer-2", "clinician")]
    assert all((tmp_path / "out" / "tb" / c["image"]).is_file() for c in cases)
