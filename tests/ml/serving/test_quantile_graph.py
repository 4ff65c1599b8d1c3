"""The quantile serving graph equals its numpy specification; v1 (point) artefacts still load and serve.

Reference: ``ForecastSpec.served_ratio`` (calibration, naive forecasters, per-profile
source), ``ml.policy.rules`` (EWMA and quantile rules) and the Q-net on
``ml.policy.observation``. Fresh seeded networks: this checks arithmetic, not forecasts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.forecast.calibration import SOURCES, fit_spec
from ml.forecast.features import Preprocessor
from ml.forecast.naive import NaiveQuantiles
from ml.forecast.quantiles import from_ratio, interpolate_tau, to_ratio
from ml.policy.observation import OBS_DIM, observation, reference_bandwidth, snap_down
from ml.policy.rules import ewma_rule_actions

H, Q = (1, 10, 60), (0.1, 0.5, 0.9)
RULE, TAU = (0.6, 0.85), 0.25


@pytest.fixture(scope="module")
def setup():
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
    lstm = build_lstm(3, QuantileHead(H, Q, center=(0.0, 0.0, 0.0), scale=(0.2, 0.4, 0.6)))
    qnet = build_qnetwork(OBS_DIM, seed=4)
    naive = NaiveQuantiles.fit(w, y, prof, H, Q)
    model_fn = make_quantile_model_fn(lstm, pre, len(H))
    spec = fit_spec(w, y, prof, model_fn(w), naive)
    spec.sources["internet"] = ["ewma", "lstm", "moving_average"]  # every source in use somewhere
    policies = {"*": "ddqn", "datacenter": "ewma_rule", "internet": "quantile_rule"}
    fn = tf.function(quantile_serving_function(pre, lstm, qnet, spec, policies, RULE, TAU))
    return w, prof, spec, model_fn, qnet, fn, policies


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
