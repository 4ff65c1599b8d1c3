"""``links_policy_reward`` (the retraining gate's policy score) and the profile-aware ``predictor_policy``."""

from __future__ import annotations

import numpy as np

from ml.data import LinkSeries
from ml.policy.evaluation import links_policy_reward, predictor_policy
from ml.policy.reward import reward
from stream.core.records import BW, WINDOW
from tests.helpers.pipeline import StandInPrediction
from tests.helpers.policy import synthetic_series


class ProfilePredictor:
    """TEST-ONLY: action 7 on datacenter windows, 3 otherwise; reference = the window's peak (as served)."""

    version = "test-profile"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, windows: np.ndarray, profiles=None) -> StandInPrediction:
        self.calls += 1
        n = len(windows)
        act = np.array([7 if p == "datacenter" else 3 for p in (profiles or [None] * n)], dtype=np.int64)
        return StandInPrediction(windows[:, -1, BW], act, np.maximum(windows[:, :, BW].max(axis=1), 0.0))


def _by_hand(pred: ProfilePredictor, links: list[LinkSeries]) -> tuple[float, int]:
    """Mean reward of the served allocation (action + 1) * 10 % of the reference vs the next state."""
    rewards = []
    for link in links:
        s = link.data
        for i in range(s.shape[0] - WINDOW):
            w = s[None, i : i + WINDOW]
            p = pred.predict(w, [link.profile])
            alloc = (p.action[0] + 1) / 10 * p.reference_bandwidth_mbps[0]
            rewards.append(float(reward(alloc, max(s[i + WINDOW, BW], 0.0))))
    return float(np.mean(rewards)), len(rewards)


def test_links_policy_reward_is_the_mean_reward_of_the_served_allocations() -> None:
    links = [
        LinkSeries("a", "datacenter", synthetic_series(60, seed=1)),
        LinkSeries("b", "internet", synthetic_series(40, seed=2)),
        LinkSeries("c", None, synthetic_series(30, seed=3)),
        LinkSeries("short", "internet", synthetic_series(WINDOW, seed=4)),  # no decision: skipped
    ]
    pred = ProfilePredictor()
    got = links_policy_reward(pred, links)
    want, n = _by_hand(ProfilePredictor(), links)
    assert got["decisions"] == n == 50 + 30 + 20
    assert np.isclose(got["mean_reward"], want, rtol=1e-9)
    assert set(got["by_profile"]) == {"datacenter", "internet", "unknown"}
    dc_want, _ = _by_hand(ProfilePredictor(), links[:1])
    assert np.isclose(got["by_profile"]["datacenter"]["mean_reward"], dc_want, rtol=1e-9)
    assert got["oracle_mean_reward"] >= got["mean_reward"]
    assert pred.calls == 3  # one predict per link: the policy reuses the forecaster's prediction


def test_no_decision_gives_no_reward() -> None:
    got = links_policy_reward(ProfilePredictor(), [LinkSeries("a", "internet", synthetic_series(WINDOW, seed=1))])
    assert got["decisions"] == 0 and got["mean_reward"] is None and got["by_profile"] == {}


def test_predictor_policy_predicts_again_for_other_windows() -> None:
    pred = ProfilePredictor()
    forecaster, policy = predictor_policy(pred, "datacenter")
    s = synthetic_series(30, seed=5)
    w = np.stack([s[i : i + WINDOW] for i in range(s.shape[0] - WINDOW + 1)])
    forecaster(w)
    assert policy(w[:-1], np.zeros((len(w) - 1, 1))).tolist() == [7] * (len(w) - 1) and pred.calls == 1
    other = w[:5] + 1.0
    assert policy(other, np.zeros((5, 1))).tolist() == [7] * 5 and pred.calls == 2
    _, plain = predictor_policy(pred)
    assert plain(w, np.zeros((len(w), 1))).tolist() == [3] * len(w)  # no profile: the all-profiles choice
