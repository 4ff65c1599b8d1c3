"""The retraining gate's policy half: the candidate's mean reward of its served allocations
must be finite and at least the current model's, on top of the forecast gate."""

from __future__ import annotations

import math

import pytest

from stream.lifecycle.gate import decide_reward, policy_reward
from stream.lifecycle.retrain import decide

NAIVE = {"last_value": 10.0, "ewma": 9.0, "moving_average": 12.0}


def qrep(served: float, reward: float | None = None) -> dict:
    """A quantile model's holdout report (pinball per horizon) with a ``policy`` block when ``reward`` is given."""
    hz = {h: {"n": 100, "predictors": {"served": {"pinball": served}, **{k: {"pinball": v} for k, v in NAIVE.items()}}}
          for h in ("1", "10")}  # fmt: skip
    rep: dict = {"predictors": {"lstm": {"mae": 5.0}, "ewma": {"mae": 6.0}}, "horizons": hz}
    if reward is not None:
        rep["policy"] = {"decisions": 500, "mean_reward": reward, "by_profile": {}}
    return rep


def point(mae: float, reward: float) -> dict:
    return {"predictors": {"lstm": {"mae": mae}, "ewma": {"mae": 9.0}}, "policy": {"mean_reward": reward}}


def test_pinball_wins_but_a_lower_reward_is_not_promoted():
    d = decide(qrep(8.0, reward=0.61), qrep(9.0, reward=0.64), 0.02)
    assert not d.promote
    assert "0.61" in d.reason and "0.64" in d.reason and "policy reward" in d.reason
    assert "pinball" not in d.reason  # the forecast half passed: only the reward is named


def test_both_win_is_promoted_and_the_reason_names_both():
    d = decide(qrep(8.0, reward=0.66), qrep(9.0, reward=0.64), 0.02)
    assert d.promote
    assert "pinball" in d.reason and "0.66" in d.reason and "0.64" in d.reason
    assert decide(qrep(8.0, reward=0.64), qrep(9.0, reward=0.64), 0.02).promote  # >=: equal is enough


def test_a_better_reward_does_not_rescue_a_losing_forecast():
    d = decide(qrep(8.9, reward=0.9), qrep(9.0, reward=0.5), 0.02)  # not 2 % better on pinball
    assert not d.promote and "current model at h=1" in d.reason and "policy reward" not in d.reason
    d = decide(qrep(8.9, reward=0.4), qrep(9.0, reward=0.5), 0.02)  # both lose: both are named
    assert not d.promote and "current model at h=1" in d.reason and "0.4" in d.reason and "0.5" in d.reason


def test_point_candidates_are_gated_on_the_reward_too():
    assert decide(point(5.0, 0.7), point(8.0, 0.6), 0.02).promote
    d = decide(point(5.0, 0.5), point(8.0, 0.6), 0.02)
    assert not d.promote and "0.5" in d.reason and "0.6" in d.reason


def test_reward_must_be_finite_and_a_missing_current_needs_no_comparison():
    assert not decide(qrep(8.0, reward=math.nan), qrep(9.0, reward=0.6), 0.02).promote
    assert not decide(qrep(8.0, reward=0.7), qrep(9.0, reward=math.nan), 0.02).promote
    rep = qrep(8.0, reward=0.7)
    rep["policy"]["mean_reward"] = None  # no decision scored on the holdout
    assert not decide(rep, None, 0.02).promote
    d = decide(qrep(8.0, reward=0.1), None, 0.02)  # no current model (or it failed to load): finite suffices
    assert d.promote and "no current model" in d.reason
    # the current model's report lacks a policy score: nothing to compare the candidate's reward with
    assert not decide(qrep(8.0, reward=0.7), qrep(9.0), 0.02).promote


def test_reports_without_a_policy_block_keep_the_forecast_gate():
    assert decide(qrep(8.0), qrep(9.0), 0.02).promote
    assert not decide(qrep(8.0), qrep(8.1), 0.02).promote


@pytest.mark.parametrize(
    ("metrics", "want"),
    [(None, None), ({}, None), ({"policy": None}, None), ({"policy": {"mean_reward": 0.5}}, 0.5),
     ({"policy": {"mean_reward": "x"}}, math.nan), ({"policy": {}}, math.nan)],
)  # fmt: skip
def test_policy_reward_reads_the_report(metrics, want):
    got = policy_reward(metrics)
    assert (got is None and want is None) or (got is not None and want is not None and (got == want or
            (math.isnan(got) and math.isnan(want))))  # fmt: skip


def test_decide_reward_alone():
    assert decide_reward(0.5, 0.5).promote
    assert not decide_reward(0.49, 0.5).promote
    assert decide_reward(0.1, None).promote
    assert not decide_reward(math.inf, None).promote
