"""The quantile serving graph equals its numpy specification; v1 (point) artefacts still load and serve.

Reference: ``ForecastSpec.served_ratio`` (calibration, naive forecasters, per-profile
source), ``ml.policy.rules`` (EWMA and quantile rules) and the Q-net on
``ml.policy.observation`` fed by ``ml.forecast.training.served_functions`` (both observation
layouts: 9 columns, and 11 with the served h = 1 p10 and p90). Fresh seeded networks: this
checks arithmetic, not forecasts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.forecast.calibration import SOURCES, fit_spec
from ml.forecast.features import Preprocessor
from ml.forecast.naive import NaiveQuantiles
from ml.forecast.quantiles import from_ratio, interpolate_tau, to_ratio
from ml.policy.observation import OBS_DIM, obs_dim, observation, reference_bandwidth, snap_down
from ml.policy.rules import ewma_rule_actions

H, Q = (1, 10, 60), (0.1, 0.5, 0.9)
RULE, TAU = (0.6, 0.85), 0.25
_BUILT: dict = {}


def _build(layout: str, levels: tuple[float, ...] = Q, policies: dict | None = None):
    """(windows, profiles, spec, model_fn, qnet, compiled graph, policies, preprocessor, lstm), cached."""
    key = (layout, levels, tuple(sorted((policies or {}).items())))
    if key in _BUILT:
        return _BUILT[key]
    import tensorflow as tf

    from ml.data import simulator_links
    from ml.forecast.lstm import QuantileHead, build_lstm
    from ml.forecast.training import horizon_windows_of, make_quantile_model_fn
    from ml.policy.qnet import build_qnetwork
    from ml.serving.quantile_graph import quantile_serving_function
    from ml.serving.runtime import configure_tf

    configure_tf()
    w, y, prof, _ = horizon_windows_of(simulator_links("mixed", 6, 400, seed=11), H)
    pre = Preprocessor().fit(w, y[:, 0])
    lstm = build_lstm(3, QuantileHead(H, levels, center=(0.0, 0.0, 0.0), scale=(0.2, 0.4, 0.6)))
    qnet = build_qnetwork(obs_dim(layout), seed=4)
    naive = NaiveQuantiles.fit(w, y, prof, H, levels)
    model_fn = make_quantile_model_fn(lstm, pre, len(H))
    spec = fit_spec(w, y, prof, model_fn(w), naive)
    spec.sources["internet"] = ["ewma", "lstm", "moving_average"]  # every source in use somewhere
    policies = policies or {"*": "ddqn", "datacenter": "ewma_rule", "internet": "quantile_rule"}
    fn = tf.function(quantile_serving_function(pre, lstm, qnet, spec, policies, RULE, TAU, layout))
    _BUILT[key] = (w, prof, spec, model_fn, qnet, fn, policies, pre, lstm)
    return _BUILT[key]


@pytest.fixture(scope="module")
def setup():
    return _build("point")[:7]


def _policy_inputs(spec, model_fn, ww: np.ndarray, pp: np.ndarray) -> np.ndarray:
    """The numpy specification of the quantiles observation's forecaster, per row's profile: (N, 3)."""
    from ml.forecast.training import served_functions

    out = np.zeros((len(ww), 3))
    for p in set(pp.tolist()):
        rows = np.array([x == p for x in pp])
        out[rows] = served_functions(model_fn, spec, p)[2](ww[rows])
    return out


def test_graph_equals_numpy(setup):
    w, prof, spec, model_fn, qnet, fn, policies = setup
    rng = np.random.default_rng(0)
    idx = rng.choice(len(w), 256, replace=False)
    ww, pp = w[idx], np.array(prof, dtype=object)[idx]
    pp[:20] = None  # unknown profile: the "*" choices
    groups = {g: i for i, g in enumerate(spec.groups())}
    g = np.array([groups.get(p, 0) for p in pp], np.int32)
    forecast, action, ref, q, source, pol = (t.numpy() for t in fn(ww, g))

    z, _ = spec.served_ratio(ww, pp, model_fn(ww))
    assert np.allclose(q, from_ratio(ww, z), rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(q, axis=2) >= 0)
    assert np.allclose(forecast, q[:, 0, 1]) and np.allclose(ref, reference_bandwidth(ww))
    assert [SOURCES[s] for s in source] == spec.source_of(pp, 0).tolist()

    names = np.array([policies.get(p if p in groups else "*", policies["*"]) for p in pp])
    a_ddqn = np.argmax(qnet(observation(ww, forecast), training=False).numpy(), axis=1)
    a_ewma = ewma_rule_actions(ww, *RULE)
    q_tau = from_ratio(ww, interpolate_tau(to_ratio(ww, q[:, 0]), Q, TAU))
    a_quant = snap_down(q_tau, reference_bandwidth(ww))
    want = np.where(names == "ddqn", a_ddqn, np.where(names == "ewma_rule", a_ewma, a_quant))
    assert (action == want).mean() == 1.0
    assert {"ddqn", "ewma_rule", "quantile_rule"} == set(names.tolist())
    assert pol.tolist() == [("ddqn", "ewma_rule", "quantile_rule").index(n) for n in names]


@pytest.mark.parametrize("levels", [Q, (0.2, 0.5, 0.8)])  # 0.1 / 0.9: slices; else interpolated
def test_graph_equals_numpy_with_the_quantiles_observation(levels):
    w, prof, spec, model_fn, qnet, fn, _, _, _ = _build("quantiles", levels, {"*": "ddqn"})
    assert qnet.input_shape == (None, 11)
    rng = np.random.default_rng(1)
    idx = rng.choice(len(w), 256, replace=False)
    ww, pp = w[idx], np.array(prof, dtype=object)[idx]
    pp[:20] = None
    groups = {g: i for i, g in enumerate(spec.groups())}
    g = np.array([groups.get(p, 0) for p in pp], np.int32)
    forecast, action, _, q, _, pol = (t.numpy() for t in fn(ww, g))
    assert (pol == 0).all()  # the DDQN serves every group

    inputs = _policy_inputs(spec, model_fn, ww, pp)  # what training feeds the env: p10, median, p90
    np.testing.assert_allclose(inputs[:, 1], forecast, rtol=1e-5, atol=1e-6)
    if levels == Q:  # the observation's tails are the served (published) p10 and p90 themselves
        np.testing.assert_allclose(inputs[:, [0, 2]], q[:, 0, [0, 2]], rtol=1e-5, atol=1e-6)
    assert np.all(inputs[:, 0] <= inputs[:, 1] + 1e-6) and np.all(inputs[:, 1] <= inputs[:, 2] + 1e-6)
    q_ref = qnet(observation(ww, inputs), training=False).numpy()
    chosen = q_ref[np.arange(len(ww)), action]
    assert np.all(chosen >= q_ref.max(axis=1) - 1e-4 * (1 + np.abs(q_ref).max(axis=1)))  # argmax, or a float32 tie


def test_graph_observe_equals_the_numpy_observation():
    """graph_parts' observe on the quantiles layout, column by column (edge windows included)."""
    import tensorflow as tf

    from ml.serving.graph import graph_parts

    w, *_, pre, _ = _build("point")
    rng = np.random.default_rng(2)
    ww = w[rng.choice(len(w), 64, replace=False)].copy()
    ww[0] = 0.0  # outage
    ww[1, :, 1] = 0.0
    ww[2, -1, 1] = 0.0
    f = np.sort(rng.uniform(0, 2, (64, 3)) * ww[:, -1:, 1], axis=1)
    f[3] = [0.0, 1e9, 1e12]  # clipped at 4 x the reference
    transform, observe = graph_parts(pre)
    tw, bw, _, x_lat, _, _ = transform(tf.constant(ww))
    obs, ref = observe(tw, bw, x_lat, tf.constant(f[:, 1]), tf.constant(f[:, 0]), tf.constant(f[:, 2]))
    np.testing.assert_allclose(obs.numpy(), observation(ww, f), rtol=1e-6, atol=1e-6)
    point, _ = observe(tw, bw, x_lat, tf.constant(f[:, 1]))
    np.testing.assert_allclose(point.numpy(), observation(ww, f[:, 1]), rtol=1e-6, atol=1e-6)
    assert obs.shape == (64, 11) and point.shape == (64, 9)


