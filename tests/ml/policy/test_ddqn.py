"""Double-DQN: targets, replay buffer, Q-network variants, target-network copies, a smoke run."""

from __future__ import annotations

import numpy as np
import pytest

from ml.policy.buffer import ReplayBuffer
from ml.policy.ddqn import DDQNConfig, double_dqn_targets, train_ddqn
from ml.policy.observation import OBS_DIM, last_value_forecast
from stream.core.records import N_ACTIONS
from tests.helpers.policy import last_value_quantiles, synthetic_series


def test_double_dqn_targets_hand_computed() -> None:
    rewards = np.array([1.0, 0.5, -1.0])
    dones = np.array([0.0, 1.0, 0.0])
    q_online = np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0], [0.1, 0.2, 0.3]])
    q_target = np.array([[9.0, 3.0, 7.0], [100.0, 100.0, 100.0], [4.0, 6.0, 2.0]])
    y = double_dqn_targets(rewards, dones, q_online, q_target, gamma=0.5)
    # row 0: online picks a'=1, target values it 3 -> 1 + 0.5*3 (not max 9 of the target: that is plain DQN)
    # row 1: terminal -> the reward only
    # row 2: online picks a'=2, target values it 2 -> -1 + 0.5*2
    np.testing.assert_allclose(y, [2.5, 0.5, 0.0])


def test_replay_buffer_wraps_and_samples_whole_transitions() -> None:
    buf = ReplayBuffer(capacity=5, obs_dim=2)
    for start in (0, 3):
        n = 3
        ids = np.arange(start, start + n, dtype=np.float32)
        buf.add_batch(np.stack([ids, ids], 1), ids.astype(np.int32), ids, np.stack([ids + 1, ids + 1], 1), np.zeros(n))
    assert buf.size == 5 and buf.pos == 1
    assert sorted(buf.rewards.tolist()) == [1, 2, 3, 4, 5]  # transition 0 was overwritten
    o, a, r, o2, d = buf.sample(np.random.default_rng(0), 50)
    np.testing.assert_array_equal(o[:, 0], r)  # every field of a row belongs to the same transition
    np.testing.assert_array_equal(a, r.astype(np.int32))
    np.testing.assert_array_equal(o2[:, 0], r + 1)


