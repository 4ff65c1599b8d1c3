"""Feature transform, baselines and the LSTM architecture (pure logic, tiny arrays)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ml.data import make_windows
from ml.forecast import baselines as bl
from ml.forecast.features import BW, Preprocessor
from stream.core.errors import ModelError


def _series(t: int, seed: int, scale: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.empty((t, 4))
    s[:, 0] = rng.uniform(1, 50, t)  # latency ms
    s[:, 1] = scale * np.exp(rng.normal(0, 0.2, t))  # bandwidth
    s[:, 2] = rng.uniform(0, 0.01, t)
    s[:, 3] = rng.uniform(0.9, 1, t)
    return s


def test_make_windows_targets_are_the_following_bandwidth():
    s = _series(15, 0)
    w, y = make_windows(s)
    assert w.shape == (5, 10, 4) and y.shape == (5,)
    np.testing.assert_array_equal(w[0], s[:10])
    np.testing.assert_array_equal(w[4], s[4:14])
    np.testing.assert_array_equal(y, s[10:, 1])
    w, y = make_windows(s[:10])
    assert w.shape == (0, 10, 4) and y.shape == (0,)


def test_fit_uses_training_data_only_and_transform_uses_stored_stats():
    wt, yt = make_windows(_series(200, 1))
    wo, _ = make_windows(_series(200, 2, scale=5.0) * [3.0, 1.0, 1.0, 1.0])  # other links, other latencies
    pre = Preprocessor().fit(wt, yt)
    stats = (list(pre.x_mean), list(pre.x_std), pre.y_mean, pre.y_std)
    x = pre.transform(wo)
    # transform must not refit: stats unchanged, and the result equals the formula with stored stats
    assert (list(pre.x_mean), list(pre.x_std), pre.y_mean, pre.y_std) == stats
    raw_lat = np.log1p(wo[:, :, 0])
    np.testing.assert_allclose(x[:, :, 0], (raw_lat - pre.x_mean[0]) / pre.x_std[0], rtol=1e-5, atol=1e-5)
    # the training windows are standardised to mean 0 / std 1 per channel, the others are not
    xt = pre.transform(wt).reshape(-1, 4)
    np.testing.assert_allclose(xt.mean(axis=0), 0.0, atol=1e-4)
    assert abs(float(x[:, :, 0].mean())) > 0.1


@pytest.mark.parametrize("mode", ["relative_mean", "relative_last", "log_absolute"])
def test_json_round_trip_gives_identical_outputs(mode):
    w, y = make_windows(_series(100, 3))
    pre = Preprocessor(mode).fit(w, y)
    back = Preprocessor.from_json(pre.to_json())
    assert back == pre
    np.testing.assert_array_equal(back.transform(w), pre.transform(w))
    z = pre.transform_target(w, y)
    np.testing.assert_allclose(back.inverse_target(z, w), y, rtol=1e-5)


def test_from_json_rejects_malformed_files():
    with pytest.raises(ModelError, match="not valid"):
        Preprocessor.from_json("{}")
    d = json.loads(Preprocessor().to_json())
    d["features"] = ["bandwidth_mbps", "latency_ms", "packet_loss", "reliability"]
    with pytest.raises(ModelError, match="features"):
        Preprocessor.from_json(json.dumps(d))


def test_relative_mode_is_scale_free():
    s = _series(120, 4)
    w, y = make_windows(s)
    pre = Preprocessor().fit(w, y)
    big = s.copy()
    big[:, 1] *= 1e4  # same shape of series on a 10 000x faster link
    wb, yb = make_windows(big)
    np.testing.assert_allclose(pre.transform(wb), pre.transform(w), atol=1e-4)
    z = pre.transform_target(w, y)
    np.testing.assert_allclose(pre.inverse_target(z, wb), yb, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    bw=arrays(np.float64, (3, 10), elements=st.one_of(st.just(0.0), st.floats(0, 1e5))),
    nxt=arrays(np.float64, (3,), elements=st.one_of(st.just(0.0), st.floats(0, 1e5))),
    mode=st.sampled_from(["relative_mean", "relative_last", "log_absolute"]),
)
def test_zero_bandwidth_never_gives_nan_or_inf(bw, nxt, mode):
    w = np.ones((3, 10, 4))
    w[:, :, BW] = bw
    pre = Preprocessor(mode).fit(np.concatenate([w, np.ones((1, 10, 4))]), np.concatenate([nxt, [1.0]]))
    assert np.isfinite(pre.transform(w)).all()
    assert np.isfinite(pre.transform_target(w, nxt)).all()
    out = pre.inverse_target(np.array([0.0, 50.0, -50.0]), w)
    assert np.isfinite(out).all() and (out >= 0).all()


def test_all_zero_window_maps_to_zero_relative_bandwidth():
    w = np.zeros((1, 10, 4))
    pre = Preprocessor()
    assert pre._raw_x(w)[0, :, BW].tolist() == [0.0] * 10
    assert pre.inverse_target(np.array([0.0]), w)[0] == pytest.approx(0.0, abs=1e-5)


# --- baselines -------------------------------------------------------------------------


def _win(bw_rows: list[list[float]]) -> np.ndarray:
    w = np.ones((len(bw_rows), 10, 4))
    w[:, :, BW] = np.asarray(bw_rows, dtype=float)
    return w


def test_baselines_against_hand_computed_values():
    w = _win([[9, 9, 9, 9, 9, 1, 2, 4, 4, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    assert bl.last_value(w).tolist() == [4.0, 10.0]
    # harmonic mean of [1, 2, 4, 4, 4] = 5 / (1 + 0.5 + 0.75) = 2.2222...
    assert bl.harmonic_mean(w)[0] == pytest.approx(5 / 2.25)
    assert bl.moving_average(w).tolist() == [6.0, 5.5]
    # EWMA with alpha 1 is the last value; alpha 0.5 on [..., 8, 9, 10] follows the recursion
    np.testing.assert_allclose(bl.ewma(w, 1.0), [4.0, 10.0])
    s = 1.0
    for x in range(2, 11):
        s = 0.5 * x + 0.5 * s
    assert bl.ewma(w, 0.5)[1] == pytest.approx(s)


def test_harmonic_mean_with_an_outage_is_zero():
    assert bl.harmonic_mean(_win([[5] * 9 + [0]]))[0] == 0.0


def test_fit_ewma_alpha_picks_the_lowest_training_mae():
    # a random walk is best predicted by its last value: alpha must go to 1.0
    rng = np.random.default_rng(0)
    s = np.ones((400, 4))
    s[:, 1] = 100 + np.cumsum(rng.normal(0, 1, 400))
    w, y = make_windows(s)
    assert bl.fit_ewma_alpha(w, y) == 1.0
    # iid noise around a constant is best predicted by heavy smoothing
    s[:, 1] = 100 + rng.normal(0, 1, 400)
    w, y = make_windows(s)
    assert bl.fit_ewma_alpha(w, y) <= 0.2


def test_lstm_has_the_designed_architecture():
    from ml.forecast.lstm import build_lstm

    m = build_lstm(seed=0)
    assert m.input_shape == (None, 10, 4) and m.output_shape == (None, 1)
    kinds = [type(layer).__name__ for layer in m.layers[1:]]
    assert kinds == [
        "LSTM",
        "Dropout",
        "BatchNormalization",
        "LSTM",
        "Dropout",
        "BatchNormalization",
        "LSTM",
        "Dropout",
        "BatchNormalization",
        "Dense",
        "Dropout",
        "Dense",
        "Dense",
    ]
    units = [layer.units for layer in m.layers if hasattr(layer, "units")]
    assert units == [128, 64, 32, 16, 8, 1]
    rates = [layer.rate for layer in m.layers if type(layer).__name__ == "Dropout"]
    assert rates == [0.2, 0.2, 0.2, 0.3]


def test_window_ending_in_an_outage_can_still_forecast_recovery():
    w = np.ones((1, 10, 4))
    w[0, :, BW] = [100.0] * 9 + [0.0]
    pre = Preprocessor("relative_last")
    z = pre._raw_y(w, np.array([100.0]))[0]
    assert np.isfinite(z) and z < 6  # log((100 + 1) / (0 + 1)) with e = 1 % of the mean (91.0 * 0.01)
    back = pre.inverse_target(np.array([z]), w)  # y_mean 0, y_std 1
    assert back[0] == pytest.approx(100.0, rel=1e-6)


def test_masked_pinball_against_hand_computed_values_with_and_without_horizon_scale():
    from ml.forecast.lstm import masked_pinball

    y = np.array([[1.0, np.nan], [0.0, 2.0]], dtype=np.float32)  # (N = 2, H = 2); NaN: past the end
    q = np.array([[0.5, 1.0, 2.0, 9.0, 9.0, 9.0], [-1.0, 0.0, 1.0, 1.0, 2.0, 4.0]], dtype=np.float32)
    # window 0, h 1: d = 0.5, 0, -1 -> 0.1*0.5 + 0 + 0.1*1 = 0.15, over 1 horizon x 3 quantiles
    # window 1, h 1: d = 1, 0, -1 -> 0.1 + 0 + 0.1 = 0.2; h 10: d = 1, 0, -2 -> 0.1 + 0 + 0.2 = 0.3
    plain = np.asarray(masked_pinball((0.1, 0.5, 0.9))(y, q))
    assert np.allclose(plain, [0.15 / 3, (0.2 + 0.3) / 6])
    scaled = np.asarray(masked_pinball((0.1, 0.5, 0.9), scale=(0.5, 2.0))(y, q))
    assert np.allclose(scaled, [0.15 / 0.5 / 3, (0.2 / 0.5 + 0.3 / 2.0) / 6])
