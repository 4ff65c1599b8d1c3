"""Scoring allocation policies on held-out episodes (``bwp evaluate-policy``).

Every policy is scored by the mean per-step reward (``ml.policy.reward``) over the same
episodes:

* ``ddqn``: the trained Q-network (from the registry through ``ml.serving.predictor``, or a
  ``.keras`` file), greedy;
* ``fixed_<p>``: always allocate p % of the reference bandwidth (p = 10..100);
  ``best_fixed`` is the best of them *measured on these same episodes* (an
  optimistic baseline);
* ``predict_then_allocate``: robustMPC's rule: allocate the forecast discounted by
  the largest relative forecast error of the last 5 steps,
  ``alloc = forecast / (1 + max_err)``, snapped down to the action grid;
* ``oracle``: the best action knowing the next step's bandwidth (the ceiling);
* ``ewma_rule`` / ``quantile_rule`` (optional): the rules of ``ml.policy.rules`` with
  parameters tuned on *training* series (passed in; never tuned on these episodes).

``normalized_score = (R_ddqn - R_fixed50) / (R_oracle - R_fixed50)``: 0 is no better
than always allocating half, 1 is the oracle (``normalized_score_<policy>`` for the others).

Held-out simulator episodes are links 0..episodes-1 of the fleet with simulator seed
``TRAIN_SEED_LIMIT + 1000 * seed + 500``: never used for training (``bwp train --seed S``
uses seeds ``1000 S + 1..3`` < TRAIN_SEED_LIMIT).
This module imports only numpy at the top; TensorFlow is loaded when a Keras model is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import LinkSeries, file_links, simulator_links, simulator_seeds
from ml.policy.env import (
    DEFAULT_EPISODE_LEN,
    TRAIN_SEED_LIMIT,
    Forecaster,
    SeriesData,
    all_windows,
    precompute,
)
from ml.policy.observation import last_value_forecast, snap_down
from ml.policy.rules import EwmaRule, QuantileFn, QuantileRule, action_histogram, is_collapsed, quantile_rule_actions
from simulator.generator import simulate_series
from stream.core.errors import DataError, ModelError
from stream.core.records import N_ACTIONS, WINDOW

#: (windows (N, 10, 4), observations (N, obs_dim)) -> actions (N,)
PolicyFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: A tuned quantile rule together with the forecaster's ``quantile_fn(windows, tau)`` it needs.
QuantileRuleArg = tuple[QuantileRule, QuantileFn]
PTA_LOOKBACK = 5
EVAL_SEED_OFFSET = 500
#: Training links x steps the rules are tuned on by ``tuning_series`` (= ``bwp train``'s training split).
TUNE_LINKS = 64
TUNE_STEPS = 1000


def predict_then_allocate_actions(
    forecast: np.ndarray, actual_next: np.ndarray, reference: np.ndarray, lookback: int = PTA_LOOKBACK
) -> np.ndarray:
    """robustMPC-style actions for one episode's consecutive decisions, all (n,) arrays.

    Decision i may use the errors of decisions i-lookback..i-1 (their next bandwidth
    is already inside window i). The first decision has no error history (error 0).
    """
    f = np.maximum(np.asarray(forecast, dtype=np.float64), 0.0)
    y = np.maximum(np.asarray(actual_next, dtype=np.float64), 0.0)
    n = f.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        # an outage (y = 0) after a positive forecast is an unbounded error: allocate the minimum
        err = np.where(y > 0, np.abs(f - y) / np.where(y > 0, y, 1.0), np.where(f > 0, np.inf, 0.0))  # (n,)
    padded = np.concatenate([np.zeros(lookback), err])  # (lookback + n,)
    idx = np.arange(n)[:, None] + np.arange(lookback)[None, :]  # errors of i-lookback..i-1
    max_err = padded[idx].max(axis=1) if n else np.zeros(0)  # (n,)
    alloc = f / (1.0 + max_err)
    return snap_down(alloc, reference)


def decision_rewards(data: SeriesData, actions: np.ndarray) -> np.ndarray:
    """Per-step reward of ``actions`` (one per decision of ``data``)."""
    n = data.n_steps
    a = np.asarray(actions, dtype=np.int64).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"need {n} actions, got {a.shape[0]}")
    return data.rewards[np.arange(n), a]


def baseline_rewards(datas: Sequence[SeriesData]) -> dict[str, float]:
    """Mean per-step reward of every fixed level, predict-then-allocate and the oracle over ``datas``."""
    fixed = np.zeros(N_ACTIONS)
    pta = oracle = 0.0
    steps = 0
    for d in datas:
        n = d.n_steps
        r = d.rewards[:n]  # (n, 10)
        fixed += r.sum(axis=0)
        oracle += r.max(axis=1).sum()
        pta += decision_rewards(
            d, predict_then_allocate_actions(d.forecast[:n], d.actual_next[:n], d.reference[:n])
        ).sum()
        steps += n
    if steps == 0:
        raise DataError("no decisions to score: every episode is shorter than one window + 1 step")
    out = {f"fixed_{(k + 1) * 10}": float(fixed[k] / steps) for k in range(N_ACTIONS)}
    best = int(np.argmax(fixed))
    out["best_fixed"] = float(fixed[best] / steps)
    out["best_fixed_pct"] = (best + 1) * 10
    out["predict_then_allocate"] = float(pta / steps)
    out["oracle"] = float(oracle / steps)
    return out


def heldout_series(profile: str, episodes: int, seed: int, episode_len: int = DEFAULT_EPISODE_LEN) -> list[np.ndarray]:
    """``episodes`` simulator series of ``episode_len`` decisions on seeds never used for training."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    sim_seed = heldout_seed(seed)
    # episode k = link k of the fleet (its own capacity class, path and load)
    return [simulate_series(profile, episode_len + WINDOW, sim_seed, link_index=k) for k in range(episodes)]


