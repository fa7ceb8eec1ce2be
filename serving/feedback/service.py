"""The checks before a verdict is stored, and the storing: the target must be known, the role allowed.

:class:`FeedbackService` turns a request's JSON into :class:`serving.feedback.records.Feedback`,
refuses with :class:`FeedbackRefused` (an HTTP status and a reason naming what was given) before
anything is written, and stores the row (:class:`serving.feedback.store.FeedbackStore`) and its
FHIR Observation (:mod:`serving.feedback.fhir`, in the server's resource table, so the FHIR read
API serves it).

Who may say what: findings are judged by :data:`FINDING_REVIEWERS`, alerts by
:data:`ALERT_REVIEWERS` (roles of :mod:`serving.http.auth`; a role the server does not issue yet,
``radiologist`` or ``nurse``, is listed so that a token carrying it works once it exists).
"""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable

from dicom_gateway.uids import is_uid
from serving.fhir.report import ID_NAMESPACE as REPORT_NAMESPACE, device_resource, report_id
from serving.feedback.fhir import feedback_observation
from serving.feedback.records import Feedback, FindingReason, Kind, feedback_id
from serving.feedback.store import FeedbackStore, IssuedCard

#: Roles that judge imaging findings (the worklist's radiologists; clinicians read studies too).
FINDING_REVIEWERS = frozenset({"radiologist", "clinician"})
#: Roles that judge ward alerts.
ALERT_REVIEWERS = frozenset({"nurse", "clinician"})
#: What raises a ward alert: the NEWS2 score (Royal College of Physicians, NEWS2, 2017), iomt.alerts.
ALERT_SOURCE = ("news2", "RCP-2017")
#: Role recorded for a CDS Client's verdicts (the EHR reports its user's action).
CDS_CLIENT_ROLE = "cds-client"
#: Model names and versions as the registry writes them.
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: FHIR R4 id datatype: [A-Za-z0-9\-\.]{1,64}.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: RFC 9110: 400 malformed, 403 role, 404 unknown target, 422 a value the rules refuse.
BAD_REQUEST, FORBIDDEN, NOT_FOUND, UNPROCESSABLE = 400, 403, 404, 422


class FeedbackRefused(Exception):
    """Nothing was stored: ``status`` and the reason (the message)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Reviewer:
    """Who gives the verdict: name and role (a :class:`serving.http.auth.Principal` fits)."""

    name: str
    role: str | None


def finding_observation_id(study_uid: str, model: str, version: str, index: int, source_sop_uid: str) -> str:
    """The id :func:`serving.fhir.report.build_report_resources` gives the ``index``-th (from 1)
    finding's Observation."""
    return str(uuid.uuid5(REPORT_NAMESPACE, f"{report_id(study_uid, model, version)}|{index}|{source_sop_uid}"))


