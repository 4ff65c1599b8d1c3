"""Policy baselines and ``bwp evaluate-policy``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml.policy.env import TRAIN_SEED_LIMIT, precompute
from ml.policy.evaluation import (
    baseline_rewards,
    decision_rewards,
    evaluate_series,
    heldout_seed,
    normalized_score,
    predict_then_allocate_actions,
    series_from_jsonl,
)
from ml.policy.observation import last_value_forecast
from ml.policy.rules import ALPHA_GRID, K_GRID, EwmaRule, QuantileRule, decision_data, tune_ewma_rule
from stream.core.records import Telemetry
from tests.helpers.policy import synthetic_series, tiny_registry


def test_predict_then_allocate_hand_computed() -> None:
    ref = np.full(4, 100.0)
    forecast = np.array([80.0, 80.0, 60.0, 90.0])
    actual = np.array([100.0, 40.0, 60.0, 90.0])
    a = predict_then_allocate_actions(forecast, actual, ref, lookback=2)
    # step 0: no history -> 80 -> 80 % (action 7)
    # step 1: errors {0.2} -> 80 / 1.2 = 66.7 -> 60 % (5)
    # step 2: errors {0.2, 1.0} -> 60 / 2 = 30 -> 30 % (2)
    # step 3: errors {1.0, 0.0} -> 90 / 2 = 45 -> 40 % (3)
    assert a.tolist() == [7, 5, 2, 3]
    # an outage after a positive forecast makes the next allocations minimal
    a = predict_then_allocate_actions(np.array([50.0, 50.0]), np.array([0.0, 50.0]), np.full(2, 100.0))
    assert a.tolist() == [4, 0]


def test_baselines_are_ordered_and_consistent() -> None:
    datas = [precompute(synthetic_series(150, s), last_value_forecast) for s in range(3)]
    b = baseline_rewards(datas)
    assert b["oracle"] >= b["best_fixed"] >= b["fixed_50"]
    assert b["oracle"] >= b["predict_then_allocate"]
    assert b["best_fixed"] == max(b[f"fixed_{p}"] for p in range(10, 101, 10))
    # fixed 50 % by hand
    manual = np.concatenate([decision_rewards(d, np.full(d.n_steps, 4)) for d in datas]).mean()
    assert b["fixed_50"] == pytest.approx(manual)


def test_normalized_score() -> None:
    assert normalized_score(0.9, 0.5, 0.9) == pytest.approx(1.0)
    assert normalized_score(0.5, 0.5, 0.9) == pytest.approx(0.0)
    assert normalized_score(None, 0.5, 0.9) is None
    assert normalized_score(0.7, 0.5, 0.5) is None


def test_heldout_seeds_are_never_training_seeds() -> None:
    from ml.data import is_training_seed

    for s in range(50):
        assert heldout_seed(s) >= TRAIN_SEED_LIMIT
        assert not is_training_seed(heldout_seed(s))


def test_evaluate_series_with_an_oracle_like_policy() -> None:
    series = [synthetic_series(80, s) for s in range(2)]
    datas = [precompute(s, last_value_forecast) for s in series]
    oracle_actions = iter([np.argmax(d.rewards[: d.n_steps], axis=1) for d in datas])
    res = evaluate_series(series, last_value_forecast, lambda w, o: next(oracle_actions))
    assert res["mean_reward"]["ddqn"] == pytest.approx(res["mean_reward"]["oracle"])
    assert res["normalized_score"] == pytest.approx(1.0)
    assert res["decisions"] == 2 * 70


def test_evaluate_series_reports_the_rules_and_the_action_histogram() -> None:
    series = [synthetic_series(80, s) for s in range(3)]
    rule = EwmaRule(alpha=0.5, k=0.9)
    qrule = QuantileRule(tau=0.2)

    def qfn(windows: np.ndarray, tau: float) -> np.ndarray:
        return windows[:, -1, 1] * (0.5 + tau)

    res = evaluate_series(
        series, last_value_forecast, lambda w, o: np.full(len(w), 4), ewma_rule=rule, quantile_rule=(qrule, qfn)
    )
    windows, rewards = decision_data(series)  # the same decisions, concatenated
    idx = np.arange(len(windows))
    m = res["mean_reward"]
    assert m["ewma_rule"] == pytest.approx(rewards[idx, rule.actions(windows)].mean())
    assert m["quantile_rule"] == pytest.approx(rewards[idx, qrule.actions(windows, qfn)].mean())
    assert m["ddqn"] == pytest.approx(m["fixed_50"])  # the "policy" always allocates 50 %
    assert res["normalized_score_ewma_rule"] == pytest.approx(
        normalized_score(m["ewma_rule"], m["fixed_50"], m["oracle"])
    )
    assert res["normalized_score_quantile_rule"] is not None
    assert res["action_histogram"] == [0, 0, 0, 0, res["decisions"], 0, 0, 0, 0, 0] and res["collapsed"] is True
    assert sum(res["ewma_rule"]["action_histogram"]) == res["decisions"] == 3 * 70
    assert res["ewma_rule"]["alpha"] == 0.5 and res["quantile_rule"]["tau"] == 0.2
    # without a policy and rules: the keys are there, with None
    bare = evaluate_series(series, last_value_forecast, None)
    assert bare["action_histogram"] is None and bare["collapsed"] is None and bare["ewma_rule"] is None
    assert bare["mean_reward"]["ewma_rule"] is None and bare["normalized_score_ewma_rule"] is None
    assert bare["mean_reward"]["oracle"] == m["oracle"]


def test_tuned_ewma_rule_beats_fixed_50_on_heldout_episodes() -> None:
    from ml.policy.evaluation import heldout_series, tuning_series

    train, label = tuning_series("internet", 0, links=16, steps=400)
    assert "seed=1" in label
    rule = tune_ewma_rule(train)
    res = evaluate_series(heldout_series("internet", 8, 0, 150), last_value_forecast, None, ewma_rule=rule)
    assert res["mean_reward"]["ewma_rule"] > res["mean_reward"]["fixed_50"]
    assert res["mean_reward"]["ewma_rule"] > res["mean_reward"]["predict_then_allocate"]


def test_cli_rules_from_model_metadata_and_quantile_forecaster() -> None:
    import argparse

    from stream.cli.policy import _rules

    class FakePredictor:
        metadata = {
            "policy": {
                "ewma_rule": EwmaRule(0.7, 0.85, 0.8).to_json(),
                "quantile_rule": QuantileRule(0.15, 0.81).to_json(),
            }
        }

        def quantile(self, windows: np.ndarray, tau: float, profiles=None) -> np.ndarray:
            return windows[:, -1, 1] * tau

    notes: list[str] = []
    args = argparse.Namespace(profile="internet", seed=0)
    ewma_rule, (qrule, qfn), sources = _rules(args, FakePredictor(), "internet", notes)
    assert ewma_rule == EwmaRule(0.7, 0.85, 0.8) and qrule == QuantileRule(0.15, 0.81)
    assert sources == {"ewma_rule": "model metadata", "quantile_rule": "model metadata"} and notes == []

    class NoPolicyMeta(FakePredictor):
        metadata = {"ewma_alpha": 0.5}

    ewma_rule, (qrule, _), sources = _rules(args, NoPolicyMeta(), "data", notes)  # files: args.profile
    assert sources["ewma_rule"] == sources["quantile_rule"] and "simulator:internet:seed=1:" in sources["ewma_rule"]
    assert ewma_rule.alpha in ALPHA_GRID and qrule.tau is not None and len(notes) == 2

    class PointModelMeta(FakePredictor):  # what `bwp train --head point` writes: quantile_rule null
        metadata = {"policy": {"ewma_rule": EwmaRule(0.7, 0.85, 0.8).to_json(), "quantile_rule": None}}

    notes.clear()
    ewma_rule, (qrule, _), sources = _rules(args, PointModelMeta(), "internet", notes)
    assert sources["ewma_rule"] == "model metadata" and "simulator:internet" in sources["quantile_rule"]


def test_series_from_jsonl(tmp_path: Path) -> None:
    from stream.core.jsonl import write_jsonl

    recs = []
    for link in ("a", "b"):
        s = synthetic_series(40, 1 if link == "a" else 2)
        for i in reversed(range(40)):  # out of order on purpose: sorted by seq
            lat, bw, loss, rel = s[i]
            recs.append(Telemetry(link, i, 1000 * i, lat, bw, loss, rel, profile="internet"))
    write_jsonl(tmp_path / "t.jsonl", recs)
    series, label = series_from_jsonl([tmp_path / "t.jsonl"], episode_len=20)
    assert label == "internet"
    assert [s.shape[0] for s in series] == [30, 20, 30, 20]  # per link: 20 + 10 decisions
    np.testing.assert_allclose(series[0][:, 1], synthetic_series(40, 1)[:30, 1])


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> dict:
    from stream.cli.main import main

    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_evaluate_policy_with_qnet_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ml.policy.observation import OBS_DIM
    from ml.policy.qnet import build_qnetwork

    build_qnetwork(OBS_DIM, seed=0).save(tmp_path / "q.keras")
    out = _run_cli(
        [
            "evaluate-policy",
            "--profile",
            "internet",
            "--episodes",
            "2",
            "--episode-len",
            "30",
            "--seed",
            "3",
            "--qnet",
            str(tmp_path / "q.keras"),
            "--model-dir",
            str(tmp_path / "empty"),
            "--json",
        ],
        capsys,
    )
    assert out["profile"] == "internet" and out["episodes"] == 2 and out["decisions"] == 60
    assert set(out["mean_reward"]) == {
        "ddqn",
        "fixed_50",
        "best_fixed",
        "predict_then_allocate",
        "oracle",
        "ewma_rule",
        "quantile_rule",
    }
    assert out["mean_reward"]["quantile_rule"] is None and out["quantile_rule"] is None  # no quantile forecaster
    assert all(-1 <= v <= 1 for v in out["mean_reward"].values() if v is not None)
    # no model metadata: the EWMA rule is tuned on the training-seed links, never on the evaluated ones
    assert out["ewma_rule"]["tuned_on"].startswith("simulator:internet:seed=3001:")
    assert out["ewma_rule"]["alpha"] in ALPHA_GRID and out["ewma_rule"]["k"] in K_GRID
    assert any("tuned on" in n for n in out["notes"]) and any("quantile_rule: omitted" in n for n in out["notes"])
    assert sum(out["action_histogram"]) == out["decisions"] == sum(out["ewma_rule"]["action_histogram"])
    m = out["mean_reward"]
    assert out["normalized_score"] == pytest.approx((m["ddqn"] - m["fixed_50"]) / (m["oracle"] - m["fixed_50"]))
    assert out["forecaster"] == "last_value" and out["source"]["simulator_seed"] == heldout_seed(3)


def test_cli_evaluate_policy_from_registry_on_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from stream.core.jsonl import write_jsonl

    version, _ = tiny_registry(tmp_path / "models")
    s = synthetic_series(60, 7)
    write_jsonl(tmp_path / "t.jsonl", [Telemetry("x", i, i, *s[i]) for i in range(60)])
    out = _run_cli(
        [
            "evaluate-policy",
            "--data",
            str(tmp_path / "t.jsonl"),
            "--episode-len",
            "25",
            "--model-dir",
            str(tmp_path / "models"),
            "--json",
        ],
        capsys,
    )
    assert out["model"] == version and out["forecaster"] == f"lstm:{version}"
    assert out["profile"] == "data" and out["episodes"] == 2 and out["decisions"] == 50
    assert out["mean_reward"]["oracle"] >= out["mean_reward"]["ddqn"]
