"""Scores, targets and the ratio space of the probabilistic forecasts (hand-computed values, properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ml.forecast.quantiles import (
    Z_CLIP,
    check_grid,
    coverage,
    from_ratio,
    horizon_targets,
    interpolate_tau,
    interval_score,
    pinball,
    to_ratio,
    wis,
)
from stream.core.records import WINDOW

TAUS = (0.1, 0.5, 0.9)


def test_pinball_hand_values():
    # y = 10, q = (8, 10, 13): 0.1 * 2 = 0.2; 0; (0.9 - 1) * (10 - 13) = 0.3 -> mean 0.5 / 3
    assert pinball(np.array([10.0]), np.array([[8.0, 10.0, 13.0]]), TAUS) == pytest.approx(0.5 / 3)
    # y = 5 below every quantile: 0.9 * 3 + 0.5 * 5 + 0.1 * 8 = 2.7 + 2.5 + 0.8 -> / 3
    assert pinball(np.array([5.0]), np.array([[8.0, 10.0, 13.0]]), TAUS) == pytest.approx(6.0 / 3)
    assert np.isnan(pinball(np.zeros(0), np.zeros((0, 3)), TAUS))


def test_interval_score_and_wis_hand_values():
    # inside: width only; below: width + 2/alpha * miss
    assert interval_score(np.array([10.0]), np.array([8.0]), np.array([13.0]), 0.2)[0] == pytest.approx(5.0)
    assert interval_score(np.array([5.0]), np.array([8.0]), np.array([13.0]), 0.2)[0] == pytest.approx(5 + 10 * 3)
    # WIS = (0.5 |y - m| + 0.1 * IS_0.2) / 1.5 = (0.5 * 5 + 0.1 * 35) / 1.5 = 6 / 1.5 = 4
    assert wis(np.array([5.0]), np.array([[8.0, 10.0, 13.0]]), TAUS) == pytest.approx(4.0)
    # WIS = sum of the Q pinball losses / (K + 1/2) (Bracher et al., 2021): here 3 x mean pinball / 1.5
    rng = np.random.default_rng(0)
    y, q = rng.normal(size=50), np.sort(rng.normal(size=(50, 3)), axis=1)
    assert wis(y, q, TAUS) == pytest.approx(3 * pinball(y, q, TAUS) / 1.5)


def test_coverage_counts():
    y = np.array([1.0, 5.0, 9.0, 20.0])
    q = np.tile([2.0, 6.0, 10.0], (4, 1))
    c = coverage(y, q, TAUS)
    assert c == {"0.1": 0.25, "0.5": 0.5, "0.9": 0.75, "interval": 0.5}


def test_horizon_targets_are_means_of_the_next_h_steps():
    bw = np.arange(20, dtype=float)
    t = horizon_targets(bw, (1, 3, 15))
    assert t.shape == (20 - WINDOW, 3)
    assert t[0, 0] == 10 and t[0, 1] == pytest.approx((10 + 11 + 12) / 3)
    assert np.isnan(t[0, 2])  # 10 + 15 > 20 steps: unknown
    assert t[-1, 0] == 19 and np.isnan(t[-1, 1])


def test_check_grid_refuses_bad_grids():
    assert check_grid([1, 10], [0.1, 0.5, 0.9]) == ((1, 10), (0.1, 0.5, 0.9))
    for h, q in (([10, 1], TAUS), ([0], TAUS), ([1], [0.1, 0.9]), ([1], [0.2, 0.5, 0.9]), ([1], [0.1, 0.4, 0.9])):
        with pytest.raises(ValueError):
            check_grid(h, q)


windows_st = arrays(np.float64, (6, WINDOW, 4), elements=st.floats(0, 1e5, allow_nan=False))


@settings(max_examples=50, deadline=None)
@given(windows_st, arrays(np.float64, (6,), elements=st.floats(0, 1e5, allow_nan=False)))
def test_ratio_space_round_trips(w, v):
    z = to_ratio(w, v)
    ok = np.abs(z) < Z_CLIP  # beyond e^20 times the level from_ratio clips on purpose
    back = from_ratio(w, z)
    assert np.allclose(back[ok], v[ok], rtol=1e-6, atol=1e-6 * (1 + w[:, :, 1].mean()))
    assert np.all(back >= 0) and np.all(np.isfinite(back))


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (8, 3), elements=st.floats(-5, 5, allow_nan=False)), st.floats(0.01, 0.99))
def test_interpolated_quantiles_are_monotone_in_tau(z, tau):
    z = np.sort(z, axis=1)
    lo, hi = interpolate_tau(z, TAUS, tau), interpolate_tau(z, TAUS, min(tau + 0.05, 0.99))
    assert np.all(lo <= hi + 1e-12)
    assert np.allclose(interpolate_tau(z, TAUS, 0.5), z[:, 1])