def _text(body: dict, name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise FeedbackRefused(BAD_REQUEST, f"{name} must be a non-empty string, {str(value)[:80]!r} is given")
    return value


def _point(body: dict) -> tuple[float | None, float | None]:
    point = body.get("point_fraction")
    if point is None:
        return None, None
    if not (isinstance(point, list) and len(point) == 2 and all(isinstance(v, (int, float)) for v in point)):
        raise FeedbackRefused(BAD_REQUEST, f"point_fraction must be [x, y], {str(point)[:80]!r} is given")
    return float(point[0]), float(point[1])


class FeedbackService:
    """Check and store verdicts on ``store`` (:class:`serving.store.Store`: results, resources, the
    gateway's instances) into ``feedback`` (:class:`FeedbackStore`)."""

    def __init__(self, store, feedback: FeedbackStore, clock: Callable[[], float] = time.time) -> None:
        self.store, self.feedback, self.clock = store, feedback, clock

    # -- findings ----------------------------------------------------------------------------------
    def on_finding(self, reviewer: Reviewer, body: Any) -> Feedback:
        """``{"study_uid", "model", "version", "finding": n (from 1; null for a missed finding),
        "verdict", "reason", "point_fraction": [x, y], "comment"}``."""
        if reviewer.role not in FINDING_REVIEWERS:
            raise FeedbackRefused(FORBIDDEN, f"role {reviewer.role!r} may not judge findings; "
                                             f"allowed: {sorted(FINDING_REVIEWERS)}")
        if not isinstance(body, dict):
            raise FeedbackRefused(BAD_REQUEST, f"the body must be a JSON object, {type(body).__name__} is given")
        study_uid, model, version = (_text(body, k) for k in ("study_uid", "model", "version"))
        if not is_uid(study_uid):
            raise FeedbackRefused(BAD_REQUEST, f"study_uid must be a UID (PS3.5 9.1), {study_uid[:80]!r} is given")
        if not (_NAME.match(model) and _NAME.match(version)):
            raise FeedbackRefused(BAD_REQUEST, f"model and version must match {_NAME.pattern}, "
                                               f"{model[:80]!r} and {version[:80]!r} are given")
        findings = self._findings(study_uid, model, version)
        index = body.get("finding")
        if index is None:
            if body.get("reason") != FindingReason.MISSED_FINDING.value:
                raise FeedbackRefused(BAD_REQUEST, "finding (its number, from 1) is required unless the reason "
                                                   "is missed-finding")
            target = f"DiagnosticReport/{report_id(study_uid, model, version)}"
        else:
            if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= len(findings):
                raise FeedbackRefused(NOT_FOUND, f"{model} {version} has {len(findings)} finding(s) on study "
                                                 f"{study_uid}; finding {str(index)[:20]!r} is given")
            source = str(findings[index - 1].get("source") or "")
            target = f"Observation/{finding_observation_id(study_uid, model, version, index, source)}"
        point_x, point_y = _point(body)
        now = self.clock()
        instances = self.store.instances_of(study_uid)
        item = self._make(id=feedback_id(target, reviewer.name, now), kind=Kind.FINDING.value,
                          verdict=body.get("verdict"), model=model, model_version=version, target=target,
                          who=reviewer.name, role=reviewer.role, recorded_at=now, study_uid=study_uid,
                          site=instances[0].calling_ae if instances else None, reason=body.get("reason"),
                          comment=body.get("comment"), point_x=point_x, point_y=point_y)
        judged = self.store.resource(*target.split("/", 1))
        self._store([item], (judged or {}).get("subject"), device_resource(model, version)["id"])
        return item

    def _findings(self, study_uid: str, model: str, version: str) -> list[dict]:
        """The findings of the model version's SRs on the study, in the order they were written: the
        order of the FHIR report's Observations and of the worklist's numbers (one SR per image)."""
        found, any_sr = [], False
        for result in self.store.results_of(study_uid):
            summary = result.summary
            if result.kind == "sr" and (summary.get("model"), summary.get("version")) == (model, version):
                any_sr = True
                found += summary.get("findings") or []
        if not any_sr:
            raise FeedbackRefused(NOT_FOUND, f"study {study_uid} has no result of {model} {version}")
        return found

    # -- alerts ------------------------------------------------------------------------------------
    def on_alert(self, reviewer: Reviewer, flag_id: str, body: Any) -> Feedback:
        """``{"verdict": "helpful" | "not-helpful", "reason": code, "comment"}`` on ``Flag/<flag_id>``."""
        if reviewer.role not in ALERT_REVIEWERS:
            raise FeedbackRefused(FORBIDDEN, f"role {reviewer.role!r} may not judge alerts; "
                                             f"allowed: {sorted(ALERT_REVIEWERS)}")
        if not FHIR_ID.match(flag_id):
            raise FeedbackRefused(BAD_REQUEST, f"the alert must be a Flag id ({FHIR_ID.pattern}), "
                                               f"{flag_id[:80]!r} is given")
        if not isinstance(body, dict):
            raise FeedbackRefused(BAD_REQUEST, f"the body must be a JSON object, {type(body).__name__} is given")
        flag = self.store.resource("Flag", flag_id)
        if flag is None:
            raise FeedbackRefused(NOT_FOUND, f"Flag/{flag_id} is not a known alert")
        subject = flag.get("subject") or {}
        now = self.clock()
        target = f"Flag/{flag_id}"
        item = self._make(id=feedback_id(target, reviewer.name, now), kind=Kind.ALERT.value,
                          verdict=body.get("verdict"), model=ALERT_SOURCE[0], model_version=ALERT_SOURCE[1],
                          target=target, who=reviewer.name, role=reviewer.role, recorded_at=now,
                          patient=subject.get("reference"), site=self._site(subject.get("reference")),
                          reason=body.get("reason"), comment=body.get("comment"))
        self._store([item], subject or None, None)
        return item

    def _site(self, patient_ref: str | None) -> str | None:
        if not patient_ref:
            return None
        beds = [b for b in self.store.vitals.beds(self.clock() - 86400.0) if b.patient_ref == patient_ref]
        return beds[0].site if beds else None

    # -- CDS Hooks cards ---------------------------------------------------------------------------
    def on_cards(self, client: str, service_id: str, body: Any, issuer: str | None = None) -> list[Feedback]:
        """CDS Hooks 2.0 feedback (``{"feedback": [{"card", "outcome", "overrideReason",
        "outcomeTimestamp"}, ...]}``) on cards ``service_id`` issued (to ``issuer``, the calling
        client's ``iss``, when given: one EHR cannot answer for another's cards); all stored or none."""
        entries = body.get("feedback") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise FeedbackRefused(BAD_REQUEST, "the body must be {\"feedback\": [{\"card\", \"outcome\", ...}]}, "
                                               f"{str(body)[:120]!r} is given")
        issued = self.feedback.cards(str(e.get("card")) for e in entries)
        items = []
        for entry in entries:
            card = issued.get(str(entry.get("card")))
            if card is None or card.service != service_id or (issuer is not None and card.client != issuer):
                raise FeedbackRefused(NOT_FOUND, f"card {str(entry.get('card'))[:80]!r} was not issued by "
                                                 f"service {service_id!r} to this client; nothing was stored")
            override = entry.get("overrideReason") or {}
            reason = (override.get("reason") or {}).get("code") if isinstance(override, dict) else None
            when = self._timestamp(entry.get("outcomeTimestamp"))
            items.append(self._make(
                id=feedback_id(f"Card/{card.uuid}", client, when), kind=Kind.CARD.value,
                verdict=entry.get("outcome"), model=card.model, model_version=card.model_version,
                target=f"Card/{card.uuid}", who=client, role=CDS_CLIENT_ROLE, recorded_at=when,
                patient=card.patient, site=card.client, reason=reason,
                comment=override.get("userComment") if isinstance(override, dict) else None))
        subject = {"reference": items[0].patient} if items[0].patient else None
        self._store(items, subject, None)
        return items

    def _timestamp(self, value: Any) -> float:
        if value is None:
            return self.clock()
        try:
            instant = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise FeedbackRefused(BAD_REQUEST, f"outcomeTimestamp must be an ISO 8601 instant, "
                                               f"{str(value)[:40]!r} is given") from None
        if instant.tzinfo is None:
            raise FeedbackRefused(BAD_REQUEST, f"outcomeTimestamp must carry a time zone, {value!r} is given")
        return instant.timestamp()

    def issue_cards(self, cards: Iterable[IssuedCard]) -> None:
        self.feedback.add_cards(cards)

    # -- common ------------------------------------------------------------------------------------
    @staticmethod
    def _make(**fields: Any) -> Feedback:
        try:
            return Feedback(**fields)
        except (TypeError, ValueError) as exc:
            raise FeedbackRefused(UNPROCESSABLE, str(exc)) from None

    def _store(self, items: list[Feedback], subject: dict | None, device_id: str | None) -> None:
        self.feedback.add(items)
        self.store.put_resources([feedback_observation(f, device_id, subject) for f in items])

    def of_study(self, study_uid: str) -> list[Feedback]:
        if not is_uid(study_uid):
            raise FeedbackRefused(BAD_REQUEST, f"study_uid must be a UID (PS3.5 9.1), {study_uid[:80]!r} is given")
        return self.feedback.of_study(study_uid)
