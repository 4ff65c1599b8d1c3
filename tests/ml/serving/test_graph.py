"""The one-graph serving path (ml/serve_graph.py) equals the numpy specification.

Reference: ``Preprocessor.transform`` -> LSTM -> ``inverse_target`` -> ``observation``
-> Q-net argmax, ``reference_bandwidth`` -- the functions training uses. The networks
here have fresh seeded weights: this checks arithmetic, not forecasts.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ml.forecast.features import MODES, Preprocessor
from ml.policy.observation import BW, LAT, LOSS, OBS_DIM, REL, observation, reference_bandwidth

N = 32  # one batch shape: the compiled function traces once


@pytest.fixture(scope="module")
def nets():
    from ml.forecast.lstm import build_lstm
    from ml.policy.qnet import build_qnetwork
    from ml.serving.runtime import configure_tf

    configure_tf()
    return build_lstm(seed=3), build_qnetwork(OBS_DIM, seed=4)


def _fitted(mode: str) -> Preprocessor:
    from ml.data import simulator_links, windows_of

    w, y, _ = windows_of(simulator_links("mixed", 4, 40, seed=1))
    return Preprocessor(mode=mode).fit(w, y)


@pytest.fixture(scope="module")
def graphs(nets):
    import tensorflow as tf

    from ml.serving.graph import serving_function

    lstm, qnet = nets
    out = {}
    for mode in MODES:
        pre = _fitted(mode)
        fn = serving_function(pre, lstm, qnet)
        out[mode] = (pre, tf.function(fn), tf.function(fn, jit_compile=True))
    return out


def _reference(pre: Preprocessor, lstm, qnet, w: np.ndarray):
    z = lstm(pre.transform(w), training=False).numpy().reshape(-1)
    bw = pre.inverse_target(z, w)
    q = qnet(observation(w, bw), training=False).numpy()
    return bw, q, reference_bandwidth(w)


def _check(graphs, nets, mode: str, w: np.ndarray) -> None:
    pre, plain, xla = graphs[mode]
    bw_ref, q_ref, ref_ref = _reference(pre, *nets, w)
    g = np.zeros(len(w), np.int32)
    for fn in (plain, xla):
        bw, act, ref, pol = (t.numpy() for t in fn(w, g))
        assert np.all(pol == 0)  # one group, the DDQN
        np.testing.assert_allclose(bw, bw_ref, rtol=2e-5, atol=1e-9)
        np.testing.assert_array_equal(ref, ref_ref)
        # the action is the argmax of the reference Q-values, or a near-tie within float32 rounding
        chosen = q_ref[np.arange(len(w)), act]
        assert np.all(chosen >= q_ref.max(axis=1) - 1e-4 * (1 + np.abs(q_ref).max(axis=1)))


def _edge_windows() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = np.zeros((N, 10, 4))
    w[:, :, LAT] = rng.uniform(0.05, 300, (N, 10))
    w[:, :, BW] = rng.uniform(0, 1e5, (N, 10)) * rng.uniform(0, 1, (N, 1)) ** 4
    w[:, :, LOSS] = rng.uniform(0, 1, (N, 10))
    w[:, :, REL] = rng.uniform(0, 1, (N, 10))
    w[0] = 0.0  # all-zero window: an outage
    w[1, :, BW] = 0.0  # bandwidth outage, other channels live
    w[2, -1, BW] = 0.0  # the last sample is zero (relative_last level 0)
    w[3, :-1, BW] = 0.0  # only the last sample is non-zero
    w[4, :, BW] = 1e5  # 100 Gbit/s, constant
    w[5, :, BW] = 1e-3  # a trickle
    w[6, :, LAT] = 0.0
    w[7, -1, LAT] = 3_600_000.0  # one hour: the latency column clips
    w[8, -1, LOSS], w[8, -1, REL] = 1.0, 0.0
    return w


@pytest.mark.parametrize("mode", MODES)
def test_graph_equals_numpy_on_edge_cases(graphs, nets, mode):
    _check(graphs, nets, mode, _edge_windows())


# TensorFlow flushes subnormal floats (< 2.2e-308) to zero on CPU, numpy does not: such a
# bandwidth is an outage either way, and it is the one input where the two may differ.
_value = st.floats(0.0, 1e5, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=arrays(np.float64, (N, 10, 4), elements=_value), mode=st.sampled_from(MODES))
def test_graph_equals_numpy_on_any_window(graphs, nets, w, mode):
    w[:, :, [LOSS, REL]] = np.minimum(w[:, :, [LOSS, REL]], 1.0)  # ratios, as the telemetry schema requires
    _check(graphs, nets, mode, w)


def test_point_graph_serves_the_ewma_rule_where_training_chose_it(nets):
    """Group 1 chose the EWMA rule: its actions are ml.policy.rules.ewma_rule_actions; group 0
    keeps the DDQN's; the policy index says which served."""
    import tensorflow as tf

    from ml.policy.rules import ewma_rule_actions
    from ml.serving.graph import serving_function

    lstm, qnet = nets
    pre = _fitted(MODES[0])
    fn = tf.function(serving_function(pre, lstm, qnet, policies=(0, 1), ewma_rule=(0.3, 0.7)))
    w = _edge_windows()
    g = np.arange(len(w), dtype=np.int32) % 2
    _, act, _, pol = (t.numpy() for t in fn(w, g))
    ddqn = fn(w, np.zeros(len(w), np.int32))[1].numpy()
    rule = ewma_rule_actions(w, 0.3, 0.7)
    np.testing.assert_array_equal(pol, g)
    np.testing.assert_array_equal(act[g == 1], rule[g == 1])
    np.testing.assert_array_equal(act[g == 0], ddqn[g == 0])
    assert np.any(rule != ddqn)  # the two policies differ here: the check can fail