def test_quantiles_layout_artefact_serves_and_feeds_evaluation(tmp_path):
    """A saved quantile model with an 11-column Q-network: the predictor's policy forecaster (what
    ``bwp evaluate-policy`` builds observations from) is the training specification, and its
    Q-network alone on those observations picks the serving path's actions."""
    from ml.policy.evaluation import predictor_policy
    from ml.serving.predictor import Predictor
    from ml.serving.registry import load_version, save_version

    w, prof, spec, model_fn, qnet, _, _, pre, lstm = _build("quantiles", Q, {"*": "ddqn"})
    meta = {
        "head": "quantile",
        "forecast": spec.to_json(),
        "policy": {"serving": {"*": "ddqn"}, "observation": "quantiles"},
    }
    p = Predictor(load_version(tmp_path, save_version(tmp_path, lstm, qnet, pre, meta)), xla=False)
    assert p.observation == "quantiles"
    ww = w[:50]
    forecaster, policy = predictor_policy(p, "internet")
    inputs = forecaster(ww)
    np.testing.assert_allclose(inputs, _policy_inputs(spec, model_fn, ww, np.array(["internet"] * 50, object)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    q_ref = qnet(observation(ww, inputs), training=False).numpy()
    chosen = q_ref[np.arange(50), policy(ww, None)]
    assert np.all(chosen >= q_ref.max(axis=1) - 1e-4 * (1 + np.abs(q_ref).max(axis=1)))
    assert p.policy_forecast(ww, layout="point").shape == (50,)


def test_v1_artefact_loads_and_serves_point_forecasts(tmp_path):
    from ml.data import simulator_links, windows_of
    from ml.forecast.lstm import build_lstm
    from ml.policy.qnet import build_qnetwork
    from ml.serving.predictor import load_predictor
    from ml.serving.registry import METADATA_FILE, save_version

    w, y, _ = windows_of(simulator_links("mixed", 2, 60, seed=5))
    version = save_version(tmp_path, build_lstm(1), build_qnetwork(OBS_DIM, seed=1), Preprocessor().fit(w, y), {})
    meta_path = tmp_path / version / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    assert "head" not in meta and "forecast" not in meta  # what every artefact before schema v2 looks like
    p = load_predictor(tmp_path)
    pred = p.predict(w[:7], ["internet"] * 7)
    assert p.head == "point" and pred.quantiles is None and pred.wire_quantiles is None
    assert pred.bandwidth_mbps.shape == (7,) and np.all(np.isfinite(pred.bandwidth_mbps))
    assert np.allclose(p.quantile(w[:7], 0.1), pred.bandwidth_mbps)
    assert p.observation == "point" and p.policy_forecast(w[:7]).shape == (7,)


def test_a_context_artefact_serves_what_its_numpy_specification_says(tmp_path):
    """A quantile LSTM with the long-memory context input (``bwp evaluate-traces --context long``)
    loads and serves: the served quantiles equal ForecastSpec.served_ratio over the model's
    forecasts from windows and link states; without states the predictor builds them from the
    window itself; a context-free artefact serves as before (the other tests of this module)."""
    from ml.data import LinkSeries
    from ml.forecast.context import series_states
    from ml.forecast.lstm import LSTMConfig
    from ml.forecast.quantiles import from_ratio
    from ml.forecast.training import (
        fit_quantile_forecaster,
        horizon_states_of,
        horizon_windows_of,
        make_quantile_model_fn,
    )
    from ml.policy.qnet import build_qnetwork
    from ml.serving.predictor import Predictor, window_states
    from ml.serving.registry import load_version, save_version
    from simulator.generator import FleetSimulator

    sim = FleetSimulator("internet", 6, 5, start_ms=0)
    arr = np.stack([sim.step() for _ in range(160)], axis=1)
    links = [LinkSeries(f"l{i}", "internet", arr[i], states=series_states(arr[i])) for i in range(6)]
    cfg = LSTMConfig(epochs=1, max_train_windows=600, max_val_windows=200)
    lstm, pre, spec, _ = fit_quantile_forecaster(links[:4], links[4:], cfg, 0, horizons=H, context="long")
    meta = {"head": "quantile", "forecast": spec.to_json(), "policy": {"serving": {"*": "quantile_rule"}}}
    p = Predictor(load_version(tmp_path, save_version(tmp_path, lstm, build_qnetwork(obs_dim("point"), seed=1), pre,
                                                      meta)), xla=False)  # fmt: skip
    assert p.context
    assert p.metadata["shapes"]["lstm"]["inputs"] == [[10, 4], [4]]  # the registry records both inputs
    w, _, prof, _ = horizon_windows_of(links[4:], H)
    st = horizon_states_of(links[4:])
    model_fn = make_quantile_model_fn(lstm, pre, len(H), context=spec.context)
    want = from_ratio(w, spec.served_ratio(w, prof, model_fn(w, st))[0])
    got = p.predict(w, list(prof), st)
    np.testing.assert_allclose(got.quantiles, want, rtol=2e-5, atol=1e-6)
    own = p.predict(w[:7], list(prof[:7]))  # no states: the window's own 10 steps
    np.testing.assert_allclose(
        own.quantiles,
        from_ratio(w[:7], spec.served_ratio(w[:7], prof[:7], model_fn(w[:7], window_states(w[:7])))[0]),
        rtol=2e-5,
        atol=1e-6,
    )
    assert window_states(w[:1])[0, 0] == 10  # ten steps of history
    late = slice(len(w) - 7, len(w))  # far into the links: their states hold much more than the window
    assert st[late, 0].min() > 100
    assert not np.allclose(model_fn(w[late], st[late]), model_fn(w[late], window_states(w[late])))
