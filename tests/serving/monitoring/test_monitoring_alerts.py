"""A line is raised when it crosses, kept without a new log line while over, cleared when back."""
from __future__ import annotations

import logging

import pytest

from serving.monitoring.alerts import AGREEMENT, SCORE_PSI, AlertLatch, Line


def psi_line(value: float) -> Line:
    return Line("tb", "1.1.0", "CXR_A", SCORE_PSI, value, 0.25)


def test_raised_once_per_crossing(caplog):
    caplog.set_level(logging.INFO, logger="medgate.monitoring")
    clock = iter(range(100))
    latch = AlertLatch(lambda: float(next(clock)))
    assert latch.update([psi_line(0.1)]) == []
    first = latch.update([psi_line(0.4)])
    assert [a.line.value for a in first] == [0.4]
    assert [a.raised_at for a in latch.update([psi_line(0.5)])] == [first[0].raised_at]  # still over
    assert [a.raised_at for a in latch.update([])] == [first[0].raised_at]  # no figure: state kept
    assert latch.update([psi_line(0.2)]) == []  # back under: cleared
    assert latch.update([psi_line(0.3)])[0].raised_at > first[0].raised_at  # a new crossing
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "score PSI 0.400 is over the line 0.25" in warnings[0]
    assert "alert cleared" in caplog.text


def test_agreement_is_over_when_below_its_line():
    assert Line("tb", "1.1.0", "CXR_A", AGREEMENT, 0.5, 0.7).over
    assert not Line("tb", "1.1.0", "CXR_A", AGREEMENT, 0.8, 0.7).over


def test_an_unknown_kind_is_refused_naming_it():
    with pytest.raises(ValueError, match="'ppv' is given"):
        Line("tb", "1.1.0", "CXR_A", "ppv", 0.5, 0.7)
