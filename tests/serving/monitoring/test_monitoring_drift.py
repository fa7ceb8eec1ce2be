"""PSI against a hand computation, the epsilon floor of an empty bin, and binning on the reference's edges."""
from __future__ import annotations

import math

import pytest

from models.reference import SCORE_EDGES, Distribution
from serving.monitoring.drift import EPSILON, psi, psi_of_values, shares


def test_psi_of_two_bins_by_hand():
    # e = (0.5, 0.5), a = (0.8, 0.2): 0.3 ln(1.6) + (-0.3) ln(0.4) = 0.141001 + 0.274887
    assert psi([50, 50], [80, 20]) == pytest.approx(0.3 * math.log(1.6) - 0.3 * math.log(0.4))
    assert psi([50, 50], [80, 20]) == pytest.approx(0.415888, abs=1e-6)


def test_identical_shares_give_zero_whatever_the_totals():
    assert psi([10, 30, 60], [100, 300, 600]) == pytest.approx(0.0)


def test_an_empty_bin_is_floored_at_epsilon():
    # e = (1, 0 -> 1e-4), a = (0.5, 0.5): (0.5 - 1) ln(0.5) + (0.5 - 1e-4) ln(0.5 / 1e-4)
    expected = -0.5 * math.log(0.5) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert psi([10, 0], [5, 5]) == pytest.approx(expected)
    assert psi([10, 0], [5, 5]) == pytest.approx(4.604319, abs=1e-6)
    assert shares([0, 0]) == [EPSILON, EPSILON]


def test_values_are_binned_on_the_reference_edges():
    reference = Distribution(SCORE_EDGES, (10,) * 10)
    assert psi_of_values(reference, [0.05 + 0.1 * i for i in range(10)]) == pytest.approx(0.0)
    assert psi_of_values(reference, [1.0] * 10) > 4  # 1.0 falls in the last, closed bin
    assert psi_of_values(reference, []) is None


def test_mismatched_bins_are_refused_naming_both():
    with pytest.raises(ValueError, match="same bins, 2 and 3 bins are given"):
        psi([1, 1], [1, 1, 1])