def tuning_series(
    profile: str, seed: int, links: int = TUNE_LINKS, steps: int = TUNE_STEPS
) -> tuple[list[np.ndarray], str]:
    """Training-seed simulator series to tune the rules on when a model carries no tuned rule.

    The training links of ``bwp train --profile profile --seed seed`` (simulator seed
    ``simulator_seeds(seed)["train"]``, links 0..links-1): never the held-out evaluation
    episodes. Returns the series and a label saying where they came from (for the output).
    """
    sim_seed = simulator_seeds(seed)["train"]
    series = [ls.data for ls in simulator_links(profile, links, steps, sim_seed)]
    return series, f"simulator:{profile}:seed={sim_seed}:links=0..{links - 1}:steps={steps}"


def heldout_seed(seed: int) -> int:
    """The simulator seed of ``bwp evaluate-policy --seed seed`` (never a training seed)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return TRAIN_SEED_LIMIT + 1000 * int(seed) + EVAL_SEED_OFFSET


def series_from_jsonl(
    paths: Sequence[Path | str], episode_len: int = DEFAULT_EPISODE_LEN
) -> tuple[list[np.ndarray], str]:
    """Episodes cut from telemetry JSONL files: per link (by ``seq``), consecutive chunks of
    ``episode_len`` decisions (the last, shorter chunk is kept if it has >= 1 decision).

    Returns the series and the profile label (the links' profile when they share one, else ``"data"``).
    """
    links = file_links(paths)  # grouped by link, ordered by seq
    out: list[np.ndarray] = []
    for link in links:
        s = link.data  # (T, 4)
        for start in range(0, max(0, s.shape[0] - WINDOW), episode_len):
            chunk = s[start : start + episode_len + WINDOW]
            if chunk.shape[0] >= WINDOW + 1:
                out.append(chunk)
    if not out:
        raise DataError(f"{list(map(str, paths))}: no link has more than {WINDOW} records, nothing to evaluate")
    profiles = {link.profile for link in links}
    label = next(iter(profiles)) if len(profiles) == 1 and None not in profiles else "data"
    return out, label


def _rule_actions(
    windows: np.ndarray, reference: np.ndarray, ewma_rule: EwmaRule | None, quantile_rule: QuantileRuleArg | None
) -> dict[str, np.ndarray]:
    """The actions of each given rule for one episode's decision windows (name -> (n,) actions)."""
    out: dict[str, np.ndarray] = {}
    if ewma_rule is not None:
        out["ewma_rule"] = ewma_rule.actions(windows)
    if quantile_rule is not None:
        rule, qfn = quantile_rule
        out["quantile_rule"] = quantile_rule_actions(qfn(windows, rule.tau), reference)
    return out


def evaluate_series(
    series: Sequence[np.ndarray],
    forecaster: Forecaster,
    policy: PolicyFn | None,
    *,
    ewma_rule: EwmaRule | None = None,
    quantile_rule: QuantileRuleArg | None = None,
) -> dict[str, Any]:
    """Mean rewards of ``policy`` (optional), the tuned rules (optional) and every baseline on the same episodes.

    ``ewma_rule``: a tuned :class:`~ml.policy.rules.EwmaRule`; ``quantile_rule``: a tuned
    :class:`~ml.policy.rules.QuantileRule` with the forecaster's ``quantile_fn(windows, tau)``.
    Their parameters must come from training data: this function scores, it never tunes.
    Besides the mean rewards and normalized scores it reports the action histogram of every
    scored policy (``action_histogram``/``collapsed`` for the DDQN, inside ``ewma_rule``/
    ``quantile_rule`` for the rules): a policy that always picks one level has collapsed.
    """
    names = (["ddqn"] if policy is not None else []) + (["ewma_rule"] if ewma_rule is not None else [])
    names += ["quantile_rule"] if quantile_rule is not None else []
    sums = dict.fromkeys(names, 0.0)
    hists = {k: np.zeros(N_ACTIONS, np.int64) for k in names}
    datas: list[SeriesData] = []
    for s in series:
        d = precompute(s, forecaster)
        datas.append(d)
        if not names:
            continue
        n = d.n_steps
        windows = all_windows(s)[:n]  # (n, 10, 4): the decision windows
        acts = _rule_actions(windows, d.reference[:n], ewma_rule, quantile_rule)
        if policy is not None:
            acts["ddqn"] = np.asarray(policy(windows, d.obs[:n]), dtype=np.int64)
        for k, a in acts.items():
            sums[k] += decision_rewards(d, a).sum()
            hists[k] += action_histogram(a)
    base = baseline_rewards(datas)  # raises DataError when there is no decision at all
    steps = int(sum(d.n_steps for d in datas))
    scored = {k: float(sums[k] / steps) for k in names}
    mean = {
        "ddqn": scored.get("ddqn"),
        "fixed_50": base["fixed_50"],
        "best_fixed": base["best_fixed"],
        "predict_then_allocate": base["predict_then_allocate"],
        "oracle": base["oracle"],
        "ewma_rule": scored.get("ewma_rule"),
        "quantile_rule": scored.get("quantile_rule"),
    }
    out: dict[str, Any] = {
        "episodes": len(datas),
        "decisions": steps,
        "mean_reward": mean,
        "best_fixed_pct": base["best_fixed_pct"],
        "fixed": {k: v for k, v in base.items() if k.startswith("fixed_")},
    }
    for key in ("ddqn", "predict_then_allocate", "ewma_rule", "quantile_rule"):
        # "normalized_score" alone is the DDQN's (the historical key)
        name = "normalized_score" if key == "ddqn" else f"normalized_score_{key}"
        out[name] = normalized_score(mean[key], mean["fixed_50"], mean["oracle"])
    hist = hists.get("ddqn")
    out["action_histogram"] = hist.tolist() if hist is not None else None
    out["collapsed"] = is_collapsed(hist) if hist is not None else None
    out["ewma_rule"] = {**ewma_rule.to_json(), "action_histogram": hists["ewma_rule"].tolist()} if ewma_rule else None
    out["quantile_rule"] = (
        {**quantile_rule[0].to_json(), "action_histogram": hists["quantile_rule"].tolist()} if quantile_rule else None
    )
    return out


def normalized_score(r: float | None, r_fixed50: float, r_oracle: float) -> float | None:
    """``(r - R_fixed50) / (R_oracle - R_fixed50)``; None when undefined."""
    if r is None or r_oracle - r_fixed50 <= 1e-12:
        return None
    return float((r - r_fixed50) / (r_oracle - r_fixed50))


def qnet_policy(qnet: Any) -> PolicyFn:
    """Greedy policy of a Keras Q-network on precomputed observations."""
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    fn = tf.function(lambda x: tf.argmax(qnet(x, training=False), axis=1), reduce_retracing=True)

    def policy(windows: np.ndarray, obs: np.ndarray) -> np.ndarray:
        return fn(tf.constant(obs, tf.float32)).numpy()

    return policy


def predictor_policy(
    predictor: Any, profile: str | None = None, layout: str | None = None
) -> tuple[Forecaster, PolicyFn]:
    """Forecaster and policy of a loaded ``ml.serving.predictor.Predictor`` (the serving path), with
    ``profile``'s calibration, fallback and policy choice (None: the all-profiles ones), as in the worker.

    The forecaster gives what the serving graph feeds an observation of ``layout`` (default: the
    model's; ``Predictor.policy_forecast``: (N,) or, for the quantiles layout, (N, 3)), so
    :func:`qnet_policy` on its observations scores the Q-network alone. :func:`evaluate_series`
    calls the forecaster on a series' windows, then the policy on their first ``n``: the policy
    reuses that prediction's actions (same windows, checked) instead of predicting twice.
    """
    last: list[Any] = []  # [windows, actions] of the latest forecaster call
    lay = layout or getattr(predictor, "observation", "point")

    def profiles(windows: np.ndarray) -> list[str | None] | None:
        return None if profile is None else [profile] * len(windows)

    def predict(windows: np.ndarray) -> Any:
        p = profiles(windows)
        return predictor.predict(windows) if p is None else predictor.predict(windows, p)

    def forecaster(windows: np.ndarray) -> np.ndarray:
        pred = predict(windows)
        last[:] = [windows, np.asarray(pred.action)]
        if lay != "quantiles":
            return np.asarray(pred.bandwidth_mbps)
        return predictor.policy_forecast(windows, profiles(windows), lay, pred=pred)

    def policy(windows: np.ndarray, obs: np.ndarray) -> np.ndarray:
        if last and len(windows) <= len(last[0]) and np.array_equal(windows, last[0][: len(windows)]):
            return last[1][: len(windows)]
        return np.asarray(predict(windows).action)

    return forecaster, policy


def links_policy_reward(predictor: Any, links: Sequence[LinkSeries]) -> dict[str, Any]:
    """Mean reward of ``predictor``'s served allocations on held-out ``links`` (``bwp retrain``'s gate).

    Each link is one episode of :func:`evaluate_series` with :func:`predictor_policy` of its
    profile; every state with a next state is a decision. Returns ``mean_reward`` (None when no
    link has ``WINDOW + 1`` states), ``decisions``, ``fixed_50_mean_reward``,
    ``oracle_mean_reward`` and the same per profile in ``by_profile`` (profile None: ``"unknown"``).
    """
    groups: dict[str | None, list[np.ndarray]] = {}
    for link in links:
        if link.steps > WINDOW:
            groups.setdefault(link.profile, []).append(link.data)
    by_profile: dict[str, dict[str, Any]] = {}
    for profile, series in sorted(groups.items(), key=lambda kv: str(kv[0])):
        forecaster, policy = predictor_policy(predictor, profile)
        res = evaluate_series(series, forecaster, policy)
        m = res["mean_reward"]
        by_profile[profile or "unknown"] = {
            "decisions": res["decisions"],
            "mean_reward": m["ddqn"],
            "fixed_50_mean_reward": m["fixed_50"],
            "oracle_mean_reward": m["oracle"],
        }
    n = sum(v["decisions"] for v in by_profile.values())

    def mean(key: str) -> float | None:
        return float(sum(v[key] * v["decisions"] for v in by_profile.values()) / n) if n else None

    return {
        "decisions": n,
        "mean_reward": mean("mean_reward"),
        "fixed_50_mean_reward": mean("fixed_50_mean_reward"),
        "oracle_mean_reward": mean("oracle_mean_reward"),
        "by_profile": by_profile,
    }


def load_qnet(path: Path | str) -> Any:
    """A Q-network saved as ``.keras`` (safe mode)."""
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"Q-network file {p} does not exist")
    try:
        return keras.models.load_model(p, safe_mode=True, compile=False)
    except Exception as exc:
        raise ModelError(f"{p}: not a loadable .keras Q-network ({exc})") from exc


__all__ = [
    "baseline_rewards",
    "decision_rewards",
    "evaluate_series",
    "heldout_series",
    "last_value_forecast",
    "links_policy_reward",
    "normalized_score",
    "predict_then_allocate_actions",
    "series_from_jsonl",
    "tuning_series",
]
