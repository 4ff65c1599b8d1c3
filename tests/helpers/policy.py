"""Small data and a tiny model registry for the policy tests (no LSTM training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_series(steps: int, seed: int, scale: float = 100.0) -> np.ndarray:
    """A small (steps, 4) series: log-AR(1) bandwidth with noise, loosely coupled latency/loss."""
    rng = np.random.default_rng(seed)
    z = np.zeros(steps)
    for t in range(1, steps):
        z[t] = 0.9 * z[t - 1] + 0.2 * rng.standard_normal()
    bw = scale * np.exp(z - 0.3)
    lat = 20.0 * (1.0 + 0.2 * rng.random(steps))
    loss = 0.01 * rng.random(steps)
    rel = 1.0 - loss
    return np.stack([lat, bw, loss, rel], axis=1)


def last_value_quantiles(windows: np.ndarray) -> np.ndarray:
    """A naive quantile forecaster for the quantiles observation layout: (N, 10, 4) -> (N, 3) Mbit/s,
    p10 / median / p90 = 0.8 / 1.0 / 1.1 x the last bandwidth, widened by the window's volatility."""
    bw = np.maximum(np.asarray(windows, dtype=np.float64)[:, :, 1], 0.0)
    spread = bw.std(axis=1) / np.maximum(bw.mean(axis=1), 1e-9)
    last = bw[:, -1]
    return np.stack([last * np.maximum(0.8 - spread, 0.0), last, last * (1.1 + spread)], axis=1)


def tiny_registry(model_dir: Path, seed: int = 0) -> tuple[str, dict]:
    """A registry version with an untrained LSTM (fitted preprocessing) and a briefly trained
    Q-network whose DDQN history is in the metadata. Returns (version, ddqn history)."""
    from ml.data import make_windows
    from ml.forecast.features import Preprocessor
    from ml.forecast.lstm import build_lstm
    from ml.policy.ddqn import DDQNConfig, train_ddqn
    from ml.policy.observation import last_value_forecast
    from ml.serving.registry import save_version

    series = [synthetic_series(120, s) for s in range(3)]
    w, y = make_windows(np.concatenate(series))
    pre = Preprocessor().fit(w, y)
    cfg = DDQNConfig(
        episodes=4,
        episode_len=30,
        n_envs=2,
        replay_size=256,
        batch_size=16,
        learning_starts=32,
        eval_every=2,
        eval_episodes=2,
    )
    qnet, hist = train_ddqn(series, last_value_forecast, cfg, seed=seed)
    version = save_version(
        model_dir, build_lstm(seed), qnet, pre, {"ewma_alpha": 0.5, "ddqn": hist, "timings": {"total_s": 1.0}}
    )
    return version, hist
