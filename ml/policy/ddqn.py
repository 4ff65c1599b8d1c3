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

Stopping: whichever comes first of ``episodes`` finished episodes, ``time_budget_s`` seconds
of the whole call (its own budget, whatever the LSTM used before) and ``patience`` greedy
validation evaluations in a row not beating the best by ``min_improvement`` (``stopped_by``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ml.policy.buffer import ReplayBuffer
from ml.policy.env import DEFAULT_EPISODE_LEN, Forecaster, SeriesData, precompute_series
from ml.policy.evaluation import baseline_rewards
from ml.policy.observation import OBS_NAMES
from ml.policy.qnet import build_qnetwork
from ml.policy.rules import action_histogram, is_collapsed
from stream.core.records import N_ACTIONS

EpisodeCallback = Callable[[dict[str, Any]], None]


@dataclass
class DDQNConfig:
    """Hyper-parameters of :func:`train_ddqn` (defaults = the shipped setting)."""

    episodes: int = 2000  # the most episodes in total, across all parallel environments
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
    eval_every: int = 40  # episodes between greedy evaluations (patience 6 = 240 episodes without improvement)
    eval_episodes: int = 16  # validation episodes (drawn from the training series)
    keep_best: bool = True  # return the weights of the best greedy validation score
    value_init: bool = True  # output bias starts at mean reward / (1 - gamma)
    time_budget_s: float | None = 120.0  # wall-clock budget of the whole call (None: no budget)
    patience: int | None = 6  # greedy evaluations without improvement before stopping (None: never)
    min_improvement: float = 1e-3  # a validation score must beat the best by this to count as improvement

    @classmethod
    def quick(cls, **overrides: Any) -> DDQNConfig:
        """A small run (well under 25 s on 2 cores) for demos and smoke tests."""
        base = cls(episodes=160, episode_len=100, n_envs=16, learning_starts=500, eval_every=32, eval_episodes=8)
        return replace(base, **{"time_budget_s": 30.0, **overrides})

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.episode_len < 1 or self.n_envs < 1:
            raise ValueError("episodes, episode_len and n_envs must be >= 1")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.batch_size > self.replay_size:
            raise ValueError("batch_size must not exceed replay_size")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0 or None, got {self.time_budget_s}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")


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


def _greedy(act_fn: Callable[[np.ndarray], np.ndarray], val: list[tuple[SeriesData, int, int]]) -> tuple[Any, float]:
    """Greedy actions (sum n,) on validation episodes (data, start, length) and their mean reward."""
    acts = act_fn(np.concatenate([d.obs[s : s + n] for d, s, n in val]))  # obs (sum n, obs_dim)
    rew = np.concatenate([d.rewards[s : s + n] for d, s, n in val])  # (sum n, 10)
    return acts, float(rew[np.arange(rew.shape[0]), acts].mean())


@dataclass
class _QNets:
    """The online and target Q-networks with their compiled forward passes and gradient step."""

    online: Any
    target: Any
    act: Callable[[np.ndarray], np.ndarray]  # obs (N, obs_dim) -> greedy actions (N,) int32
    q_next: Callable[[np.ndarray], Any]  # next obs -> (Q_online, Q_target), both in inference mode
    train_step: Callable[[np.ndarray, np.ndarray, np.ndarray], Any]  # (obs, actions, y) -> Huber loss


@dataclass
class _Run:
    """Mutable state of one training run: the parallel episodes, epsilon, counters and the best checkpoint."""

    envs: list[tuple[SeriesData, int, int]]  # per parallel env: its episode (data, start, length)
    t: np.ndarray  # (k,) position in the episode; -1 = parked (no episode left to start)
    ep_sum: np.ndarray  # (k,) reward summed over the episode so far
    eps: float
    started_eps: int
    finished: int = 0
    grad_steps: int = 0
    losses: list[float] = field(default_factory=list)
    best_score: float = -np.inf
    best_weights: list[np.ndarray] | None = None
    next_eval: int = 0
    env_steps: int = 0  # transitions acted
    stale_evals: int = 0  # greedy evaluations since the last improvement (patience)
    patience_best: float = -np.inf
    started: float = field(default_factory=time.monotonic)  # the time budget counts from train_ddqn's start


def _draw_episode(rng: np.random.Generator, datas: list[SeriesData], episode_len: int) -> tuple[SeriesData, int, int]:
    """A random episode (data, start, length): a uniform series, then a uniform start (two ``rng`` draws)."""
    d = datas[int(rng.integers(len(datas)))]
    n = min(episode_len, d.n_steps)
    return d, int(rng.integers(0, d.n_steps - n + 1)), n


def _new_history(val: list[tuple[SeriesData, int, int]]) -> dict[str, Any]:
    """The empty training history, with the baselines' mean rewards on the validation episodes."""
    fields = ("obs", "reference", "forecast", "actual_next", "rewards")
    baselines = baseline_rewards([SeriesData(*(getattr(d, f)[s : s + n + 1] for f in fields)) for d, s, n in val])
    return {
        "episode_reward": [],
        "episode_epsilon": [],
        "greedy_eval": [],
        "baselines": {
            key: baselines[key]
            for key in ("fixed_50", "best_fixed", "best_fixed_pct", "predict_then_allocate", "oracle")
        },
    }


def _build_nets(cfg: DDQNConfig, seed: int, datas: list[SeriesData]) -> _QNets:
    """Online and target networks (target = copy of online), Adam optimizer and Huber loss, as tf.functions."""
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    dim = datas[0].obs.shape[1]  # the observation layout's width
    online = build_qnetwork(dim, N_ACTIONS, cfg.variant, cfg.dropout, seed=seed)
    target = build_qnetwork(dim, N_ACTIONS, cfg.variant, cfg.dropout, seed=seed)
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
    spec = tf.TensorSpec([None, dim], tf.float32)

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

    return _QNets(online, target, lambda o: q_greedy(o).numpy(), q_next, train_step)


def _act(run: _Run, nets: _QNets, buf: ReplayBuffer, rng: np.random.Generator, cfg: DDQNConfig) -> None:
    """One vector step: epsilon-greedy actions for every env, transitions into ``buf``, epsilon decay."""
    k = len(run.envs)
    obs = np.stack([d.obs[s + ti] for (d, s, _), ti in zip(run.envs, run.t)])  # (k, obs_dim)
    nxt = np.stack([d.obs[s + ti + 1] for (d, s, _), ti in zip(run.envs, run.t)])  # (k, obs_dim)
    greedy = nets.act(obs)
    explore = rng.random(k) < run.eps
    actions = np.where(explore, rng.integers(0, N_ACTIONS, size=k), greedy).astype(np.int32)
    rewards = np.array([d.rewards[s + ti, a] for (d, s, _), ti, a in zip(run.envs, run.t, actions)], np.float32)
    buf.add_batch(obs, actions, rewards, nxt, np.zeros(k, np.float32))  # truncation only: done = 0
    run.ep_sum += rewards
    run.t += 1
    run.env_steps += k
    run.eps = max(cfg.epsilon_end, run.eps * cfg.epsilon_decay)


def _learn(run: _Run, nets: _QNets, buf: ReplayBuffer, rng: np.random.Generator, cfg: DDQNConfig) -> None:
    """``updates_per_step`` Double-DQN gradient steps on replay batches, with the periodic hard target copy."""
    for _ in range(cfg.updates_per_step):
        o, a, r, o2, dn = buf.sample(rng, cfg.batch_size)
        qo, qt = nets.q_next(o2)
        y = double_dqn_targets(r, dn, qo.numpy(), qt.numpy(), cfg.gamma).astype(np.float32)
        run.losses.append(float(nets.train_step(o, a, y)))
        run.grad_steps += 1
        if run.grad_steps % cfg.target_update_every == 0:
            nets.target.set_weights(nets.online.get_weights())  # all weights, BN moving stats included


def _finish_episodes(
    run: _Run, history: dict[str, Any], rng: np.random.Generator, datas: list[SeriesData], cfg: DDQNConfig
) -> None:
    """Record every episode that just ended and start a new one in its env, or park the env when none is left."""
    for i in range(len(run.envs)):
        d, s, n = run.envs[i]
        if run.t[i] < n:
            continue
        run.finished += 1
        history["episode_reward"].append(float(run.ep_sum[i] / n))
        history["episode_epsilon"].append(float(run.eps))
        run.ep_sum[i] = 0.0
        run.t[i] = 0
        if run.started_eps < cfg.episodes:
            run.envs[i] = _draw_episode(rng, datas, cfg.episode_len)
            run.started_eps += 1
        else:
            run.t[i] = -1  # parked: no more episodes to start


def _drop_parked(run: _Run) -> bool:
    """The tail: drop the parked envs; False when none is left active."""
    active = [i for i in range(len(run.envs)) if run.t[i] >= 0]
    if not active:
        return False
    run.envs = [run.envs[i] for i in active]
    run.t = run.t[active]
    run.ep_sum = run.ep_sum[active]
    return True


def _evaluate(
    run: _Run,
    nets: _QNets,
    val: list[tuple[SeriesData, int, int]],
    history: dict[str, Any],
    cfg: DDQNConfig,
    progress: EpisodeCallback | None,
) -> None:
    """Score the greedy policy on the validation episodes, log it (and the mean loss since the last one),
    keep the best weights and report to ``progress``."""
    score = _greedy(nets.act, val)[1]
    loss = float(np.mean(run.losses)) if run.losses else None
    run.losses.clear()
    row = {
        "episode": run.finished,
        "mean_reward": score,
        "epsilon": run.eps,
        "loss": loss,
        "gradient_steps": run.grad_steps,
        "env_steps": run.env_steps,
        "elapsed_s": round(time.monotonic() - run.started, 2),
    }
    history["greedy_eval"].append(row)
    if cfg.keep_best and score > run.best_score:
        run.best_score, run.best_weights = score, nets.online.get_weights()
    if run.grad_steps > 0:  # the untrained network's constant score must not use up the patience
        if score > run.patience_best + cfg.min_improvement:
            run.patience_best, run.stale_evals = score, 0
        else:
            run.stale_evals += 1
    if progress is not None:
        progress(dict(row))


def _stop_reason(run: _Run, cfg: DDQNConfig) -> str | None:
    """Why training must stop now ("episodes", "patience", "time_budget"), or None to go on."""
    if run.finished >= cfg.episodes:
        return "episodes"
    if cfg.patience is not None and run.stale_evals >= cfg.patience:
        return "patience"
    if cfg.time_budget_s is not None and time.monotonic() - run.started >= cfg.time_budget_s:
        return "time_budget"
    return None


def train_ddqn(
    series: Sequence[np.ndarray],
    forecaster: Forecaster | Sequence[Forecaster],
    config: DDQNConfig | None = None,
    seed: int = 0,
    progress: EpisodeCallback | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a Q-network on episodes drawn from ``series`` (each (T, 4), FEATURES order).

    ``forecaster`` (one, or one per series) maps windows (N, 10, 4) to next-bandwidth forecasts
    (N,) Mbit/s, or to the served h = 1 quantiles (N, 3) for the quantiles observation layout (the
    LSTM's in production; any callable in tests). ``progress`` is called after each
    greedy evaluation with its ``greedy_eval`` row. Stops as the module docstring says. Returns
    the online Keras model (``(None, obs_dim) -> (None, 10)``) and a JSON-able history: per-episode
    training reward, greedy validation curve (``greedy_eval``), ``stopped_by``, the returned
    network's greedy ``action_histogram`` on the validation episodes and ``collapsed``, the
    baselines on the validation episodes, the config, the seed and timings.
    """
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it

    cfg = config or DDQNConfig()
    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    datas = precompute_series(series, forecaster, cfg.use_forecast)
    val = [_draw_episode(rng, datas, cfg.episode_len) for _ in range(cfg.eval_episodes)]
    history = _new_history(val)
    nets = _build_nets(cfg, seed, datas)
    buf = ReplayBuffer(cfg.replay_size, datas[0].obs.shape[1])
    k = min(cfg.n_envs, cfg.episodes)
    envs = [_draw_episode(rng, datas, cfg.episode_len) for _ in range(k)]
    run = _Run(envs, np.zeros(k, np.int64), np.zeros(k), cfg.epsilon_start, started_eps=k, started=started)

    while (stopped_by := _stop_reason(run, cfg)) is None:
        _act(run, nets, buf, rng, cfg)
        if buf.size >= max(cfg.learning_starts, cfg.batch_size):
            _learn(run, nets, buf, rng, cfg)
        _finish_episodes(run, history, rng, datas, cfg)
        if run.finished >= run.next_eval:
            _evaluate(run, nets, val, history, cfg, progress)
            run.next_eval = run.finished + cfg.eval_every
        if (run.t < 0).any() and not _drop_parked(run):
            stopped_by = "episodes"
            break

    if not history["greedy_eval"] or history["greedy_eval"][-1]["episode"] != run.finished:
        _evaluate(run, nets, val, history, cfg, progress)
    if cfg.keep_best and run.best_weights is not None:
        nets.online.set_weights(run.best_weights)
    hist = action_histogram(_greedy(nets.act, val)[0])  # of the returned network
    history.update(
        {
            "final_greedy_reward": history["greedy_eval"][-1]["mean_reward"],
            "best_greedy_reward": float(run.best_score) if cfg.keep_best else None,
            "config": asdict(cfg),
            "seed": seed,
            "obs_dim": datas[0].obs.shape[1],
            "obs_names": list(OBS_NAMES[: datas[0].obs.shape[1]]),
            "observation": datas[0].layout,
            "gradient_steps": run.grad_steps,
            "env_steps": run.env_steps,
            "episodes": run.finished,
            "stopped_by": stopped_by,
            "action_histogram": hist,
            "collapsed": is_collapsed(hist),
            "train_series": len(datas),
            "train_seconds": round(time.monotonic() - started, 2),
        }
    )
    return nets.online, history
