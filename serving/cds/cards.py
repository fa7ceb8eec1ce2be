"""CDS Hooks 2.0 cards (https://cds-hooks.hl7.org/2.0/#card-attributes) from a patient's data.

A :class:`Card` checks the specification's rules when made (summary under 140 characters,
indicator ``info``/``warning``/``critical``, a source label, absolute or SMART links) and
remembers which model version it speaks for, so that the EHR's feedback on it is filed there
(:mod:`serving.feedback`).  :func:`cards_for` makes the cards of one hook call:

- NEWS2: the latest total and band, and its trend since the score before (indicator by band:
  high critical, medium and low-medium warning, low info);
- deterioration risk: the vitals model's latest probability;
- open alerts: active NEWS2 alerts;
- AI imaging: one card per model version's report, with a link to the medgate worklist (and a
  SMART app link when ``cds.smart_app_url`` is set);
- what could not be checked (the patient's identifiers unread), and, when nothing is held, a
  card saying so: the EHR user never mistakes silence for "all clear".
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from serving.cds.patient_data import PatientData

#: CDS Hooks 2.0 Card.indicator values, in order of urgency.
INDICATORS = ("info", "warning", "critical")
#: CDS Hooks 2.0: Card.summary "SHALL be less than a 140-character limit".
MAX_SUMMARY = 139
#: CDS Hooks 2.0 Link.type values.
LINK_TYPES = ("absolute", "smart")
SOURCE = {"label": "medgate (AI decision support, NOT FOR CLINICAL USE)"}
#: NEWS2 band -> card indicator (RCP NEWS2 2017: high = emergency response, medium = urgent).
BAND_INDICATOR = {"high": "critical", "medium": "warning", "low-medium": "warning", "low": "info"}
#: Why a clinician may override a card (CDS Hooks 2.0 Card.overrideReasons, Coding).
OVERRIDE_SYSTEM = "urn:medgate:cds:override-reason"
OVERRIDE_REASONS = tuple({"system": OVERRIDE_SYSTEM, "code": code, "display": display} for code, display in (
    ("already-known", "Already known and acted on"), ("disagree-with-ai", "Disagree with the AI result"),
    ("not-relevant", "Not relevant to this patient now"), ("data-wrong", "The data shown is wrong")))
NOT_CLINICAL = "NOT FOR CLINICAL USE."
#: The model name and version a card speaks for when no model made it (it reports what could be checked).
SERVICE_SOURCE = ("medgate-cds", "1")


@dataclass(frozen=True)
class Link:
    label: str
    url: str
    type: str = "absolute"
    app_context: str | None = None

    def __post_init__(self) -> None:
        if self.type not in LINK_TYPES:
            raise ValueError(f"a link type must be one of {LINK_TYPES}, {self.type!r} is given")
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(f"a link url must be absolute, {self.url[:120]!r} is given")

    def as_json(self) -> dict[str, Any]:
        out = {"label": self.label, "url": self.url, "type": self.type}
        if self.app_context:
            out["appContext"] = self.app_context
        return out


@dataclass(frozen=True)
class Card:
    """One card; ``model``/``version``: what made the information it shows."""

    summary: str
    indicator: str
    model: str
    version: str
    detail: str | None = None
    links: tuple[Link, ...] = ()
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if not self.summary or len(self.summary) > MAX_SUMMARY:
            raise ValueError(f"summary must be 1 to {MAX_SUMMARY} characters, {len(self.summary)} are given")
        if self.indicator not in INDICATORS:
            raise ValueError(f"indicator must be one of {INDICATORS}, {self.indicator!r} is given")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uuid": self.uuid, "summary": self.summary, "indicator": self.indicator,
                               "source": dict(SOURCE), "overrideReasons": [dict(r) for r in OVERRIDE_REASONS]}
        if self.detail:
            out["detail"] = self.detail
        if self.links:
            out["links"] = [link.as_json() for link in self.links]
        return out


def _summary(text: str) -> str:
    return text if len(text) <= MAX_SUMMARY else text[:MAX_SUMMARY - 1] + "…"


def news2_card(data: PatientData) -> Card | None:
    if not data.news2:
        return None
    latest = data.news2[0]
    band = latest.band or "unknown"
    trend = ""
    if len(data.news2) > 1:
        before = data.news2[1].total
        trend = (f", rising from {before}" if latest.total > before else
                 f", falling from {before}" if latest.total < before else ", unchanged")
    incomplete = "" if latest.complete else " (incomplete: at least)"
    detail = (f"Latest NEWS2 total {latest.total}{incomplete}, clinical risk **{band}**, at {latest.time}. "
              + "Scores, newest first: " + ", ".join(str(s.total) for s in data.news2[:10]) + f". {NOT_CLINICAL}")
    return Card(_summary(f"NEWS2 {latest.total}: {band} clinical risk{trend}"),
                BAND_INDICATOR.get(band, "warning"), "news2", "RCP-2017", detail)


def risk_card(data: PatientData) -> Card | None:
    risk = data.risk
    if risk is None:
        return None
    return Card(_summary(f"Deterioration risk {risk.probability:.0%} (vitals model {risk.version})"), "info",
                risk.model, risk.version,
                f"Probability of clinical deterioration from the last hour of vitals, at {risk.time}. {NOT_CLINICAL}")


def alerts_card(data: PatientData) -> Card | None:
    if not data.alerts:
        return None
    lines = "\n".join(f"- {a.text} (since {a.time})" for a in data.alerts[:10])
    return Card(_summary(f"{len(data.alerts)} open NEWS2 alert(s): {data.alerts[0].text}"), "warning",
                "news2", "RCP-2017", f"Active alerts, newest first:\n{lines}\n\n{NOT_CLINICAL}")


def imaging_cards(data: PatientData, link_base: str, smart_app_url: str | None) -> list[Card]:
    cards = []
    for result in data.imaging:
        calls = [f"{text} {'positive' if positive else 'negative'}"
                 + (f" (p={p:.2f})" if isinstance(p, (int, float)) else "")
                 for text, positive, p in result.findings]
        links = []
        if link_base and result.study_uid:
            links.append(Link("Open in the medgate worklist (overlay)",
                              f"{link_base}/?study={result.study_uid}#worklist"))
        if smart_app_url and result.study_uid:
            links.append(Link("Open the imaging app", smart_app_url, "smart", result.study_uid))
        cards.append(Card(_summary(f"AI {result.model} {result.version}: " + ("; ".join(calls) or "no findings")),
                          "warning" if result.positive else "info", result.model, result.version,
                          f"{result.conclusion}\n\nStudy {result.study_uid}, issued {result.issued}.", tuple(links)))
    return cards


def unchecked_cards(unchecked: tuple[str, ...]) -> list[Card]:
    return [Card(_summary("medgate could not check everything for this patient"), "warning", *SERVICE_SOURCE,
                 f"{reason}\n\n{NOT_CLINICAL}") for reason in unchecked]


def cards_for(data: PatientData, unchecked: tuple[str, ...], link_base: str,
              smart_app_url: str | None = None) -> list[Card]:
    """Every card of one hook call, most urgent first (see the module docstring)."""
    cards = [c for c in (news2_card(data), alerts_card(data), risk_card(data)) if c is not None]
    cards += imaging_cards(data, link_base, smart_app_url)
    if data.empty:
        cards.append(Card("medgate holds no vitals, alerts or AI imaging results for this patient", "info",
                          *SERVICE_SOURCE, f"Looked up: {', '.join(data.references)}. {NOT_CLINICAL}"))
    cards += unchecked_cards(unchecked)
    return sorted(cards, key=lambda c: -INDICATORS.index(c.indicator))
