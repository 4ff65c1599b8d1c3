"""Naive probabilistic forecasters, split-conformal shifts and the per-profile fallback choice."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ml.data import simulator_links
from ml.forecast.calibration import RAW, ForecastSpec, apply_shifts, conformal_shifts, fit_spec, folds
from ml.forecast.lstm import QuantileHead
from ml.forecast.naive import NaiveQuantiles
from ml.forecast.quantiles import coverage, from_ratio, pinball, to_ratio
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


def test_folds_alternate_links_or_split_one_link_in_halves():
    assert folds(np.array([0, 0, 1, 1, 2, 5, 5]), 7).tolist() == [0, 0, 1, 1, 0, 1, 1]
    assert folds(np.zeros(5, dtype=np.int64), 5).tolist() == [0, 0, 1, 1, 1]
    assert folds(None, 4).tolist() == [0, 0, 1, 1]


def test_crossfitted_choice_keeps_training_offsets_when_validation_links_disagree():
    # Two validation links biased in opposite directions: a shift fitted on all of validation looks
    # better there than the naive forecaster's training offsets, but fitted on one link it makes the
    # other worse. The cross-fitted choice sees that and serves the training offsets.
    w, _, p, _ = _data(1002, links=2)
    n = len(w)
    link = (np.arange(n) >= n // 2).astype(np.int64)
    c = 0.3
    sign = np.where(link == 0, 1.0, -1.0)
    y = from_ratio(w, np.repeat((c * sign)[:, None], len(H), axis=1))  # last value x e^(+-c)
    zero = {name: np.zeros((len(H), len(Q))) for name in ("last_value", "ewma", "moving_average")}
    nq = NaiveQuantiles(H, Q, [0.5] * len(H), {"*": zero})
    bad_model = np.full((n, len(H), len(Q)), 5.0)  # e^5 x the last value: never the choice
    spec = fit_spec(w, y, ["x"] * n, bad_model, nq, links=link)
    assert spec.sources["*"] == ["last_value", "last_value"], spec.validation
    assert np.all(spec.naive_shifts["*"]["last_value"] == 0.0)
    scores = spec.validation["*"]["1"]
    assert scores["last_value" + RAW] < scores["last_value"]
    # the in-sample score of the validation-shifted candidate is lower than both: what the old rule used
    zy = to_ratio(w, y)
    insample = apply_shifts(np.zeros((n, len(H), len(Q))), conformal_shifts(zy, np.zeros((n, len(H), len(Q))), Q))
    assert pinball(y[:, 0], from_ratio(w, insample[:, 0]), Q) < scores["last_value" + RAW]


def test_a_horizon_without_validation_targets_serves_the_naive_forecaster_best_on_training():
    wt, yt, pt, _ = _data(1001)
    wv, yv, pv, lv = _data(1002)
    nq = NaiveQuantiles.fit(wt, yt, pt, H, Q)
    yv = yv.copy()
    yv[:, 1] = np.nan  # validation series shorter than h = 10
    z_model = to_ratio(wv, np.nan_to_num(yv))[:, :, None].repeat(3, axis=2)  # perfect where it can be scored
    spec = fit_spec(wv, yv, pv, z_model, nq, links=lv, train=(wt, yt, pt))
    ev = spec.validation["*"]["10"]
    train_scores = {k.split(":")[1]: v for k, v in ev.items() if k.startswith("training:")}
    assert set(train_scores) == {"last_value", "ewma", "moving_average"}, ev
    expected = min(train_scores, key=train_scores.__getitem__)
    assert spec.sources["*"][1] == expected and spec.sources["*"][0] == "lstm"
    assert np.all(spec.naive_shifts["*"][expected][1] == 0.0)  # served with its training offsets
    without = fit_spec(wv, yv, pv, z_model, nq, links=lv)  # no training evidence: the last value
    assert without.sources["*"][1] == "last_value"
