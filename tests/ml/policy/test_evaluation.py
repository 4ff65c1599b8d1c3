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
    assert set(out["mean_reward"]) == {"ddqn", "fixed_50", "best_fixed", "predict_then_allocate", "oracle"}
    assert all(-1 <= v <= 1 for v in out["mean_reward"].values())
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
