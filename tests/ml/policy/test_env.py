"""Reward, policy observation and the Gymnasium allocation environment."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.policy.env import LinkAllocationEnv, all_windows, precompute, precompute_series
from ml.policy.observation import (
    ACTION_SHARES,
    FORECAST_COL,
    OBS_DIM,
    OBS_DIMS,
    OBS_NAMES,
    allocated_mbps,
    last_value_forecast,
    layout_of_width,
    obs_dim,
    observation,
    observation_layout,
    reference_bandwidth,
    snap_down,
)
from ml.policy.reward import reward
from stream.core.records import N_ACTIONS, WINDOW
from tests.helpers.policy import last_value_quantiles, synthetic_series

mbps = st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False)


# --- reward ---------------------------------------------------------------------------


@given(mbps, mbps)
def test_reward_always_in_range(a: float, b: float) -> None:
    r = reward(a, b)
    assert isinstance(r, float)
    assert -1.0 <= r <= 1.0


@given(
    st.floats(min_value=1e-3, max_value=1e6),
    st.floats(min_value=0.0, max_value=3.0),
    st.floats(min_value=1e-3, max_value=1e4),
)
def test_reward_is_scale_free(b: float, ratio: float, k: float) -> None:
    assert reward(ratio * b, b) == pytest.approx(reward(ratio * b * k, b * k), abs=1e-9)


def test_reward_shape_and_values() -> None:
    # exact use earns 1, under-use earns the utilisation, over-use falls 4x as fast
    assert reward(10.0, 10.0) == 1.0
    assert reward(5.0, 10.0) == pytest.approx(0.5)
    assert reward(11.0, 10.0) == pytest.approx(1 - 4 * 1 / 11)
    assert reward(40.0 / 3.0, 10.0) == pytest.approx(0.0, abs=1e-12)
    assert reward(20.0, 10.0) == -1.0
    assert reward(1e6, 10.0) == -1.0
    # outage: anything allocated is lost; nothing allocated is neutral
    assert reward(1.0, 0.0) == -1.0
    assert reward(0.0, 0.0) == 0.0
    r = reward(np.array([[1.0, 2.0]]), np.array([2.0]))  # broadcasts
    assert r.shape == (1, 2) and r.tolist() == [[0.5, 1.0]]


def test_reward_peaks_at_the_actual_bandwidth() -> None:
    a = np.linspace(0, 30, 3001)
    r = reward(a, 10.0)
    assert a[np.argmax(r)] == pytest.approx(10.0)
    assert np.all(np.diff(r[a <= 10.0]) >= 0) and np.all(np.diff(r[a >= 10.0]) <= 0)


@pytest.mark.parametrize("profile", ["datacenter", "internet", "mixed"])
def test_oracle_scores_close_to_one_on_simulator_data(profile: str) -> None:
    from simulator.generator import simulate_series

    rewards = []
    for k in range(4):
        d = precompute(simulate_series(profile, 210, seed=77, link_index=k), last_value_forecast)
        rewards.append(d.rewards[: d.n_steps].max(axis=1))  # the oracle's per-step reward
    assert np.mean(np.concatenate(rewards)) >= 0.9


# --- observation ----------------------------------------------------------------------


def test_observation_is_scale_free_and_finite() -> None:
    s = synthetic_series(60, 1)
    w = all_windows(s)  # (51, 10, 4)
    f = last_value_forecast(w) * 1.1
    o1 = observation(w, f)
    big = w.copy()
    big[:, :, 1] *= 1e4  # 100 Mbit/s -> 1 Tbit/s
    o2 = observation(big, f * 1e4)
    assert o1.shape == (51, OBS_DIM) and o1.dtype == np.float32
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)
    assert np.allclose(o1[:, FORECAST_COL], 1.1 * o1[:, 0], atol=1e-6)
    np.testing.assert_allclose(reference_bandwidth(big), 1e4 * reference_bandwidth(w))


def test_quantiles_observation_adds_q10_and_q90_scale_free() -> None:
    w = all_windows(synthetic_series(60, 1))  # (51, 10, 4)
    q = last_value_quantiles(w)  # (51, 3): p10, median, p90
    o = observation(w, q)
    assert o.shape == (51, OBS_DIMS["quantiles"]) == (51, 11) and o.dtype == np.float32
    # the first 9 columns are the point layout's with the median as the forecast
    np.testing.assert_array_equal(o[:, :OBS_DIM], observation(w, q[:, 1]))
    ref = reference_bandwidth(w)
    np.testing.assert_allclose(o[:, 9], np.clip(q[:, 0] / ref, 0, 4), rtol=1e-6)
    np.testing.assert_allclose(o[:, 10], np.clip(q[:, 2] / ref, 0, 4), rtol=1e-6)
    big = w.copy()
    big[:, :, 1] *= 1e4
    np.testing.assert_allclose(observation(big, q * 1e4), o, rtol=1e-5, atol=1e-6)
    assert OBS_NAMES[9:] == ("q10", "q90") and OBS_NAMES[FORECAST_COL] == "forecast"


def test_observation_layouts() -> None:
    assert obs_dim("point") == OBS_DIM == 9 and obs_dim("quantiles") == 11
    assert layout_of_width(9) == "point" and layout_of_width(11) == "quantiles"
    with pytest.raises(ValueError, match="unknown observation layout"):
        obs_dim("deltas")
    with pytest.raises(ValueError, match="no observation layout has 10"):
        layout_of_width(10)
    # absent = the 9 columns of every artefact from before the layout was recorded
    assert observation_layout({}) == observation_layout({"policy": {"serving": {}}}) == "point"
    assert observation_layout(None) == "point"
    assert observation_layout({"policy": {"observation": "quantiles"}}) == "quantiles"


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(min_value=1e-3, max_value=1e6), st.booleans())
def test_observation_within_declared_bounds(seed: int, scale: float, quantiles: bool) -> None:
    from ml.policy.observation import OBS_HIGH, OBS_LOW

    rng = np.random.default_rng(seed)
    w = rng.random((8, WINDOW, 4)) * np.array([1e4, scale, 1.0, 1.0])
    w[rng.random((8, WINDOW)) < 0.2, 1] = 0.0  # some zero-bandwidth samples
    f = np.sort(rng.random((8, 3)) * 10 * scale, axis=1) if quantiles else rng.random(8) * 10 * scale
    o = observation(w, f)
    dim = obs_dim("quantiles" if quantiles else "point")
    assert o.shape == (8, dim) and ((o >= OBS_LOW[:dim]) & (o <= OBS_HIGH[:dim])).all()


@pytest.mark.parametrize("quantiles", [False, True])
def test_observation_of_an_outage_window(quantiles: bool) -> None:
    w = np.zeros((1, WINDOW, 4))
    w[0, :, 0] = 5.0
    o = observation(w, np.array([[1.0, 3.0, 5.0]]) if quantiles else np.array([3.0]))
    assert np.isfinite(o).all()
    assert o[0, :5].tolist() == [0.0] * 5 and o[0, FORECAST_COL:].tolist() == [0.0] * (o.shape[1] - FORECAST_COL)
    assert reference_bandwidth(w)[0] == 0.0


def test_observation_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, 10, 4\)"):
        observation(np.zeros((2, 9, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="one value per window"):
        observation(np.zeros((2, 10, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"quantiles must be \(N, 3\)"):
        observation(np.zeros((2, 10, 4)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one value per window"):
        observation(np.zeros((2, 10, 4)), np.zeros((3, 3)))


def test_action_grid_helpers() -> None:
    ref = np.array([100.0, 100.0, 100.0, 100.0, 0.0])
    np.testing.assert_allclose(allocated_mbps(np.array([0, 4, 9, 9, 3]), ref), [10, 50, 100, 100, 0])
    assert snap_down(np.array([5.0, 50.0, 59.9, 300.0, 7.0]), ref).tolist() == [0, 4, 4, 9, 9]
    assert ACTION_SHARES.tolist() == pytest.approx([0.1 * (i + 1) for i in range(N_ACTIONS)])


# --- environment ----------------------------------------------------------------------


@pytest.mark.parametrize("forecaster", [last_value_forecast, last_value_quantiles])
def test_env_passes_gymnasium_checker(forecaster) -> None:
    from gymnasium.utils.env_checker import check_env

    env = LinkAllocationEnv([synthetic_series(120, 2), synthetic_series(80, 3)], forecaster, episode_len=50)
    check_env(env, skip_render_check=True)
    dim = 11 if forecaster is last_value_quantiles else 9
    assert env.layout == layout_of_width(dim) and env.observation_space.shape == (dim,)


@pytest.mark.parametrize("layout", ["point", "quantiles"])
def test_env_from_profile_passes_checker_and_uses_training_seeds(layout: str) -> None:
    from gymnasium.utils.env_checker import check_env

    fc = last_value_quantiles if layout == "quantiles" else last_value_forecast
    env = LinkAllocationEnv.from_profile("internet", episode_len=20, forecaster=fc, seed_range=(10, 20), layout=layout)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert 10 <= env.episode_seed < 20 and obs.shape == (obs_dim(layout),)


def test_env_rejects_a_forecaster_of_another_layout() -> None:
    with pytest.raises(ValueError, match="'point' observations"):
        LinkAllocationEnv([synthetic_series(60, 1)], last_value_forecast, layout="quantiles")
    env = LinkAllocationEnv.from_profile("internet", episode_len=20, forecaster=last_value_quantiles)  # point space
    with pytest.raises(ValueError, match="'quantiles' observations"):
        env.reset(seed=0)


def test_precompute_series_per_series_forecasters_and_ablation() -> None:
    series = [synthetic_series(60, s) for s in range(3)]
    datas = precompute_series(series, [last_value_quantiles] * 3)
    assert [d.layout for d in datas] == ["quantiles"] * 3
    np.testing.assert_array_equal(datas[1].forecast, last_value_forecast(all_windows(series[1])))  # the median
    off = precompute(series[0], last_value_quantiles, use_forecast=False)
    assert (off.obs[:, FORECAST_COL:] == 0).all() and (
        off.obs[:, :FORECAST_COL] == datas[0].obs[:, :FORECAST_COL]
    ).all()
    with pytest.raises(ValueError, match="mixed observation layouts"):
        precompute_series(series, [last_value_quantiles, last_value_forecast, last_value_forecast])
    with pytest.raises(ValueError, match="one forecaster per series"):
        precompute_series(series, [last_value_forecast])


def _rollout(env: LinkAllocationEnv, seed: int, actions: list[int]) -> tuple[list[np.ndarray], list[float], list[dict]]:
    obs, _ = env.reset(seed=seed)
    seen, rewards, infos = [obs], [], []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        seen.append(obs)
        rewards.append(r)
        infos.append(info)
        if term or trunc:
            obs, _ = env.reset()
            seen.append(obs)
    return seen, rewards, infos


@pytest.mark.parametrize("layout", ["point", "quantiles"])
@pytest.mark.parametrize("mode", ["series", "profile"])
def test_env_same_seed_same_trajectory(mode: str, layout: str) -> None:
    fc = last_value_quantiles if layout == "quantiles" else last_value_forecast

    def make() -> LinkAllocationEnv:
        if mode == "series":
            return LinkAllocationEnv([synthetic_series(100, s) for s in range(5)], fc, episode_len=30)
        return LinkAllocationEnv.from_profile("mixed", 30, fc, link_indices=range(4), layout=layout)

    actions = list(np.random.default_rng(0).integers(0, N_ACTIONS, size=75))
    o1, r1, _ = _rollout(make(), 123, actions)
    o2, r2, _ = _rollout(make(), 123, actions)
    assert len(o1) == len(o2) and o1[0].shape == (obs_dim(layout),)
    for a, b in zip(o1, o2):
        np.testing.assert_array_equal(a, b)
    assert r1 == r2
    o3, r3, _ = _rollout(make(), 124, actions)
    assert r3 != r1  # another seed, another episode


def test_env_step_matches_reward_and_info() -> None:
    s = synthetic_series(200, 9)
    env = LinkAllocationEnv([s], episode_len=40)
    obs, _ = env.reset(seed=0)
    total = 0
    trunc = False
    while not trunc:
        obs, r, term, trunc, info = env.step(7)
        assert not term
        assert info["allocated_mbps"] == pytest.approx(0.8 * info["reference_mbps"])
        assert r == pytest.approx(reward(info["allocated_mbps"], info["actual_next_mbps"]))
        assert info["oracle_reward"] >= r
        assert 0 <= info["oracle_action"] < N_ACTIONS
        assert obs.shape == (OBS_DIM,) and obs.dtype == np.float32
        total += 1
    assert total == 40
    with pytest.raises(RuntimeError):
        env.step(0)


def test_env_short_series_and_arguments() -> None:
    env = LinkAllocationEnv([synthetic_series(WINDOW + 5, 1)], episode_len=200)
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        if env.step(0)[3]:
            break
    assert steps == 5  # episode shortened to the decisions the series has
    with pytest.raises(ValueError):
        LinkAllocationEnv([synthetic_series(WINDOW, 1)])
    with pytest.raises(ValueError):
        LinkAllocationEnv()
    env = LinkAllocationEnv([synthetic_series(50, 1)])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be"):
        env.step(10)
