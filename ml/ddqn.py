"""Double-DQN training of the allocation policy.

Online network ``Q`` and target network ``Q'`` (same architecture, ``ml.qnet``).
For a transition ``(s, a, r, s', done)`` the Double-DQN target is::

    a* = argmax_a' Q(s', a')                      (online network picks)
    y  = r + gamma * (1 - done) * Q'(s', a*)      (target network evaluates)

and the online network minimises the Huber loss between ``Q(s, a)`` and ``y``.
Both forward passes of the target computation run in inference mode
(``training=False``: BatchNorm uses its moving statistics, Dropout is off); only the
gradient step runs the online network with ``training=True``. Every
``target_update_every`` gradient steps the target becomes a hard copy of *all* the
online weights, including BatchNorm's non-trainable moving mean/variance.

Acting is vectorised: ``n_envs`` episodes run side by side (each a
``LinkAllocationEnv``-equivalent episode drawn from precomputed series data), one
batched forward pass picks all their epsilon-greedy actions, and their transitions
go into a numpy ring buffer (no per-sample Python objects). Epsilon decays once per
vector step (``epsilon *= epsilon_decay`` down to ``epsilon_end``).

Episodes end by truncation (fixed length), so ``done`` is always 0 and the target
bootstraps through the episode boundary. Because an action never changes the next
state, ``Q(s, a) = r(s, a) + gamma * V(s')`` where ``V(s')`` does not depend on ``a``:
the greedy policy is the one-step (bandit) optimum for any gamma, and gamma only
scales the action-independent part of Q (about ``1 / (1 - gamma)`` times the mean
reward), which the network must learn on top of the small action differences.
docs/policy.md measures this.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from ml.env import DEFAULT_EPISODE_LEN, Forecaster, SeriesData, precompute
from ml.policy_eval import baseline_rewards
from ml.policy_features import OBS_DIM, OBS_NAMES
from stream.records import N_ACTIONS

Progress = Callable[[dict[str, Any]], None]


@dataclass
class DDQNConfig:
    """Hyper-parameters of :func:`train_ddqn` (defaults = the shipped setting)."""

    episodes: int = 240  # episodes in total, across all parallel environments
    episode_len: int = DEFAULT_EPISODE_LEN  # decisions per episode
    n_envs: int = 16  # episodes acted on side by side
    replay_size: int = 10_000
    batch_size: int = 64
    gamma: float = 0.99
    lr: float = 1e-3
    huber_delta: float = 1.0
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay: float = 0.995  # per vector step (= n_envs transitions)
    target_update_every: int = 10  # gradient steps between hard target copies
    learning_starts: int = 1_000  # transitions in the buffer before the first gradient step
    updates_per_step: int = 1  # gradient steps per vector step
    variant: str = "mlp"  # "mlp" | "bn" (docs/policy.md: measured comparison)
    dropout: float = 0.2  # for variant "bn"
    use_forecast: bool = True  # False zeroes the forecast feature (ablation)
    eval_every: int = 16  # episodes between greedy evaluations
    eval_episodes: int = 16  # validation episodes (drawn from the training series)
    keep_best: bool = True
    value_init: bool = True  # output bias starts at mean reward / (1 - gamma)  # return the weights of the best greedy validation score

    @classmethod
    def quick(cls, **overrides: Any) -> "DDQNConfig":
        """A small run (well under 25 s on 2 cores) for demos and smoke tests."""
        base = cls(episodes=160, episode_len=100, n_envs=16, learning_starts=500, eval_every=32, eval_episodes=8)
        return replace(base, **overrides)

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.episode_len < 1 or self.n_envs < 1:
            raise ValueError("episodes, episode_len and n_envs must be >= 1")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.batch_size > self.replay_size:
            raise ValueError("batch_size must not exceed replay_size")


def double_dqn_targets(
    rewards: np.ndarray, dones: np.ndarray, q_online_next: np.ndarray, q_target_next: np.ndarray, gamma: float
) -> np.ndarray:
    """Double-DQN TD targets: ``r + gamma * (1 - done) * Q_target(s', argmax_a' Q_online(s', a'))``.

    ``rewards``, ``dones``: (B,); ``q_online_next``, ``q_target_next``: (B, n_actions).
    """
    r = np.asarray(rewards, dtype=np.float64)
    d = np.asarray(dones, dtype=np.float64)
    qo = np.asarray(q_online_next, dtype=np.float64)
    qt = np.asarray(q_target_next, dtype=np.float64)
    best = np.argmax(qo, axis=1)  # (B,) chosen by the online network
    return r + gamma * (1.0 - d) * qt[np.arange(qt.shape[0]), best]


@dataclass
class ReplayBuffer:
    """Fixed-size ring buffer of transitions in preallocated numpy arrays."""

    capacity: int
    obs_dim: int
    obs: np.ndarray = field(init=False)
    actions: np.ndarray = field(init=False)
    rewards: np.ndarray = field(init=False)
    next_obs: np.ndarray = field(init=False)
    dones: np.ndarray = field(init=False)
    size: int = 0
    pos: int = 0

    def __post_init__(self) -> None:
        self.obs = np.zeros((self.capacity, self.obs_dim), np.float32)
        self.actions = np.zeros(self.capacity, np.int32)
        self.rewards = np.zeros(self.capacity, np.float32)
        self.next_obs = np.zeros((self.capacity, self.obs_dim), np.float32)
        self.dones = np.zeros(self.capacity, np.float32)

    def add_batch(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray, dones: np.ndarray) -> None:
        """Append a batch of transitions (overwriting the oldest when full)."""
        n = obs.shape[0]
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.next_obs[idx] = next_obs
        self.dones[idx] = dones
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.capacity, self.size + n))

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """``n`` transitions drawn uniformly with replacement."""
        i = rng.integers(0, self.size, size=n)
        return self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i], self.dones[i]


def _greedy_mean(act_fn: Callable[[np.ndarray], np.ndarray], val: list[tuple[SeriesData, int, int]]) -> float:
    """Mean reward of the greedy policy on validation episodes (data, start, length)."""
    obs = np.concatenate([d.obs[s : s + n] for d, s, n in val])  # (sum n, OBS_DIM)
    acts = act_fn(obs)
    rew = np.concatenate([d.rewards[s : s + n] for d, s, n in val])  # (sum n, 10)
    return float(rew[np.arange(rew.shape[0]), acts].mean())


def train_ddqn(
    series: Sequence[np.ndarray],
    forecaster: Forecaster,
    config: DDQNConfig | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a Q-network on episodes drawn from ``series`` (each (T, 4), FEATURES order).

    ``forecaster`` maps windows (N, 10, 4) to next-bandwidth forecasts (N,) Mbit/s (the
    LSTM's in production; any callable in tests). ``progress`` is called after each
    greedy evaluation with a dict (episode, epsilon, greedy reward, loss). Returns the
    online Keras model (``(None, OBS_DIM) -> (None, 10)``) and a JSON-able history:
    per-episode training reward, greedy validation curve, the baselines on the
    validation episodes, the config, the seed and timings.
    """
    import keras
    import tensorflow as tf

    from ml.qnet import build_qnetwork

    cfg = config or DDQNConfig()
    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)

    datas = [precompute(s, forecaster, cfg.use_forecast) for s in series]
    datas = [d for d in datas if d.n_steps >= 1]
    if not datas:
        raise ValueError("train_ddqn needs at least one series with more than 10 rows")

    def draw_episode() -> tuple[SeriesData, int, int]:
        d = datas[int(rng.integers(len(datas)))]
        n = min(cfg.episode_len, d.n_steps)
        return d, int(rng.integers(0, d.n_steps - n + 1)), n

    val = [draw_episode() for _ in range(cfg.eval_episodes)]
    baselines = baseline_rewards(
        [SeriesData(d.obs[s : s + n + 1], d.reference[s : s + n + 1], d.forecast[s : s + n + 1],
                    d.actual_next[s : s + n + 1], d.rewards[s : s + n + 1]) for d, s, n in val]
    )

    online = build_qnetwork(OBS_DIM, N_ACTIONS, cfg.variant, cfg.dropout, seed=seed)
    target = build_qnetwork(OBS_DIM, N_ACTIONS, cfg.variant, cfg.dropout, seed=seed)
    if cfg.value_init and cfg.gamma < 1.0:
        # Start Q at the discounted value of the random policy's mean reward, so the network
        # need not first grow the large action-independent offset r/(1-gamma) from 0.
        r_mean = float(np.mean([np.nanmean(d.rewards[: d.n_steps]) for d in datas]))
        head = online.get_layer("q_values")
        kernel, bias = head.get_weights()
        head.set_weights([kernel, np.full_like(bias, r_mean / (1.0 - cfg.gamma))])
    target.set_weights(online.get_weights())
    opt = keras.optimizers.Adam(learning_rate=cfg.lr)
    huber = keras.losses.Huber(delta=cfg.huber_delta)
    spec = tf.TensorSpec([None, OBS_DIM], tf.float32)

    @tf.function(input_signature=[spec])
    def q_greedy(obs):
        return tf.argmax(online(obs, training=False), axis=1, output_type=tf.int32)

    @tf.function(input_signature=[spec])
    def q_next(next_obs):
        # both in inference mode: BN moving statistics, no dropout
        return online(next_obs, training=False), target(next_obs, training=False)

    @tf.function(input_signature=[spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32)])
    def train_step(obs, actions, y):
        with tf.GradientTape() as tape:
            q = online(obs, training=True)  # (B, 10)
            q_a = tf.gather(q, actions, axis=1, batch_dims=1)  # (B,)
            loss = huber(y, q_a)
        grads = tape.gradient(loss, online.trainable_variables)
        opt.apply_gradients(zip(grads, online.trainable_variables))
        return loss

    act_fn = lambda o: q_greedy(o).numpy()  # noqa: E731
    buf = ReplayBuffer(cfg.replay_size, OBS_DIM)
    k = min(cfg.n_envs, cfg.episodes)
    eps = cfg.epsilon_start
    # per parallel env: its episode (data, start, length) and position
    envs = [draw_episode() for _ in range(k)]
    t = np.zeros(k, np.int64)
    ep_sum = np.zeros(k)
    started_eps = k
    finished = 0
    grad_steps = 0
    losses: list[float] = []
    history: dict[str, Any] = {
        "episode_reward": [],
        "episode_epsilon": [],
        "greedy_eval": [],
        "baselines": {key: baselines[key] for key in ("fixed_50", "best_fixed", "best_fixed_pct", "predict_then_allocate", "oracle")},
    }
    best_score, best_weights = -np.inf, None
    next_eval = 0

    def evaluate() -> None:
        nonlocal best_score, best_weights
        score = _greedy_mean(act_fn, val)
        loss = float(np.mean(losses)) if losses else None
        losses.clear()
        row = {"episode": finished, "mean_reward": score, "epsilon": eps, "loss": loss, "gradient_steps": grad_steps}
        history["greedy_eval"].append(row)
        if cfg.keep_best and score > best_score:
            best_score, best_weights = score, online.get_weights()
        if progress is not None:
            progress(dict(row))

    while finished < cfg.episodes:
        obs = np.stack([d.obs[s + ti] for (d, s, _), ti in zip(envs, t)])  # (k, OBS_DIM)
        nxt = np.stack([d.obs[s + ti + 1] for (d, s, _), ti in zip(envs, t)])  # (k, OBS_DIM)
        greedy = act_fn(obs)
        explore = rng.random(k) < eps
        actions = np.where(explore, rng.integers(0, N_ACTIONS, size=k), greedy).astype(np.int32)
        rewards = np.array([d.rewards[s + ti, a] for (d, s, _), ti, a in zip(envs, t, actions)], np.float32)
        buf.add_batch(obs, actions, rewards, nxt, np.zeros(k, np.float32))  # truncation only: done = 0
        ep_sum += rewards
        t += 1
        eps = max(cfg.epsilon_end, eps * cfg.epsilon_decay)

        if buf.size >= max(cfg.learning_starts, cfg.batch_size):
            for _ in range(cfg.updates_per_step):
                o, a, r, o2, dn = buf.sample(rng, cfg.batch_size)
                qo, qt = q_next(o2)
                y = double_dqn_targets(r, dn, qo.numpy(), qt.numpy(), cfg.gamma).astype(np.float32)
                losses.append(float(train_step(o, a, y)))
                grad_steps += 1
                if grad_steps % cfg.target_update_every == 0:
                    target.set_weights(online.get_weights())  # all weights, BN moving stats included

        for i in range(k):
            d, s, n = envs[i]
            if t[i] < n:
                continue
            finished += 1
            history["episode_reward"].append(float(ep_sum[i] / n))
            history["episode_epsilon"].append(float(eps))
            ep_sum[i] = 0.0
            t[i] = 0
            if started_eps < cfg.episodes:
                envs[i] = draw_episode()
                started_eps += 1
            else:
                t[i] = -1  # parked: no more episodes to start
        if finished >= next_eval:
            evaluate()
            next_eval = finished + cfg.eval_every
        if (t < 0).any():
            # the tail: no episodes left to start, drop the finished environments
            active = [i for i in range(k) if t[i] >= 0]
            if not active:
                break
            envs = [envs[i] for i in active]
            t = t[active]
            ep_sum = ep_sum[active]
            k = len(active)

    if history["greedy_eval"][-1]["episode"] != finished:
        evaluate()
    if cfg.keep_best and best_weights is not None:
        online.set_weights(best_weights)
    history.update(
        {
            "final_greedy_reward": history["greedy_eval"][-1]["mean_reward"],
            "best_greedy_reward": float(best_score) if cfg.keep_best else None,
            "config": asdict(cfg),
            "seed": seed,
            "obs_dim": OBS_DIM,
            "obs_names": list(OBS_NAMES),
            "gradient_steps": grad_steps,
            "episodes": finished,
            "train_series": len(datas),
            "train_seconds": round(time.monotonic() - started, 2),
        }
    )
    return online, history
