"""NEWS2 alerts: when to raise one, the MQTT message, and the FHIR Flag.

An alert is raised when a patient's NEWS2 clinical-risk band (RCP NEWS2 table 2; low-medium means
a single parameter scoring 3, a "red score") reaches ``min_band`` and either

- rises above the highest band alerted within the last ``repeat_after_s`` (an escalation is
  always sent at once), or
- has stayed at or above ``min_band`` for ``repeat_after_s`` since the last alert (a reminder).

So a ward is not flooded: a score that stays in, or flaps back into, an alerted band alerts again
only after ``repeat_after_s``. Times are measurement times, so a replayed backlog alerts as it
would have live. The MQTT message follows ``iomt/schemas/alert.schema.json``; the Flag (FHIR R4
Flag, category ``clinical``) records the alert in the EHR with a deterministic id and points at
the NEWS2 Observation that raised it with the core extension ``flag-detail`` (R4 Flag has no
element for its evidence; the extension's ``valueReference`` is the standard place).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from iomt.config import IomtConfig
from iomt.news2 import RED_SCORE, Band, News2Result

_IOMT = IomtConfig()  # the ``iomt:`` section's defaults, the constructor's defaults
BAND_RANK = {Band.LOW: 0, Band.LOW_MEDIUM: 1, Band.MEDIUM: 2, Band.HIGH: 3}
RANKED_BANDS = {rank: band for band, rank in BAND_RANK.items()}
FLAG_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/flag-category"  # FHIR R4 Flag
#: FHIR R4 core extension on Flag: "Points to the Observation ... that provides additional
#: supporting information about this flag".
FLAG_DETAIL_EXTENSION = "http://hl7.org/fhir/StructureDefinition/flag-detail"
FLAG_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:iomt:flag")
ALERT_SCHEMA_ID = "urn:medgate:iomt:schema:alert:1"


@dataclass(frozen=True)
class Decision:
    reason: str  # "escalation" or "reminder"
    red_flags: tuple[str, ...]


class AlertPolicy:
    """De-duplicating alert decisions per patient.

    Parameters
    ----------
    min_band
        Lowest band that alerts (``low-medium``, ``medium`` or ``high``).
    repeat_after_s
        Seconds (measurement time) before the same or a lower band alerts again.

    Defaults: the ``iomt.alerts`` section's.
    """

    def __init__(self, min_band: str = _IOMT.alerts.min_band,
                 repeat_after_s: float = _IOMT.alerts.repeat_after_s) -> None:
        try:
            self.min_rank = BAND_RANK[Band(min_band)]
        except ValueError:
            raise ValueError(f"min_band must be one of low-medium, medium, high, {min_band!r} is "
                             f"given.") from None
        if self.min_rank == 0:
            raise ValueError(f"min_band must be above low, {min_band!r} is given.")
        if repeat_after_s < 0:
            raise ValueError(f"repeat_after_s must be >= 0, {repeat_after_s} is given.")
        self.repeat_after_s = repeat_after_s
        self._last: dict[str, tuple[datetime, int]] = {}  # patient -> (time, rank) of last alert

    def last(self, patient_ref: str) -> tuple[datetime, Band] | None:
        """The time and band of the patient's last alert, if any."""
        held = self._last.get(patient_ref)
        return None if held is None else (held[0], RANKED_BANDS[held[1]])

    def empty_copy(self) -> "AlertPolicy":
        """A policy of the same settings that remembers no alert."""
        return AlertPolicy(RANKED_BANDS[self.min_rank].value, self.repeat_after_s)

    def replace(self, other: "AlertPolicy") -> None:
        """Remember ``other``'s alerts instead of these (a state rebuilt from the store)."""
        self._last = other._last

    def restore(self, patient_ref: str, at: datetime, band: str | Band) -> None:
        """Remember an alert raised before (read back from the store), unless a later one is
        known: a node taking over a partition does not alert again what the previous one did."""
        rank = BAND_RANK[Band(band)]
        held = self._last.get(patient_ref)
        if held is None or at > held[0]:
            self._last[patient_ref] = (at, rank)

    def decide(self, patient_ref: str, result: News2Result, at: datetime) -> Decision | None:
        """Whether ``result`` at ``at`` alerts; records the alert when it does."""
        rank = BAND_RANK[result.band]
        if rank < self.min_rank:
            return None
        last = self._last.get(patient_ref)
        if last is not None:
            elapsed_s = (at - last[0]).total_seconds()
            if elapsed_s < 0:
                return None  # an older score than the last alert
            recent = elapsed_s < self.repeat_after_s
            if recent and rank <= last[1]:
                return None
        reason = "escalation" if last is None or rank > last[1] else "reminder"
        self._last[patient_ref] = (at, rank)
        red = tuple(name for name, value in result.scores.items() if value >= RED_SCORE)
        return Decision(reason=reason, red_flags=red)


def flag_id(patient_ref: str, band: str, at: datetime) -> str:
    instant = at.astimezone(timezone.utc).isoformat()
    return str(uuid.uuid5(FLAG_ID_NAMESPACE, f"{patient_ref}|{band}|{instant}"))


def flag_resource(patient_ref: str, result: News2Result, at: datetime, decision: Decision,
                  news2_id: str, *, patient_identifier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An active FHIR R4 Flag for the alert (period starts at the scored time), referencing the
    NEWS2 Observation ``news2_id`` (``flag-detail``); ``patient_identifier`` is written beside the
    literal subject reference when given."""
    band = result.band.value
    text = f"NEWS2 {result.total}: clinical risk {band}"
    if decision.red_flags:
        text += f" (score 3 in {', '.join(decision.red_flags)})"
    if not result.complete:
        text += "; incomplete, at least this"
    subject: dict[str, Any] = {"reference": patient_ref}
    if patient_identifier is not None:
        subject["identifier"] = dict(patient_identifier)
    return {
        "resourceType": "Flag",
        "id": flag_id(patient_ref, band, at),
        "extension": [{"url": FLAG_DETAIL_EXTENSION, "valueReference": {"reference": f"Observation/{news2_id}"}}],
        "status": "active",
        "category": [{"coding": [{"system": FLAG_CATEGORY_SYSTEM, "code": "clinical",
                                  "display": "Clinical"}]}],
        "code": {"text": f"{text} (Observation/{news2_id})"},
        "subject": subject,
        "period": {"start": at.isoformat()},
    }


def alert_message(*, patient_id: str, patient_ref: str, location: dict[str, str | None],
                  device: str | None, result: News2Result, at: datetime, decision: Decision,
                  news2_id: str, flag: str) -> dict[str, Any]:
    """The MQTT alert payload (``iomt/schemas/alert.schema.json``)."""
    return {
        "schema": ALERT_SCHEMA_ID, "patient": patient_id, "subject": patient_ref,
        "site": location.get("site"), "ward": location["ward"], "bed": location["bed"],
        "device": device, "time": at.isoformat(), "news2": result.total, "band": result.band.value,
        "complete": result.complete, "missing": list(result.missing),
        "red_flags": list(decision.red_flags), "reason": decision.reason,
        "observation": news2_id, "flag": flag,
    }
