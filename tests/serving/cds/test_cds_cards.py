"""Cards keep the CDS Hooks 2.0 rules and say what the data says; nothing held is said, not silent."""
from __future__ import annotations

import pytest

from serving.cds.cards import Card, Link, cards_for
from serving.cds.patient_data import News2Score, PatientData


def test_a_card_refuses_what_cds_hooks_forbids():
    with pytest.raises(ValueError, match="summary must be 1 to 139 characters, 140 are given"):
        Card("x" * 140, "info", "news2", "RCP-2017")
    with pytest.raises(ValueError, match="indicator must be one of .*'urgent' is given"):
        Card("ok", "urgent", "news2", "RCP-2017")
    with pytest.raises(ValueError, match="a link url must be absolute, '/v1/worklist' is given"):
        Link("worklist", "/v1/worklist")


def test_a_falling_incomplete_news2_and_nothing_else():
    data = PatientData(("Patient/p",), (News2Score(3, "low", "2026-11-22T10:00:00Z", False),
                                        News2Score(5, "medium", "2026-11-22T09:00:00Z", True)))
    [card] = cards_for(data, (), "https://medgate.example")
    assert (card.summary, card.indicator) == ("NEWS2 3: low clinical risk, falling from 5", "info")
    assert "incomplete: at least" in card.detail and card.as_json()["overrideReasons"]


def test_no_data_and_an_unread_patient_are_both_said_most_urgent_first():
    cards = cards_for(PatientData(("Patient/p",)), ("the EHR's FHIR server answered HTTP 503",), "")
    assert [c.indicator for c in cards] == ["warning", "info"]
    assert "HTTP 503" in cards[0].detail and "Patient/p" in cards[1].detail
