"""NEWS2 scoring against the Royal College of Physicians 2017 chart: every band edge."""
from __future__ import annotations

import math

import pytest

from iomt import news2
from iomt.news2 import ACVPU, Band, News2Input, score

NORMAL = dict(
    respiratory_rate_per_min=16,
    spo2_percent=97,
    on_oxygen=False,
    systolic_bp_mmhg=120,
    pulse_per_min=70,
    consciousness="A",
    temperature_cel=37.0,
)


def with_(**changes) -> News2Input:
    return News2Input(**{**NORMAL, **changes})


@pytest.mark.parametrize(
    "rate, expected",
    [(0, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (60, 3),
     (8.4, 3), (8.5, 1), (11.49, 1), (11.5, 0), (20.49, 0), (20.5, 2), (24.5, 3)],
)
def test_respiration_rate_bands(rate, expected):
    assert news2.respiration_rate_score(rate) == expected
    assert score(with_(respiratory_rate_per_min=rate)).scores[news2.RESPIRATION_RATE] == expected


@pytest.mark.parametrize(
    "spo2, expected",
    [(70, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0),
     (91.49, 3), (91.5, 2), (95.5, 0)],
)
def test_spo2_scale1_bands(spo2, expected):
    assert news2.spo2_scale1_score(spo2) == expected
    for on_oxygen in (False, True):  # scale 1 ignores oxygen for the SpO2 sub-score
        result = score(with_(spo2_percent=spo2, on_oxygen=on_oxygen))
        assert result.scores[news2.SPO2] == expected


@pytest.mark.parametrize(
    "spo2, on_oxygen, expected",
    [
        (70, False, 3), (83, False, 3), (84, False, 2), (85, False, 2), (86, False, 1),
        (87, False, 1), (88, False, 0), (92, False, 0), (93, False, 0), (97, False, 0),
        (100, False, 0),
        (83, True, 3), (84, True, 2), (87, True, 1), (88, True, 0), (92, True, 0),
        (93, True, 1), (94, True, 1), (95, True, 2), (96, True, 2), (97, True, 3), (100, True, 3),
        (83.5, False, 2), (92.49, True, 0), (92.5, True, 1), (96.5, True, 3),
    ],
)
def test_spo2_scale2_bands(spo2, on_oxygen, expected):
    assert news2.spo2_scale2_score(spo2, on_oxygen) == expected
    result = score(with_(spo2_percent=spo2, on_oxygen=on_oxygen, spo2_scale=2))
    assert result.scores[news2.SPO2] == expected
    assert result.scores[news2.AIR_OR_OXYGEN] == (2 if on_oxygen else 0)


def test_spo2_scale2_unknown_oxygen_above_92_is_not_scored():
    result = score(with_(spo2_percent=95, on_oxygen=None, spo2_scale=2))
    assert news2.SPO2 not in result.scores
    assert news2.AIR_OR_OXYGEN not in result.scores
    assert result.missing == (news2.SPO2, news2.AIR_OR_OXYGEN)
    assert not result.complete


def test_spo2_scale2_unknown_oxygen_up_to_92_is_scored():
    result = score(with_(spo2_percent=85, on_oxygen=None, spo2_scale=2))
    assert result.scores[news2.SPO2] == 2
    assert result.missing == (news2.AIR_OR_OXYGEN,)


@pytest.mark.parametrize("on_oxygen, expected", [(True, 2), (False, 0)])
def test_air_or_oxygen(on_oxygen, expected):
    assert news2.air_or_oxygen_score(on_oxygen) == expected
    assert score(with_(on_oxygen=on_oxygen)).scores[news2.AIR_OR_OXYGEN] == expected


@pytest.mark.parametrize(
    "sbp, expected",
    [(50, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3),
     (280, 3), (90.49, 3), (90.5, 2), (110.5, 0), (219.5, 3)],
)
def test_systolic_bp_bands(sbp, expected):
    assert news2.systolic_bp_score(sbp) == expected
    assert score(with_(systolic_bp_mmhg=sbp)).scores[news2.SYSTOLIC_BP] == expected


@pytest.mark.parametrize(
    "pulse, expected",
    [(20, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2),
     (130, 2), (131, 3), (200, 3), (40.49, 3), (40.5, 1), (90.5, 1), (130.5, 3)],
)
def test_pulse_bands(pulse, expected):
    assert news2.pulse_score(pulse) == expected
    assert score(with_(pulse_per_min=pulse)).scores[news2.PULSE] == expected


@pytest.mark.parametrize(
    "level, expected",
    [("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3), (ACVPU.ALERT, 0), (ACVPU.CONFUSION, 3),
     ("alert", 0), ("new confusion", 3), ("confusion", 3), ("voice", 3), ("pain", 3),
     ("unresponsive", 3), (" a ", 0)],
)
def test_consciousness(level, expected):
    assert news2.consciousness_score(level) == expected
    assert score(with_(consciousness=level)).scores[news2.CONSCIOUSNESS] == expected


@pytest.mark.parametrize(
    "temp, expected",
    [(30.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1),
     (39.1, 2), (42.0, 2),
     (35.04, 3), (35.05, 1), (36.04, 1), (36.05, 0), (38.04, 0), (38.05, 1), (39.04, 1),
     (39.05, 2)],
)
def test_temperature_bands(temp, expected):
    assert news2.temperature_score(temp) == expected
    assert score(with_(temperature_cel=temp)).scores[news2.TEMPERATURE] == expected


@pytest.mark.parametrize(
    "changes, total, band",
    [
        ({}, 0, Band.LOW),
        ({"respiratory_rate_per_min": 22, "pulse_per_min": 115}, 4, Band.LOW),
        ({"consciousness": "V"}, 3, Band.LOW_MEDIUM),
        ({"respiratory_rate_per_min": 25}, 3, Band.LOW_MEDIUM),
        ({"consciousness": "C", "temperature_cel": 38.5}, 4, Band.LOW_MEDIUM),
        ({"respiratory_rate_per_min": 22, "pulse_per_min": 115, "temperature_cel": 38.5},
         5, Band.MEDIUM),
        ({"respiratory_rate_per_min": 22, "pulse_per_min": 115, "systolic_bp_mmhg": 95},
         6, Band.MEDIUM),
        ({"consciousness": "V", "pulse_per_min": 115}, 5, Band.MEDIUM),
        ({"on_oxygen": True, "respiratory_rate_per_min": 22, "consciousness": "P"}, 7, Band.HIGH),
        ({"respiratory_rate_per_min": 30, "spo2_percent": 85, "on_oxygen": True,
          "systolic_bp_mmhg": 80, "pulse_per_min": 140, "consciousness": "U",
          "temperature_cel": 34.0}, 20, Band.HIGH),
    ],
)
def test_aggregate_bands(changes, total, band):
    result = score(with_(**changes))
    assert result.complete and result.missing == ()
    assert result.total == total == sum(result.scores.values())
    assert result.band is band
    assert tuple(result.scores) == news2.PARAMETERS


def test_band_values():
    assert [b.value for b in Band] == ["low", "low-medium", "medium", "high"]
    assert Band.LOW_MEDIUM == "low-medium"


def test_nothing_measured_is_incomplete_not_zero():
    result = score(News2Input())
    assert not result.complete
    assert result.missing == news2.PARAMETERS
    assert dict(result.scores) == {}
    assert result.total == 0 and result.band is Band.LOW


def test_missing_parameters_are_never_scored():
    result = score(with_(temperature_cel=None, consciousness=None, respiratory_rate_per_min=30))
    assert not result.complete
    assert result.missing == (news2.CONSCIOUSNESS, news2.TEMPERATURE)
    assert news2.TEMPERATURE not in result.scores and news2.CONSCIOUSNESS not in result.scores
    assert result.total == 3  # lower bound: only the present parameters
    assert result.band is Band.LOW_MEDIUM


def test_missing_oxygen_status_is_missing():
    result = score(with_(on_oxygen=None))
    assert result.missing == (news2.AIR_OR_OXYGEN,)
    assert news2.AIR_OR_OXYGEN not in result.scores


def test_incomplete_can_still_be_high():
    result = score(News2Input(respiratory_rate_per_min=30, pulse_per_min=140, consciousness="U"))
    assert result.total == 9 and result.band is Band.HIGH and not result.complete


def test_result_scores_are_read_only():
    result = score(with_())
    with pytest.raises(TypeError):
        result.scores["pulse"] = 5  # type: ignore[index]


def test_consciousness_is_converted_once():
    assert with_(consciousness="v").consciousness is ACVPU.VOICE
    assert with_(consciousness=ACVPU.PAIN).consciousness is ACVPU.PAIN


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"pulse_per_min": math.nan}, "pulse_per_min"),
        ({"temperature_cel": math.inf}, "temperature_cel"),
        ({"spo2_percent": "97"}, "spo2_percent"),
        ({"systolic_bp_mmhg": True}, "systolic_bp_mmhg"),
        ({"on_oxygen": "yes"}, "on_oxygen"),
        ({"on_oxygen": 1}, "on_oxygen"),
        ({"spo2_scale": 3}, "spo2_scale"),
        ({"spo2_scale": True}, "spo2_scale"),
        ({"consciousness": "X"}, "consciousness"),
        ({"consciousness": 1}, "consciousness"),
    ],
)
def test_input_fails_fast(changes, message):
    with pytest.raises(ValueError, match=message):
        with_(**changes)


def test_score_rejects_other_types():
    with pytest.raises(TypeError, match="News2Input"):
        score(NORMAL)  # type: ignore[arg-type]
