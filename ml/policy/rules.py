"""Tuned allocation rules: the strong, cheap baselines the DDQN has to beat (numpy only).

Two rules, both snapped down to the 10 % action grid with ``ml.policy.observation.snap_down``
(so, like every policy here, the floor is action 0 = 10 % and an all-outage window, whose
reference is 0 and whose every action allocates 0 Mbit/s, maps to action 9):

* **EWMA rule** ``(alpha, k)``: allocate ``k * EWMA_alpha(window bandwidth)``. ``k < 1`` is a safety
  margin; because over-allocation costs 4x as much as idle capacity (``ml.policy.reward``) the
  best ``k`` on noisy links is clearly below 1.
* **Quantile rule** ``tau``: allocate the forecaster's calibrated ``tau``-quantile of the next
  bandwidth (the forecaster provides ``quantile_fn(windows, tau)``).

Both are tuned by grid search on *training* series only (:func:`tune_ewma_rule`,
:func:`tune_quantile_rule`): the parameters with the best mean reward there. The rewards of all
10 actions of every decision are computed once, so scoring one parameter setting is a gather.

This module imports nothing but numpy, the numpy-only ``ml.policy`` modules (observation,
reward) and ``ml.smoothing.ewma_weights`` (the EWMA ``ml.forecast.baselines`` uses too), so
serving code may use the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.policy.observation import ACTION_SHARES, reference_bandwidth, snap_down
from ml.policy.reward import reward
from ml.smoothing import ewma_weights
from stream.core.records import BW, FEATURES, N_ACTIONS, WINDOW

#: (windows (N, 10, 4), tau) -> the tau-quantile of the next bandwidth, Mbit/s (N,)
QuantileFn = Callable[[np.ndarray, float], np.ndarray]

ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 2) for i in range(1, 11))  # 0.1 .. 1.0
K_GRID: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(15))  # 0.5 .. 1.2
TAU_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 11))  # 0.05 .. 0.5
#: A policy whose most frequent action takes at least this share of its decisions has collapsed.
COLLAPSE_SHARE = 0.95


@dataclass(frozen=True)
class EwmaRule:
    """Allocate ``k * EWMA_alpha(bandwidth)``; ``train_reward`` = its mean reward on the tuning series."""

    alpha: float
    k: float
    train_reward: float | None = None

    def actions(self, windows: np.ndarray) -> np.ndarray:
        """The rule's actions for ``windows`` (N, 10, 4) -> (N,) int64."""
        return ewma_rule_actions(windows, self.alpha, self.k)

    def to_json(self) -> dict[str, Any]:
        """Plain dict for model metadata (``metadata["policy"]["ewma_rule"]``)."""
        return {"alpha": self.alpha, "k": self.k, "train_reward": self.train_reward}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EwmaRule:
        """Inverse of :meth:`to_json`; extra keys (such as ``tuned_on``) are ignored."""
        tr = d.get("train_reward")
        return cls(alpha=float(d["alpha"]), k=float(d["k"]), train_reward=None if tr is None else float(tr))


@dataclass(frozen=True)
class QuantileRule:
    """Allocate the forecast ``tau``-quantile of the next bandwidth; ``train_reward`` as for EwmaRule."""

    tau: float
    train_reward: float | None = None

    def actions(self, windows: np.ndarray, quantile_fn: QuantileFn) -> np.ndarray:
        """The rule's actions for ``windows`` (N, 10, 4) with the forecaster's ``quantile_fn`` -> (N,) int64."""
        return quantile_rule_actions(quantile_fn(windows, self.tau), reference_bandwidth(windows))

    def to_json(self) -> dict[str, Any]:
        """Plain dict for model metadata (``metadata["policy"]["quantile_rule"]``)."""
        return {"tau": self.tau, "train_reward": self.train_reward}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> QuantileRule:
        """Inverse of :meth:`to_json`; extra keys are ignored."""
        tr = d.get("train_reward")
        return cls(tau=float(d["tau"]), train_reward=None if tr is None else float(tr))


def _bandwidth(windows: np.ndarray) -> np.ndarray:
    """The (N, 10) bandwidth of ``windows`` (N, 10, 4), negatives as 0 (like every forecaster)."""
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 3 or w.shape[1:] != (WINDOW, len(FEATURES)):
        raise ValueError(f"windows must be (N, {WINDOW}, {len(FEATURES)}), got {w.shape}")
    return np.maximum(w[:, :, BW], 0.0)


def ewma_rule_actions(windows: np.ndarray, alpha: float, k: float) -> np.ndarray:
    """The largest 10 % level not above ``k * EWMA_alpha(bandwidth)`` for each window: (N, 10, 4) -> (N,) int64.

    At least action 0 (10 %), also when the EWMA is below 10 % of the peak; an all-outage window
    (reference 0) gets action 9, which allocates 0 Mbit/s like every other action (``snap_down``).
    """
    w = np.asarray(windows, dtype=np.float64)
    return snap_down(k * (_bandwidth(w) @ ewma_weights(alpha)), reference_bandwidth(w))


