"""One piece of clinician feedback, validated on construction.

Three kinds, each with its own verdicts:

- ``finding``: a radiologist on an AI imaging finding, ``agree`` or ``disagree`` with a
  :class:`FindingReason`; a ``missed-finding`` may carry the point the model missed, as fractions
  of the image's width and height (as the worklist's ``point_fraction`` of a finding);
- ``alert``: ward staff on a NEWS2 alert (FHIR Flag), ``helpful`` or ``not-helpful``;
- ``card``: a CDS Hooks 2.0 card's outcome as the EHR reports it, ``accepted`` or ``overridden``
  (CDS Hooks 2.0 "Feedback": ``outcome``), with the override reason's code.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import Enum

from kernel.database import Record


class Kind(str, Enum):
    FINDING = "finding"
    ALERT = "alert"
    CARD = "card"


class Verdict(str, Enum):
    AGREE = "agree"
    DISAGREE = "disagree"
    HELPFUL = "helpful"
    NOT_HELPFUL = "not-helpful"
    ACCEPTED = "accepted"      # CDS Hooks 2.0 Feedback outcome
    OVERRIDDEN = "overridden"  # CDS Hooks 2.0 Feedback outcome


class FindingReason(str, Enum):
    """Why a radiologist disagrees with a finding."""

    FALSE_POSITIVE = "false-positive"
    WRONG_LOCATION = "wrong-location"
    MISSED_FINDING = "missed-finding"


#: The verdicts each kind takes.
VERDICTS = {Kind.FINDING: (Verdict.AGREE, Verdict.DISAGREE),
            Kind.ALERT: (Verdict.HELPFUL, Verdict.NOT_HELPFUL),
            Kind.CARD: (Verdict.ACCEPTED, Verdict.OVERRIDDEN)}
#: Free text kept of a comment (characters); longer comments are refused, not cut.
MAX_COMMENT = 1000
#: A reason code (an override reason's Coding.code, or a FindingReason).
_CODE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
ID_NAMESPACE = uuid.UUID("5d0f4a52-3b0e-5c43-9a57-0b1c8f0e6d21")


@dataclass(frozen=True)
class Feedback(Record):
    """One verdict on one target (``Observation/<id>``, ``Flag/<id>`` or ``Card/<uuid>``).

    Raises
    ------
    ValueError
        An unknown kind, a verdict the kind does not take, a finding ``disagree`` without a
        :class:`FindingReason`, a reason on an ``agree``, a reason code outside its grammar, a
        point outside [0, 1] or on a finding verdict other than ``disagree``, an empty ``who``,
        ``model`` or ``target``, or a comment over ``MAX_COMMENT`` characters or with control
        characters.
    """

    id: str
    kind: str
    verdict: str
    model: str
    model_version: str
    target: str
    who: str
    role: str | None
    recorded_at: float
    patient: str | None = None
    study_uid: str | None = None
    site: str | None = None
    reason: str | None = None
    comment: str | None = None
    point_x: float | None = None
    point_y: float | None = None

    def __post_init__(self) -> None:
        kind = Kind(self.kind)  # ValueError names the value
        verdict = Verdict(self.verdict)
        if verdict not in VERDICTS[kind]:
            raise ValueError(f"a {kind.value} verdict must be one of {[v.value for v in VERDICTS[kind]]}, "
                             f"{self.verdict!r} is given")
        for name in ("who", "model", "model_version", "target"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty, {getattr(self, name)!r} is given")
        if self.reason is not None and not _CODE.match(self.reason):
            raise ValueError(f"reason must be a code ({_CODE.pattern}), {self.reason[:80]!r} is given")
        if kind is Kind.FINDING:
            self._check_finding(verdict)
        if self.comment is not None and (len(self.comment) > MAX_COMMENT or _CONTROL.search(self.comment)):
            raise ValueError(f"comment must be at most {MAX_COMMENT} characters without control characters, "
                             f"{len(self.comment)} characters are given")

    def _check_finding(self, verdict: Verdict) -> None:
        if verdict is Verdict.DISAGREE and self.reason is None:
            raise ValueError(f"a disagreement needs a reason, one of {[r.value for r in FindingReason]}; none is given")
        if verdict is Verdict.AGREE and self.reason is not None:
            raise ValueError(f"an agreement takes no reason, {self.reason!r} is given")
        if self.reason is not None:
            FindingReason(self.reason)
        point = (self.point_x, self.point_y)
        if point != (None, None):
            if verdict is not Verdict.DISAGREE or None in point:
                raise ValueError(f"a point (x and y) goes with a disagreement, {point} is given with {verdict.value}")
            if not all(0.0 <= float(v) <= 1.0 for v in point):
                raise ValueError(f"a point is fractions of the image width and height in [0, 1], {point} is given")

    @property
    def point_fraction(self) -> list[float] | None:
        return None if self.point_x is None else [self.point_x, self.point_y]

    def as_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "verdict": self.verdict, "model": self.model,
                "version": self.model_version, "target": self.target, "who": self.who, "role": self.role,
                "recorded_at": self.recorded_at, "patient": self.patient, "study_uid": self.study_uid,
                "site": self.site, "reason": self.reason, "comment": self.comment,
                "point_fraction": self.point_fraction}


def feedback_id(target: str, who: str, recorded_at: float) -> str:
    """A stable id of one verdict (the FHIR Observation's id too)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{target}|{who}|{recorded_at!r}"))
