"""ml/forecast/context.py: the per-link long-memory state, its features, and a context LSTM."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.data import LinkSeries, split_by_time
from ml.forecast.context import (
    CONTEXT_FEATURES,
    SPANS,
    STATE,
    ContextScaler,
    context_features,
    long_memory_states,
    series_states,
    update_state,
)

bandwidths = st.lists(st.floats(min_value=0.0, max_value=1e5, allow_nan=False), min_size=1, max_size=80)


def _reference(bw: list[float]) -> np.ndarray:
    """The state written out from its definition (module docstring), independently of update_state."""
    out, m, v, prev = [], None, 0.0, None
    for t, b in enumerate(bw):
        b = max(b, 0.0)
        if m is None:
            m = dict.fromkeys(SPANS, b)
        else:
            e = 0.01 * m[60] + 1e-6
            v = (1 - 2 / 61) * v + 2 / 61 * math.log((b + e) / (prev + e)) ** 2
            m = {s: (1 - 2 / (s + 1)) * m[s] + 2 / (s + 1) * b for s in SPANS}
        prev = b
        out.append([t + 1, b] + [m[s] for s in SPANS] + [v])
    return np.array(out)


@given(bandwidths)
@settings(max_examples=60, deadline=None)
def test_states_follow_the_definition(bw):
    assert np.allclose(long_memory_states(bw), _reference(bw), rtol=1e-12, atol=1e-12)


@given(bandwidths, st.integers(min_value=0, max_value=79))
@settings(max_examples=60, deadline=None)
def test_a_stream_cut_anywhere_continues_to_the_same_state(bw, cut):
    """What a worker keeps between micro-batches: the state after a prefix, continued, is the state of
    the whole series (bit for bit: the same scalar operations)."""
    cut = min(cut, len(bw))
    head = long_memory_states(bw[:cut])
    start = head[-1].tolist() if cut else None
    tail = long_memory_states(bw[cut:], start)
    assert np.array_equal(np.concatenate([head, tail]) if cut else tail, long_memory_states(bw))


@given(st.lists(st.floats(min_value=1.0, max_value=1e4), min_size=12, max_size=60), st.sampled_from([1e-3, 7.0, 1e4]))
@settings(max_examples=40, deadline=None)
def test_context_features_are_scale_free(bw, c):
    series = np.zeros((len(bw), 4))
    series[:, 0] = bw
    w = series[None, -10:]
    a = context_features(w, series_states(series)[-1:])
    series[:, 0] *= c
    b = context_features(series[None, -10:], series_states(series)[-1:])
    assert np.allclose(a, b, atol=1e-3)


def test_first_state_and_negative_bandwidth():
    s = update_state([0.0] * len(STATE), -3.0)
    assert s == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    s = update_state(s, 10.0)
    assert s[0] == 2 and s[1] == 10.0 and s[-1] > 0 and all(0 < m < 10 for m in s[2:5])
    f = context_features(np.full((1, 10, 4), 10.0), np.array([s]))
    assert f.shape == (1, len(CONTEXT_FEATURES)) and np.isfinite(f).all()


def test_a_time_split_continues_the_states_of_the_earlier_parts():
    data = np.abs(np.random.default_rng(0).normal(50, 10, size=(100, 4)))
    ls = LinkSeries("a", "internet", data, states=series_states(data))
    train, val, test = split_by_time([ls], (0.6, 0.1, 0.3))
    assert np.array_equal(test[0].states, ls.states[70:]) and np.array_equal(train[0].states, ls.states[:60])
    assert not np.array_equal(test[0].states, series_states(test[0].data))  # not restarted


def test_scaler_round_trip_and_refuses_other_features():
    rng = np.random.default_rng(1)
    w = np.abs(rng.normal(50, 5, size=(30, 10, 4)))
    s = np.abs(rng.normal(50, 5, size=(30, len(STATE))))
    sc = ContextScaler.fit("long", w, s)
    back = ContextScaler.from_json(sc.to_json())
    assert np.array_equal(back.transform(w, s), sc.transform(w, s))
    assert abs(sc.transform(w, s).mean()) < 1e-5
    bad = sc.to_json() | {"spans": [5, 50]}
    with pytest.raises(ValueError, match="spans"):
        ContextScaler.from_json(bad)


@pytest.mark.slow
def test_a_context_lstm_trains_forecasts_and_its_spec_round_trips():
    from ml.forecast.calibration import ForecastSpec
    from ml.forecast.lstm import LSTMConfig
    from ml.forecast.training import fit_quantile_forecaster, horizon_states_of, make_quantile_model_fn
    from simulator.generator import FleetSimulator

    sim = FleetSimulator("internet", 6, 3, start_ms=0)
    arr = np.stack([sim.step() for _ in range(120)], axis=1)
    links = [LinkSeries(f"l{i}", "internet", arr[i], states=series_states(arr[i])) for i in range(6)]
    cfg = LSTMConfig(epochs=1, max_train_windows=500, max_val_windows=200)
    model, pre, spec, _ = fit_quantile_forecaster(links[:4], links[4:], cfg, 0, horizons=(1, 10), context="long")
    assert [i.name for i in model.inputs] == ["window", "context"]
    assert spec.context is not None
    fn = make_quantile_model_fn(model, pre, 2, context=spec.context)
    from ml.forecast.training import horizon_windows_of

    w, _, _, _ = horizon_windows_of(links[4:], (1, 10))
    z = fn(w, horizon_states_of(links[4:]))
    assert z.shape == (len(w), 2, 3) and np.isfinite(z).all()
    again = ForecastSpec.from_json(spec.to_json())
    assert again.context is not None and np.array_equal(again.context.mean, spec.context.mean)
    with pytest.raises(Exception, match="states"):
        fn(w)
