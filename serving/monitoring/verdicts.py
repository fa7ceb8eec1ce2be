"""Clinicians' verdicts on one model version's findings, counted per site: agreement and PPV.

The feedback store (:class:`serving.feedback.store.FeedbackStore`) keeps every verdict, append-only;
for each (target, reviewer) only the newest counts.  Finding verdicts only (``kind`` ``finding``):

* **agreement** = agree / (agree + disagree), every finding verdict counted, a missed finding
  marked on the report (target ``DiagnosticReport/...``) being a disagreement;
* **PPV** = TP / (TP + FP) over verdicts on findings the model called positive: ``agree`` is a true
  positive, ``disagree`` (false positive or wrong location: the call as made is wrong) a false
  positive.  A finding's call is looked up in the results row it came from, by the Observation
  id the FHIR report and the feedback give it (:func:`serving.feedback.service.finding_observation_id`).

The site of a verdict is the one the feedback recorded (the study's sending AE title), else
:data:`serving.monitoring.window.UPLOAD_SITE` (an uploaded image has no sending AE).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from serving.feedback.records import Kind, Verdict
from serving.feedback.service import finding_observation_id
from serving.monitoring.window import SR_KIND, UPLOAD_SITE


class FeedbackRows(Protocol):
    """The feedback store's read for monitoring (:meth:`serving.feedback.store.FeedbackStore.of_model`)."""

    def of_model(self, model: str, version: str | None = None, since: float = 0.0) -> list: ...


class StudyResults(Protocol):
    """The results rows of a study (:meth:`serving.store.Store.results_of`)."""

    def results_of(self, study_uid: str) -> list: ...


@dataclass
class Tally:
    """Verdicts of one model version at one site."""

    agree: int = 0
    disagree: int = 0
    true_positive: int = 0
    false_positive: int = 0

    @property
    def n(self) -> int:
        return self.agree + self.disagree

    @property
    def agreement(self) -> float | None:
        return self.agree / self.n if self.n else None

    @property
    def ppv(self) -> float | None:
        judged = self.true_positive + self.false_positive
        return self.true_positive / judged if judged else None

    def as_json(self) -> dict:
        return {"n": self.n, "agree": self.agree, "disagree": self.disagree, "agreement": self.agreement,
                "true_positive": self.true_positive, "false_positive": self.false_positive, "ppv": self.ppv}


def positive_calls(results: StudyResults, study_uid: str, model: str, version: str) -> dict[str, bool]:
    """``Observation/<id>`` -> the finding's positive call, for the model version's findings on the
    study (numbered from 1 over its SRs in the order written, as the FHIR report and the worklist do)."""
    calls, index = {}, 0
    for result in results.results_of(study_uid):
        summary = result.summary
        if result.kind != SR_KIND or (summary.get("model"), summary.get("version")) != (model, version):
            continue
        for finding in summary.get("findings") or []:
            index += 1
            target = finding_observation_id(study_uid, model, version, index, str(finding.get("source") or ""))
            calls[f"Observation/{target}"] = bool(finding.get("positive"))
    return calls


def newest(verdicts: Iterable) -> list:
    """The newest finding verdict per (target, reviewer)."""
    latest = {}
    for item in sorted(verdicts, key=lambda f: f.recorded_at):
        if item.kind == Kind.FINDING.value:
            latest[(item.target, item.who)] = item
    return list(latest.values())


def tally(feedback: FeedbackRows, results: StudyResults, model: str, version: str, since: float) -> dict[str, Tally]:
    """Site -> :class:`Tally` of the version's finding verdicts recorded after ``since``."""
    verdicts = newest(feedback.of_model(model, version, since))
    calls: dict[str, bool] = {}
    for study in {v.study_uid for v in verdicts if v.study_uid}:
        calls.update(positive_calls(results, study, model, version))
    sites: dict[str, Tally] = {}
    for v in verdicts:
        t = sites.setdefault(v.site or UPLOAD_SITE, Tally())
        agreed = v.verdict == Verdict.AGREE.value
        t.agree += agreed
        t.disagree += not agreed
        if calls.get(v.target):
            t.true_positive += agreed
            t.false_positive += not agreed
    return sites
