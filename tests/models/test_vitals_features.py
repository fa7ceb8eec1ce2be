"""The vitals window feature contract shared by training and the live bridge."""
from __future__ import annotations

import numpy as np
import pytest

from models.vitals_features import (FEATURES, N_CHANNELS, N_FEATURES, NORMALISATION, STEP_S, WINDOW_S,
                                    WINDOW_STEPS, window_features, window_features_arrays)

END = 1_700_000_000.0
HR, RR, SPO2, SPO2_OXI, SBP, TEMP = "8867-4", "9279-1", "2708-6", "59408-5", "8480-6", "8310-5"


def test_shape_constants():
    assert FEATURES == ("heart_rate", "respiratory_rate", "spo2", "systolic_bp", "temperature")
    assert (WINDOW_STEPS, STEP_S, WINDOW_S, N_CHANNELS) == (12, 300, 3600, 10)


@pytest.mark.parametrize("samples", [[], [(END, "1234-5", 3.0)], [(END, HR, float("nan"))]])
def test_empty_or_unusable_is_all_missing(samples):
    x = window_features(samples, END)
    assert x.shape == (WINDOW_STEPS, N_CHANNELS) and x.dtype == np.float32
    assert not x[:, :N_FEATURES].any() and (x[:, N_FEATURES:] == 1).all()


def test_out_of_window_samples_are_ignored():
    x = window_features([(END + 1, HR, 200.0), (END - WINDOW_S, HR, 200.0), (END - 10 * WINDOW_S, HR, 50.0)], END)
    assert (x[:, N_FEATURES] == 1).all() and not x[:, 0].any()


def test_bin_edges_latest_bin_includes_end():
    x = window_features([(END, HR, 95.0), (END - WINDOW_S + 1, RR, 20.0)], END)
    assert x[-1, 0] == pytest.approx(1.0) and x[-2, N_FEATURES] == 1  # HR only in the last bin
    assert x[0, 1] == pytest.approx(1.0) and (x[:, N_FEATURES + 1] == 0).all()  # RR from bin 0 on


def test_bin_mean_and_normalisation():
    mean, sd = NORMALISATION["systolic_bp"]
    x = window_features([(END - 10, SBP, 100.0), (END - 20, SBP, 140.0), (END - 400, SBP, 60.0)], END)
    assert x[-1, 3] == pytest.approx((120.0 - mean) / sd)
    assert x[-2, 3] == pytest.approx((60.0 - mean) / sd)


def test_carry_forward_and_flags():
    t_mean, t_sd = NORMALISATION["temperature"]
    x = window_features([(END - 30 * 60, TEMP, 38.2)], END)
    first = WINDOW_STEPS - 1 - (30 * 60) // STEP_S
    assert (x[:first, N_FEATURES + 4] == 1).all() and not x[:first, 4].any()
    assert (x[first:, N_FEATURES + 4] == 0).all()
    assert np.allclose(x[first:, 4], (38.2 - t_mean) / t_sd)


def test_spo2_accepts_both_loinc_codes_and_order_does_not_matter():
    a = window_features([(END - 5, SPO2, 90.0), (END - 65, SPO2_OXI, 94.0), (END - 900, HR, 70.0)], END)
    b = window_features([(END - 900, HR, 70.0), (END - 65, SPO2_OXI, 94.0), (END - 5, SPO2, 90.0)], END)
    assert np.array_equal(a, b) and a[-1, 2] == pytest.approx((92.0 - 96.0) / 3.0)


def test_array_core_matches_and_rejects_bad_arguments():
    x = window_features_arrays(np.array([END]), np.array([0]), np.array([95.0]), END)
    assert np.array_equal(x, window_features([(END, HR, 95.0)], END))
    with pytest.raises(ValueError, match="end_s"):
        window_features([], float("nan"))
    with pytest.raises(ValueError, match="same length"):
        window_features_arrays(np.array([END]), np.array([0, 1]), np.array([95.0]), END)
    with pytest.raises(ValueError, match="samples"):
        window_features([(END, HR)], END)
