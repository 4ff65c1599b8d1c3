"""Naive probabilistic forecasters, split-conformal shifts and the per-profile fallback choice."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ml.data import simulator_links
from ml.forecast.calibration import ForecastSpec, apply_shifts, conformal_shifts, fit_spec
from ml.forecast.lstm import QuantileHead
from ml.forecast.naive import NaiveQuantiles
from ml.forecast.quantiles import coverage, to_ratio
from ml.forecast.training import horizon_windows_of

H, Q = (1, 10), (0.1, 0.5, 0.9)


def _data(seed: int, links: int = 6, steps: int = 300):
    return horizon_windows_of(simulator_links("mixed", links, steps, seed), H)


def test_naive_quantiles_cover_nominal_on_fresh_links_of_the_same_process():
    wt, yt, pt, _ = _data(1001)
    wv, yv, pv, _ = _data(1003)
    nq = NaiveQuantiles.fit(wt, yt, pt, H, Q)
    assert set(nq.offsets) >= {"*", "datacenter", "internet"}
    z = nq.predict_ratio(wv, pv)["ewma"]  # (N, H, Q)
    assert np.all(np.diff(z, axis=2) >= 0)
    zy = to_ratio(wv, np.nan_to_num(yv))
    c = coverage(zy[:, 0], z[:, 0], Q)
    assert abs(c["0.1"] - 0.1) < 0.06 and abs(c["0.9"] - 0.9) < 0.06, c
    again = NaiveQuantiles.from_json(nq.to_json())
    assert np.allclose(again.predict_ratio(wv, pv)["ewma"], z)


def test_conformal_shifts_give_nominal_coverage_on_the_calibration_set():
    rng = np.random.default_rng(3)
    z_true = rng.normal(1.0, 2.0, size=(4000, 1))
    z_pred = np.zeros((4000, 1, 3))  # a badly biased, too narrow forecast
    s = conformal_shifts(z_true, z_pred, Q)
    c = coverage(z_true[:, 0], apply_shifts(z_pred, s)[:, 0], Q)
    for t in Q:
        assert abs(c[str(t)] - t) < 0.01


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (5, 2, 3), elements=st.floats(-3, 3, allow_nan=False)),
    arrays(np.float64, (2, 3), elements=st.floats(-3, 3, allow_nan=False)),
)
def test_shifted_quantiles_never_cross(z, s):
    assert np.all(np.diff(apply_shifts(np.sort(z, axis=2), s), axis=2) >= 0)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (7, 3), elements=st.floats(-30, 30, allow_nan=False)),
    arrays(np.float64, (7, 6), elements=st.floats(-30, 30, allow_nan=False)),
)
def test_quantile_head_never_crosses_whatever_the_weights(med, raw_gaps):
    head = QuantileHead((1, 10, 60), Q, center=(0.0, 0.1, -0.2), scale=(0.5, 1.0, 2.0))
    gaps = np.logaddexp(0.0, raw_gaps)  # softplus, as the layer applies it
    out = (np.concatenate([med, gaps], axis=1) @ head.matrix()).reshape(7, 3, 3)
    assert np.all(np.diff(out, axis=2) >= -1e-9)


def test_fallback_picks_naive_when_the_model_is_made_worse_on_purpose():
    wt, yt, pt, _ = _data(1001)
    wv, yv, pv, _ = _data(1002)
    nq = NaiveQuantiles.fit(wt, yt, pt, H, Q)
    good = nq.predict_ratio(wv, pv)["ewma"]
    rng = np.random.default_rng(0)
    worse = np.sort(good + rng.normal(0, 1.0, size=good.shape), axis=2)  # ewma plus noise: never better
    spec = fit_spec(wv, yv, pv, worse, nq)
    assert all(src != "lstm" for srcs in spec.sources.values() for src in srcs), spec.sources
    better = fit_spec(wv, yv, pv, to_ratio(wv, np.nan_to_num(yv))[:, :, None].repeat(3, axis=2), nq)  # the truth
    assert better.sources["*"] == ["lstm", "lstm"]
    again = ForecastSpec.from_json(spec.to_json())
    z1, _ = spec.served_ratio(wv, pv, worse)
    z2, _ = again.served_ratio(wv, pv, worse)
    assert np.allclose(z1, z2) and again.sources == spec.sources