@pytest.mark.parametrize("variant", ["mlp", "bn"])
def test_qnetwork_shapes_and_safe_mode_roundtrip(variant: str, tmp_path) -> None:
    import keras

    from ml.policy.qnet import build_qnetwork

    m = build_qnetwork(OBS_DIM, variant=variant, seed=1)
    assert m.output_shape == (None, N_ACTIONS)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in m.layers) == (variant == "bn")
    x = np.random.default_rng(0).random((4, OBS_DIM)).astype(np.float32)
    m.save(tmp_path / "q.keras")
    back = keras.models.load_model(tmp_path / "q.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(back(x, training=False), m(x, training=False), rtol=1e-6)
    with pytest.raises(ValueError):
        build_qnetwork(OBS_DIM, variant="resnet")


def test_target_copy_includes_bn_moving_stats_and_runs_in_inference_mode() -> None:
    import keras

    from ml.policy.qnet import build_qnetwork

    online = build_qnetwork(OBS_DIM, variant="bn", seed=2)
    target = build_qnetwork(OBS_DIM, variant="bn", seed=3)
    rng = np.random.default_rng(0)
    x = (rng.random((256, OBS_DIM)) * 3 + 1).astype(np.float32)
    online.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    online.fit(x, rng.random((256, N_ACTIONS)), epochs=2, batch_size=64, verbose=0)  # moves the BN statistics
    bn_online = online.get_layer("bn_128")
    assert not np.allclose(bn_online.moving_mean.numpy(), 0.0)

    target.set_weights(online.get_weights())  # the trainer's hard update
    np.testing.assert_array_equal(target.get_layer("bn_128").moving_mean.numpy(), bn_online.moving_mean.numpy())
    np.testing.assert_array_equal(target.get_layer("bn_128").moving_variance.numpy(), bn_online.moving_variance.numpy())
    np.testing.assert_allclose(target(x, training=False), online(x, training=False), rtol=1e-6)

    # inference mode: a row's Q-values do not depend on the rest of the batch (no batch
    # statistics, no dropout); in training mode they do
    alone = target(x[:1], training=False).numpy()
    np.testing.assert_allclose(target(x[:64], training=False).numpy()[:1], alone, rtol=1e-5)
    other = np.concatenate([x[:1], x[128:160] * 5])
    np.testing.assert_allclose(target(other, training=False).numpy()[:1], alone, rtol=1e-5)
    assert not np.allclose(target(other, training=True).numpy()[:1], target(x[:64], training=True).numpy()[:1])


def test_config_quick_and_validation() -> None:
    q = DDQNConfig.quick(variant="bn")
    assert q.variant == "bn" and q.episodes < DDQNConfig().episodes
    assert DDQNConfig().gamma == 0.99 and DDQNConfig().replay_size == 10_000 and DDQNConfig().batch_size == 64
    with pytest.raises(ValueError):
        DDQNConfig(gamma=1.5)
    with pytest.raises(ValueError):
        DDQNConfig(batch_size=128, replay_size=64)
    full = DDQNConfig()
    assert full.episodes == 2000 and full.time_budget_s == 120.0 and full.patience == 6
    assert q.time_budget_s is not None and q.time_budget_s < full.time_budget_s
    assert DDQNConfig.quick(time_budget_s=None).time_budget_s is None  # overrides win over quick's budget
    for bad in ({"time_budget_s": 0.0}, {"patience": 0}):
        with pytest.raises(ValueError):
            DDQNConfig(**bad)


@pytest.mark.parametrize("variant", ["mlp", "bn"])
def test_train_ddqn_smoke(variant: str) -> None:
    series = [synthetic_series(120, s) for s in range(4)]
    cfg = DDQNConfig(
        episodes=6,
        episode_len=30,
        n_envs=3,
        replay_size=256,
        batch_size=16,
        learning_starts=32,
        eval_every=2,
        eval_episodes=3,
        variant=variant,
    )
    seen = []
    model, hist = train_ddqn(series, last_value_forecast, cfg, seed=5, progress=seen.append)
    assert model.output_shape == (None, N_ACTIONS)
    assert len(hist["episode_reward"]) == 6 == hist["episodes"]
    assert all(-1.0 <= r <= 1.0 for r in hist["episode_reward"])
    assert hist["gradient_steps"] > 0
    assert seen and seen[-1]["episode"] == 6 and len(hist["greedy_eval"]) == len(seen)
    b = hist["baselines"]
    assert b["oracle"] >= b["best_fixed"] >= b["fixed_50"]
    assert hist["config"]["variant"] == variant and hist["obs_dim"] == OBS_DIM
    # the returned weights are the best validation checkpoint
    assert hist["best_greedy_reward"] == pytest.approx(max(r["mean_reward"] for r in hist["greedy_eval"]))
    assert hist["stopped_by"] == "episodes"
    assert sum(hist["action_histogram"]) == 3 * 30  # the greedy actions on the 3 validation episodes of 30
    assert isinstance(hist["collapsed"], bool) and hist["env_steps"] >= 6 * 30
    curve = hist["greedy_eval"]
    assert all({"episode", "mean_reward", "gradient_steps", "env_steps", "elapsed_s"} <= set(r) for r in curve)
    assert [r["env_steps"] for r in curve] == sorted(r["env_steps"] for r in curve)


def test_train_ddqn_on_the_quantiles_observation_is_reproducible() -> None:
    """Served h = 1 quantiles (N, 3) from the forecaster: an 11-column Q-network, the layout in the
    history; one forecaster per series works; the same seed gives the same run."""
    series = [synthetic_series(120, s) for s in range(4)]
    cfg = _tiny(episodes=6, episode_len=30, n_envs=3, eval_every=2, eval_episodes=3)
    model, hist = train_ddqn(series, [last_value_quantiles] * 4, cfg, seed=5)
    assert model.input_shape == (None, 11) and model.output_shape == (None, N_ACTIONS)
    assert hist["obs_dim"] == 11 and hist["observation"] == "quantiles" and hist["obs_names"][-2:] == ["q10", "q90"]
    assert hist["gradient_steps"] > 0 and sum(hist["action_histogram"]) == 3 * 30
    again, hist2 = train_ddqn(series, last_value_quantiles, cfg, seed=5)
    assert hist2["episode_reward"] == hist["episode_reward"] and hist2["action_histogram"] == hist["action_histogram"]
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _, point = train_ddqn(series, last_value_forecast, cfg, seed=5)
    assert point["obs_dim"] == 9 and point["observation"] == "point"
    with pytest.raises(ValueError, match="mixed observation layouts"):
        train_ddqn(series, [last_value_quantiles, last_value_forecast] * 2, cfg, seed=5)


def _tiny(**kw) -> DDQNConfig:
    base = {
        "episode_len": 20,
        "n_envs": 2,
        "replay_size": 256,
        "batch_size": 16,
        "learning_starts": 32,
        "eval_every": 1,
        "eval_episodes": 2,
        "patience": None,
        "time_budget_s": None,
    }
    return DDQNConfig(**{**base, **kw})


def test_train_ddqn_stops_on_patience() -> None:
    """lr 0: the network never changes, so no evaluation after learning starts improves."""
    series = [synthetic_series(100, s) for s in range(2)]
    _, hist = train_ddqn(series, last_value_forecast, _tiny(episodes=400, lr=0.0, patience=3), seed=1)
    assert hist["stopped_by"] == "patience" and hist["episodes"] < 400
    learning = [r for r in hist["greedy_eval"] if r["gradient_steps"] > 0]
    # the first evaluation after learning starts sets the mark, then `patience` evaluations do not beat it
    assert len(learning) == 1 + 3
    assert len({r["mean_reward"] for r in hist["greedy_eval"]}) == 1


def test_train_ddqn_stops_on_the_time_budget() -> None:
    series = [synthetic_series(100, s) for s in range(2)]
    _, hist = train_ddqn(series, last_value_forecast, _tiny(episodes=100_000, time_budget_s=3.0), seed=2)
    assert hist["stopped_by"] == "time_budget" and 0 < hist["episodes"] < 100_000
    assert hist["train_seconds"] < 3.0 + 5.0  # stops within about one vector step plus the final evaluation
    assert hist["greedy_eval"] and sum(hist["action_histogram"]) == 2 * 20


def test_train_ddqn_does_not_collapse_when_the_best_level_varies() -> None:
    """Bandwidth holds one of four levels (25, 50, 75, 95 % of the peak) for 40 steps: the best action
    follows the level (20, 50, 70, 90 %), so a constant action is far from optimal."""
    rng = np.random.default_rng(3)
    series = []
    for _ in range(6):
        bw = np.repeat(rng.choice([25.0, 50.0, 75.0, 95.0], size=6), 40)  # (240,)
        bw[::10] = 100.0  # one peak in every window sets the reference
        series.append(np.stack([np.full(240, 10.0), bw, np.zeros(240), np.ones(240)], axis=1))
    cfg = _tiny(episodes=48, episode_len=60, n_envs=8, learning_starts=200, gamma=0.0, eval_every=8, eval_episodes=6)
    _, hist = train_ddqn(series, last_value_forecast, cfg, seed=0)
    assert hist["collapsed"] is False
    assert sum(c > 0 for c in hist["action_histogram"]) >= 3
    assert hist["best_greedy_reward"] > hist["baselines"]["best_fixed"] + 0.05


def test_train_ddqn_learns_a_simple_rule() -> None:
    """Constant bandwidth at 55 % of the window peak: the best action is 50 % (reward 0.909).

    A few hundred gradient steps must find it (fixed 50 % scores 0.868 here; most
    other single actions score far lower).
    """
    rng = np.random.default_rng(0)
    series = []
    for _s in range(6):
        bw = np.full(150, 55.0)
        bw[::10] = 100.0  # one peak in every window sets the reference
        bw *= rng.uniform(0.5, 2.0)
        series.append(np.stack([np.full(150, 10.0), bw, np.zeros(150), np.ones(150)], axis=1))
    cfg = DDQNConfig(
        episodes=24, episode_len=60, n_envs=8, learning_starts=200, gamma=0.0, eval_every=8, eval_episodes=4
    )
    model, hist = train_ddqn(series, last_value_forecast, cfg, seed=0)
    assert hist["final_greedy_reward"] > 0.8
    assert hist["greedy_eval"][0]["mean_reward"] < hist["final_greedy_reward"]  # the untrained network did worse
