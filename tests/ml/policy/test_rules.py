"""The tuned allocation rules (``ml.policy.rules``): actions, tuning, serialisation, histograms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.data import simulator_links, simulator_seeds
from ml.forecast.baselines import ewma
from ml.policy.env import all_windows, precompute
from ml.policy.observation import allocated_mbps, last_value_forecast, reference_bandwidth
from ml.policy.rules import (
    ALPHA_GRID,
    K_GRID,
    TAU_GRID,
    EwmaRule,
    QuantileRule,
    action_histogram,
    decision_data,
    ewma_rule_actions,
    is_collapsed,
    quantile_rule_actions,
    tune_ewma_rule,
    tune_quantile_rule,
)
from ml.smoothing import ewma_weights
from stream.core.records import BW, N_ACTIONS
from tests.helpers.policy import synthetic_series


def _windows(*bws: list[float]) -> np.ndarray:
    """(N, 10, 4) windows with the given bandwidth rows (latency 10, no loss, reliability 1)."""
    out = np.zeros((len(bws), 10, 4))
    out[:, :, 0] = 10.0
    out[:, :, 3] = 1.0
    out[:, :, BW] = np.asarray(bws, dtype=np.float64)
    return out


def _train_series(profile: str = "internet", links: int = 12, steps: int = 400) -> list[np.ndarray]:
    return [ls.data for ls in simulator_links(profile, links, steps, simulator_seeds(0)["train"])]


def empirical_quantile_fn(train: list[np.ndarray]):
    """A simple calibrated quantile forecaster: last value times the tau-quantile of the training log ratio."""
    ratios = []
    for s in train:
        bw = np.maximum(s[:, BW], 1e-9)
        ratios.append(np.log(bw[1:] / bw[:-1]))
    r = np.concatenate(ratios)

    def fn(windows: np.ndarray, tau: float) -> np.ndarray:
        return np.maximum(windows[:, -1, BW], 0.0) * np.exp(np.quantile(r, tau))

    return fn


def test_ewma_rule_actions_hand_computed() -> None:
    w = _windows(
        [100] + [60] * 9,  # EWMA(alpha 1) = last = 60 of peak 100
        [100] * 8 + [20, 20],  # alpha 0.5: 100 -> 60 -> 40
        [100] + [5] * 9,  # last value 5 % of the peak: below the lowest level
        [0] * 10,  # outage window: reference 0
        [100] * 10,  # constant at the peak
    )
    # alpha 1, k 1: 60 -> 60 % (5); 20 -> 20 % (1); 5 -> floor 10 % (0); outage -> 9 (allocates 0); 100 -> 9
    assert ewma_rule_actions(w, 1.0, 1.0).tolist() == [5, 1, 0, 9, 9]
    # k 0.9: 54 -> 50 % (4); 18 -> 10 % (0); 4.5 -> floor; 90 exactly on the grid -> 90 % (8)
    assert ewma_rule_actions(w, 1.0, 0.9).tolist() == [4, 0, 0, 9, 8]
    # alpha 0.5 on row 1: 40 -> 40 % (3); k 1.2: 48 -> 40 % (3); k 1.3: 52 -> 50 % (4)
    assert ewma_rule_actions(w[1:2], 0.5, 1.0).tolist() == [3]
    assert ewma_rule_actions(w[1:2], 0.5, 1.2).tolist() == [3]
    assert ewma_rule_actions(w[1:2], 0.5, 1.3).tolist() == [4]
    # an allocation above the peak is capped at 100 %
    assert ewma_rule_actions(w[4:5], 0.3, 1.2).tolist() == [9]
    assert ewma_rule_actions(w, 0.5, 1.0).dtype == np.int64
    with pytest.raises(ValueError):
        ewma_rule_actions(w, 0.0, 1.0)
    with pytest.raises(ValueError):
        ewma_rule_actions(w[:, :5], 0.5, 1.0)


def test_quantile_rule_actions_hand_computed() -> None:
    q = np.array([55.0, 100.0, 150.0, 5.0, 30.0, np.nan, 20.0])
    ref = np.array([100.0, 100.0, 100.0, 100.0, 0.0, 100.0, 200.0])
    # 55 -> 50 %; 100 -> 100 %; above the peak -> 100 %; 5 -> floor; ref 0 -> 9 (allocates 0); NaN -> floor; 10 %
    assert quantile_rule_actions(q, ref).tolist() == [4, 9, 9, 0, 9, 0, 0]
    with pytest.raises(ValueError):
        quantile_rule_actions(q, ref[:3])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1e5, allow_nan=False), min_size=10, max_size=10),
    st.sampled_from(ALPHA_GRID),
    st.sampled_from(K_GRID),
)
def test_ewma_rule_is_the_largest_level_not_above_k_ewma(bw: list[float], alpha: float, k: float) -> None:
    w = _windows(bw)
    target = k * ewma(w, alpha)[0]
    np.testing.assert_allclose(_windows(bw)[:, :, BW] @ ewma_weights(alpha), ewma(w, alpha), rtol=1e-12)
    a = int(ewma_rule_actions(w, alpha, k)[0])
    ref = float(reference_bandwidth(w)[0])
    assert 0 <= a < N_ACTIONS
    if ref > 0:
        tol = 1e-9 * ref
        assert a == 0 or allocated_mbps(a, ref) <= target + tol  # not above k * EWMA (unless at the floor)
        assert a == N_ACTIONS - 1 or allocated_mbps(a + 1, ref) > target - tol  # and the largest such level


def test_decision_data_matches_the_env_precompute() -> None:
    series = [synthetic_series(60, 1), synthetic_series(35, 2), synthetic_series(10, 3)]  # the last: no decision
    windows, rewards = decision_data(series)
    datas = [precompute(s, last_value_forecast) for s in series[:2]]
    np.testing.assert_array_equal(windows, np.concatenate([all_windows(s)[: d.n_steps] for s, d in zip(series, datas)]))
    np.testing.assert_allclose(rewards, np.concatenate([d.rewards[: d.n_steps] for d in datas]))
    with pytest.raises(ValueError):
        decision_data([synthetic_series(10, 0)])


def test_tuned_ewma_rule_beats_fixed_50_and_is_on_the_grid() -> None:
    series = _train_series()
    rule = tune_ewma_rule(series)
    windows, rewards = decision_data(series)
    assert rule.alpha in ALPHA_GRID and rule.k in K_GRID
    assert rule.train_reward >= rewards[:, 4].mean()  # fixed 50 %
    assert rule.train_reward >= rewards.mean(axis=0).max() - 0.02  # and about as good as the best fixed level
    # train_reward is the rule's mean reward on exactly these decisions
    acts = ewma_rule_actions(windows, rule.alpha, rule.k)
    assert rule.train_reward == pytest.approx(rewards[np.arange(len(acts)), acts].mean())


def test_tuning_is_a_grid_search_on_the_given_series_only() -> None:
    series = _train_series(links=4, steps=200)
    alphas, ks = (0.3, 1.0), (0.8, 0.9, 1.0)
    windows, rewards = decision_data(series)
    brute = {
        (a, k): rewards[np.arange(len(windows)), ewma_rule_actions(windows, a, k)].mean() for a in alphas for k in ks
    }
    best = max(brute, key=brute.get)
    rule = tune_ewma_rule(series, alphas, ks)
    assert (rule.alpha, rule.k) == best and rule.train_reward == pytest.approx(brute[best])
    np.random.seed(123)  # no hidden randomness: the same series give the same rule
    assert tune_ewma_rule(series, alphas, ks) == rule
    # other series give a rule tuned on them
    other = tune_ewma_rule([synthetic_series(300, 9, scale=50.0)], alphas, ks)
    assert other.train_reward != pytest.approx(rule.train_reward)


def test_ties_go_to_the_first_grid_point() -> None:
    # constant bandwidth at the peak: every k >= 1 allocates 100 % and scores 1 for every alpha
    s = np.stack([np.full(40, 10.0), np.full(40, 80.0), np.zeros(40), np.ones(40)], axis=1)
    assert tune_ewma_rule([s]) == EwmaRule(alpha=ALPHA_GRID[0], k=1.0, train_reward=1.0)


def test_tune_quantile_rule_with_an_empirical_quantile_forecaster() -> None:
    train = _train_series()
    fn = empirical_quantile_fn(train)
    rule = tune_quantile_rule(train, fn)
    windows, rewards = decision_data(train)
    assert rule.tau in TAU_GRID
    assert rule.train_reward >= rewards[:, 4].mean()
    # the tau is the grid's best
    for tau in TAU_GRID:
        acts = quantile_rule_actions(fn(windows, tau), reference_bandwidth(windows))
        assert rewards[np.arange(len(acts)), acts].mean() <= rule.train_reward + 1e-12
    np.testing.assert_array_equal(
        rule.actions(windows, fn), quantile_rule_actions(fn(windows, rule.tau), reference_bandwidth(windows))
    )
    with pytest.raises(ValueError):
        tune_quantile_rule(train, fn, taus=())


def test_rules_json_roundtrip() -> None:
    e = EwmaRule(alpha=0.4, k=0.85, train_reward=0.8)
    assert EwmaRule.from_json(e.to_json()) == e
    assert EwmaRule.from_json({**e.to_json(), "tuned_on": "x"}) == e  # extra keys (the CLI's) are ignored
    assert EwmaRule.from_json({"alpha": 0.4, "k": 0.85}).train_reward is None
    q = QuantileRule(tau=0.2, train_reward=None)
    assert QuantileRule.from_json(q.to_json()) == q
    with pytest.raises(KeyError):
        EwmaRule.from_json({"alpha": 0.4})


def test_action_histogram_and_collapse() -> None:
    h = action_histogram(np.array([0, 9, 9, 3]))
    assert h == [1, 0, 0, 1, 0, 0, 0, 0, 0, 2] and sum(h) == 4
    assert action_histogram(np.array([], dtype=np.int64)) == [0] * N_ACTIONS
    assert is_collapsed([0, 0, 95, 5, 0, 0, 0, 0, 0, 0])
    assert not is_collapsed([0, 0, 94, 6, 0, 0, 0, 0, 0, 0])
    assert not is_collapsed([0] * N_ACTIONS)


def test_tuning_100k_decisions_takes_seconds() -> None:
    import time

    series = _train_series("mixed", links=100, steps=1010)  # 100k decisions
    t0 = time.monotonic()
    rule = tune_ewma_rule(series)
    assert time.monotonic() - t0 < 8.0
    assert rule.alpha in ALPHA_GRID
