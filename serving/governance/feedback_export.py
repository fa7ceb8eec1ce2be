"""The clinicians' verdicts of an exported study, tied to its exported images: ``feedback.json``.

``medgate export-training --with-feedback`` writes, beside each model's ``dataset.json``, a
``feedback.json`` listing every exported image that has a finding verdict
(:class:`serving.feedback.records.Feedback`, kind ``finding``)::

    {"model": "tb", "deployed_version": "1.1.0", "numCases": 2,
     "cases": [{"image": "images/2.25....dcm", "version": "1.1.0",
                "model_call": {"positive": true, "probability": 0.91, "centres": [[0.25, 0.5]]},
                "verdicts": [{"verdict": "disagree", "reason": "false-positive", "point": null,
                              "reviewer": "reviewer-1", "role": "radiologist", "order": 3}]}]}

The export carries facts, not labels: what the model called and what each reviewer said; the
label policy (agree, false positive, missed finding ...) is the training side's
(:mod:`training.feedback`).  What identifies people is left out: reviewers become ``reviewer-<n>``
(numbered within the export), comments and times are dropped (``order`` keeps the sequence), the
image is named by its de-identified SOP Instance UID.

A verdict names its finding by the Observation id the FHIR report gives it
(:func:`serving.feedback.service.finding_observation_id`: findings numbered from 1 over the model
version's SRs on the study, in the order written).  A missed finding marked on the report
(``DiagnosticReport/<id>``) belongs to the version's only image on the study; on a study with
several images it cannot be placed and is counted as skipped.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from serving.feedback.records import Feedback, Kind
from serving.feedback.service import finding_observation_id
from serving.fhir.report import report_id

FILE = "feedback.json"
SR_KIND = "sr"
#: Why a verdict was not tied to an image (counted in :class:`VerdictIndex`).
UNPLACED_MISSED = "missed finding on a study with several images"
UNKNOWN_TARGET = "verdict on a finding no longer in the study's results"


def finding_sources(results: Iterable, study_uid: str) -> dict[str, str]:
    """Verdict target (``Observation/<id>``, ``DiagnosticReport/<id>``) -> the source SOP Instance
    UID it is about, for every model version's SR results on ``study_uid`` (a report target only
    where the version judged a single image)."""
    targets: dict[str, str] = {}
    numbered: dict[tuple[str, str], int] = defaultdict(int)
    images: dict[tuple[str, str], set[str]] = defaultdict(set)
    for result in results:
        summary = result.summary
        if result.kind != SR_KIND:
            continue
        key = (str(summary.get("model", "")), str(summary.get("version", "")))
        for finding in summary.get("findings") or []:
            numbered[key] += 1
            source = str(finding.get("source") or "")
            targets[f"Observation/{finding_observation_id(study_uid, *key, numbered[key], source)}"] = source
            images[key].add(source)
    for (model, version), sources in images.items():
        if len(sources) == 1:
            targets[f"DiagnosticReport/{report_id(study_uid, model, version)}"] = next(iter(sources))
    return targets


class VerdictIndex:
    """Finding verdicts by source image, over one export; reviewers numbered as first seen."""

    def __init__(self) -> None:
        self.reviewers: dict[str, str] = {}
        self.skipped: Counter[str] = Counter()
        self._order = 0

    def of_study(self, study_uid: str, results: list, verdicts: Iterable[Feedback]) -> dict[str, list[dict]]:
        """Source SOP Instance UID -> its verdicts (de-identified, oldest first) on ``study_uid``."""
        sources = finding_sources(results, study_uid)
        out: dict[str, list[dict]] = defaultdict(list)
        for item in sorted(verdicts, key=lambda f: f.recorded_at):
            if item.kind != Kind.FINDING.value:
                continue
            source = sources.get(item.target)
            if source is None:
                self.skipped[UNPLACED_MISSED if item.target.startswith("DiagnosticReport/") else UNKNOWN_TARGET] += 1
                continue
            self._order += 1
            reviewer = self.reviewers.setdefault(item.who, f"reviewer-{len(self.reviewers) + 1}")
            out[source].append({"verdict": item.verdict, "reason": item.reason, "point": item.point_fraction,
                                "reviewer": reviewer, "role": item.role, "version": item.model_version,
                                "order": self._order})
        return dict(out)


def feedback_case(entry: dict, version: str, verdicts: list[dict]) -> dict:
    """One ``feedback.json`` case from a ``dataset.json`` entry and the image's verdicts."""
    return {"image": entry["image"], "version": version,
            "model_call": {"positive": bool(entry["label"]), "probability": entry["probability"],
                           "centres": entry["centres"]},
            "verdicts": verdicts}


def write_feedback(folder: Path, model: str, deployed_version: str | None, cases: list[dict]) -> Path:
    """Write ``folder/feedback.json`` (see the module docstring)."""
    data = {"name": f"medgate-{model}-feedback",
            "description": "Clinicians' verdicts on the model's findings of the exported images (reviewers "
                           "pseudonymised, comments and times left out); labels are derived by medgate train "
                           "--from-feedback",
            "model": model, "deployed_version": deployed_version, "numCases": len(cases), "cases": cases}
    path = Path(folder) / FILE
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path
