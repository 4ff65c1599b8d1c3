"""``bwp evaluate-compression`` on a small slice of a real trace, and its arithmetic on hand-made states."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.data import LinkSeries
from ml.eval.compression import evaluate_compression, evaluate_states, states_of
from stream.cli.main import main
from stream.core.compression import CompressionProfile, LevelProfile, default_profile
from stream.core.records import BW, WINDOW

PROFILE = CompressionProfile((LevelProfile(1, 100.0, 0.5),), chunk_bytes=1_000_000)  # level 1 wins below 800 Mbit/s


def test_states_are_the_window_ewma_and_the_next_horizon_mean():
    data = np.zeros((WINDOW + 3, 4))
    data[:, BW] = np.arange(WINDOW + 3, dtype=float)
    fc, real = states_of([LinkSeries("l", None, data)], horizon=2, alpha=1.0)  # alpha 1: the last value
    assert fc.tolist() == [9.0, 10.0] and real.tolist() == [10.5, 11.5]


def test_hint_oracle_and_fixed_levels_on_known_states():
    fc = np.array([8.0, 8000.0, 8.0, 1.0])
    real = np.array([8.0, 8000.0, 8000.0, 0.0])  # third: forecast wrong; fourth: an outage, left out
    res = evaluate_states(fc, real, PROFILE)
    assert res["states"] == 3 and res["outage_states_left_out"] == 1
    t = {"none": [1.0, 0.001, 0.001], "zstd-1": [0.5, 0.01, 0.01]}  # seconds, from the formula by hand
    assert res["mean_s"]["none"] == pytest.approx(np.mean(t["none"]))
    assert res["mean_s"]["zstd-1"] == pytest.approx(np.mean(t["zstd-1"]))
    assert res["mean_s"]["hint"] == pytest.approx(np.mean([0.5, 0.001, 0.01]))
    assert res["mean_s"]["oracle"] == pytest.approx(np.mean([0.5, 0.001, 0.001]))
    assert res["hint_levels"] == {"none": 1, "zstd-1": 2} and res["best_fixed"] == "zstd-1"
    assert res["state_over_oracle"]["hint"] == pytest.approx(np.mean([1.0, 1.0, 10.0]))
    assert res["state_over_oracle"]["oracle"] == pytest.approx(1.0)


def test_real_trace_slice(traces_root, capsys):
    res = evaluate_compression(default_profile(), ["norway-hsdpa-3g"], traces_root, horizon=10, max_links=3)
    d = res["datasets"]["norway-hsdpa-3g"]
    assert d["links"] == 3 and d["states"] > 100
    m = d["mean_s"]
    fixed = [v for k, v in m.items() if k not in ("hint", "oracle")]
    assert m["oracle"] <= min(fixed) + 1e-12 and m["oracle"] <= m["hint"] + 1e-12
    assert main(["evaluate-compression", "--datasets", "norway-hsdpa-3g", "--traces-root", str(traces_root),
                 "--max-links", "2", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["datasets"]["norway-hsdpa-3g"]["links"] == 2 and out["horizon"] == 10
    assert main(["evaluate-compression", "--alpha", "0"]) == 2
    assert "--alpha in (0, 1]" in capsys.readouterr().err