def quantile_rule_actions(q_next_mbps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The largest 10 % level of ``reference`` not above the quantile forecast ``q_next_mbps``: (N,), (N,) -> (N,).

    Same floor and outage convention as :func:`ewma_rule_actions`; a NaN forecast gets the floor.
    """
    q = np.asarray(q_next_mbps, dtype=np.float64).reshape(-1)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if q.shape != ref.shape:
        raise ValueError(f"q_next_mbps {q.shape} and reference {ref.shape} must have the same length")
    return snap_down(q, ref)


def action_histogram(actions: np.ndarray) -> list[int]:
    """How often each of the 10 actions was chosen (a list of N_ACTIONS ints)."""
    a = np.asarray(actions, dtype=np.int64).reshape(-1)
    return [int(c) for c in np.bincount(a, minlength=N_ACTIONS)[:N_ACTIONS]]


def is_collapsed(histogram: Sequence[int], share: float = COLLAPSE_SHARE) -> bool:
    """True when one action takes at least ``share`` of the decisions (False when there are none)."""
    h = np.asarray(histogram, dtype=np.float64)
    total = h.sum()
    return bool(total > 0 and h.max() >= share * total)


def decision_data(series: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every decision of ``series`` (each (T, 4), FEATURES order): its window and the reward of each action.

    Returns ``windows`` (N, 10, 4) and ``rewards`` (N, 10) with N = sum(T - 10); a series of
    <= 10 rows has no decision. Decision i of a series is window rows i..i+9, scored against row i+10.
    """
    wins: list[np.ndarray] = []
    rews: list[np.ndarray] = []
    for s in series:
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != len(FEATURES):
            raise ValueError(f"series must be (T, {len(FEATURES)}), got {a.shape}")
        if a.shape[0] <= WINDOW:
            continue
        w = np.lib.stride_tricks.sliding_window_view(a[:-1], WINDOW, axis=0).transpose(0, 2, 1)  # (T-10, 10, 4)
        nxt = np.maximum(a[WINDOW:, BW], 0.0)  # (T-10,)
        wins.append(w)
        rews.append(np.asarray(reward(ACTION_SHARES[None, :] * reference_bandwidth(w)[:, None], nxt[:, None])))
    if not wins:
        raise ValueError(f"no series has more than {WINDOW} rows: nothing to tune on")
    return np.concatenate(wins), np.concatenate(rews)


def _mean_reward(rewards: np.ndarray, actions: np.ndarray) -> float:
    return float(rewards[np.arange(rewards.shape[0]), actions].mean())


def tune_ewma_rule(
    series: Sequence[np.ndarray], alphas: Sequence[float] = ALPHA_GRID, ks: Sequence[float] = K_GRID
) -> EwmaRule:
    """The (alpha, k) of the grids with the best mean reward on ``series`` (training data only).

    Ties go to the first in grid order (smallest alpha, then smallest k). The EWMA of every
    decision is computed once per alpha (one matrix product for the whole alpha grid), so the
    k loop is a snap and a gather: about a second for 100k decisions on the default grids.
    """
    if not alphas or not ks:
        raise ValueError("alphas and ks must not be empty")
    windows, rewards = decision_data(series)
    ref = reference_bandwidth(windows)
    ew = _bandwidth(windows) @ np.stack([ewma_weights(a) for a in alphas], axis=1)  # (N, n_alpha)
    scores = np.array(
        [[_mean_reward(rewards, snap_down(k * ew[:, i], ref)) for k in ks] for i in range(len(alphas))]
    )  # (n_alpha, n_k)
    i, j = (int(v) for v in np.unravel_index(int(np.argmax(scores)), scores.shape))
    return EwmaRule(alpha=float(alphas[i]), k=float(ks[j]), train_reward=float(scores[i, j]))


def tune_quantile_rule(
    series: Sequence[np.ndarray], quantile_fn: QuantileFn, taus: Sequence[float] = TAU_GRID
) -> QuantileRule:
    """The tau of ``taus`` with the best mean reward on ``series`` (training data only; ties: first tau).

    ``quantile_fn(windows (N, 10, 4), tau) -> (N,)`` Mbit/s is called once per tau on all decisions.
    """
    if not taus:
        raise ValueError("taus must not be empty")
    windows, rewards = decision_data(series)
    ref = reference_bandwidth(windows)
    scores = [_mean_reward(rewards, quantile_rule_actions(quantile_fn(windows, float(t)), ref)) for t in taus]
    best = int(np.argmax(scores))
    return QuantileRule(tau=float(taus[best]), train_reward=float(scores[best]))


__all__ = [
    "ALPHA_GRID",
    "COLLAPSE_SHARE",
    "K_GRID",
    "TAU_GRID",
    "EwmaRule",
    "QuantileFn",
    "QuantileRule",
    "action_histogram",
    "decision_data",
    "ewma_rule_actions",
    "is_collapsed",
    "quantile_rule_actions",
    "tune_ewma_rule",
    "tune_quantile_rule",
]
