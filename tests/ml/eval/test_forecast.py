"""Forecast metrics and the evaluation report, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.data import LinkSeries, split_links, windows_of
from ml.eval.forecast import METRICS, PREDICTORS, forecasts_for_links, mape_floor, report, score
from stream.core.errors import DataError


def test_score_hand_computed():
    y = np.array([100.0, 200.0, 50.0, 10.0])
    p = np.array([101.0, 180.0, 50.0, 12.0])
    s = score(y, p, floor=0.01)
    assert s["mae"] == pytest.approx((1 + 20 + 0 + 2) / 4)
    assert s["rmse"] == pytest.approx(math.sqrt((1 + 400 + 0 + 4) / 4))
    assert s["mape"] == pytest.approx(100 * (0.01 + 0.1 + 0 + 0.2) / 4)
    assert s["smape"] == pytest.approx(100 * np.mean([2 / 201, 40 / 380, 0, 4 / 22]))
    assert s["within_2pct"] == pytest.approx(2 / 4)  # 1% and 0% errors
    assert s["within_10pct"] == pytest.approx(3 / 4)  # 10% counts (<=)
    assert s["mape_excluded"] == 0


def test_mape_excludes_targets_below_the_floor_and_counts_them():
    y = np.array([0.0, 0.005, 10.0])
    p = np.array([1.0, 1.0, 11.0])
    s = score(y, p, floor=0.01)
    assert s["mape"] == pytest.approx(10.0)  # only the 10 Mbit/s target counts
    assert s["mape_excluded"] == 2
    assert np.isfinite(s["smape"]) and s["within_2pct"] == 0.0
    # per-target floors: 1 % of each link's median
    s2 = score(y, p, floor=np.array([0.001, 0.001, 20.0]))
    assert s2["mape_excluded"] == 2
    assert s2["mape"] == pytest.approx(100 * 0.995 / 0.005)


def test_mape_floor_is_max_of_absolute_and_relative_to_link_median():
    links = [
        LinkSeries("a", None, np.ones((12, 4)) * [1, 500.0, 0, 1]),
        LinkSeries("b", None, np.ones((12, 4)) * [1, 0.5, 0, 1]),
    ]
    f = mape_floor(links, np.array([0, 1]))
    assert f.tolist() == [5.0, 0.01]


def test_score_empty_and_shape_mismatch():
    s = score(np.zeros(0), np.zeros(0))
    assert all(math.isnan(s[m]) for m in METRICS)
    with pytest.raises(ValueError, match="same length"):
        score(np.zeros(3), np.zeros(2))


def _links(n: int, t: int = 40) -> list[LinkSeries]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        d = np.ones((t, 4))
        d[:, 1] = 10.0 * (i + 1) + rng.normal(0, 1, t)
        out.append(LinkSeries(f"l{i}", "datacenter" if i % 2 else "internet", d))
    return out


def test_report_scores_every_state_after_the_first_window_by_profile():
    links = _links(4, t=40)
    fc = forecasts_for_links(lambda w: w[:, -1, 1] * 1.0, links, ewma_alpha=0.5)
    assert len(fc["y_true"]) == 4 * (40 - 10)
    rep = report(fc)
    assert rep["n"] == 120
    assert set(rep["predictors"]) == set(PREDICTORS)
    assert set(rep["predictors"]["lstm"]) == set(METRICS)
    # the stand-in "LSTM" here is the last value, so the two must score the same
    assert rep["predictors"]["lstm"] == rep["predictors"]["last_value"]
    assert set(rep["by_profile"]) == {"datacenter", "internet"}
    assert rep["by_profile"]["internet"]["n"] == 60
    assert set(rep["by_profile"]["internet"]["predictors"]) == set(PREDICTORS)


def test_split_links_is_by_whole_link_and_seeded():
    links = _links(10)
    a = split_links(links, (0.7, 0.15, 0.15), seed=3)
    b = split_links(links, (0.7, 0.15, 0.15), seed=3)
    assert [[x.link_id for x in g] for g in a] == [[x.link_id for x in g] for g in b]
    ids = [x.link_id for g in a for x in g]
    assert sorted(ids) == sorted(x.link_id for x in links) and len(set(ids)) == 10
    assert [len(g) for g in a] == [7, 2, 1] or [len(g) for g in a] == [7, 1, 2]
    tiny = split_links(links[:3], (0.7, 0.15, 0.15), seed=0)
    assert [len(g) for g in tiny] == [1, 1, 1]
    _, _, idx = windows_of(a[0])
    assert len(set(idx.tolist())) == 7


@pytest.mark.traces
def test_real_trace_split_is_by_whole_trace(traces_root):
    from ml.data import trace_links

    links = [ls for ls in trace_links("5gophers-umn", traces_root) if ls.steps > 10]
    train_val, test = split_links(links, (0.7, 0.3), 0)
    train, val = split_links(train_val, (0.85, 0.15), 1)
    ids = [{ls.link_id for ls in g} for g in (train, val, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == len(links) and abs(len(test) / len(links) - 0.3) < 0.02
    w, y, _ = windows_of(test)
    assert len(y) == sum(ls.steps - 10 for ls in test) and np.isfinite(w).all()


@pytest.mark.slow
@pytest.mark.traces
def test_evaluate_traces_quick_on_one_dataset(traces_root):
    from ml.eval.traces import evaluate_traces, format_traces

    res = evaluate_traces(["5gophers-umn"], quick=True, seed=0, root=traces_root, progress=lambda s: None)
    rep = res["datasets"]["5gophers-umn"]
    from ml.data import trace_links

    steps = {ls.link_id: ls.steps for ls in trace_links("5gophers-umn", traces_root)}
    assert rep["traces"]["test"] == len(rep["test_traces"]) > 0
    assert rep["n"] == sum(steps[t] - 10 for t in rep["test_traces"])  # every state after the first window
    assert set(rep["predictors"]) == set(PREDICTORS) | {"served"}  # h = 1 point block, as before
    assert np.isfinite(rep["predictors"]["lstm"]["mae"]) and rep["best_baseline"] in PREDICTORS[1:]
    assert "5gophers-umn" in format_traces(res)
    # the probabilistic blocks: every horizon, every predictor, scores in range
    assert set(rep["horizons"]) == {"1", "10", "60"}
    h1 = rep["horizons"]["1"]
    assert h1["n"] == rep["n"]  # h = 1 scores the same states as the point block
    assert set(h1["predictors"]) == {"lstm", "served", "last_value", "ewma", "moving_average"}
    for m in h1["predictors"].values():
        assert m["pinball"] > 0 and m["wis"] > 0 and 0 <= m["coverage"]["0.1"] <= m["coverage"]["0.9"] <= 1
    assert h1["predictors"]["served"]["mae"] == pytest.approx(rep["predictors"]["served"]["mae"])
    assert rep["horizons"]["60"]["n"] < rep["horizons"]["10"]["n"] <= rep["n"]  # long horizons need the future
    assert abs(sum(rep["forecast_sources"]["1"].values()) - 1.0) < 1e-3


def test_training_sets_never_train_a_leave_one_out_model_on_its_dataset():
    from ml.eval.traces import training_sets

    names = ["a", "b", "c"]
    assert training_sets("per-dataset", names) == {"a": ["a"], "b": ["b"], "c": ["c"]}
    assert all(v == names for v in training_sets("pooled", names).values())
    loo = training_sets("leave-one-out", names)
    for held_out, trained_on in loo.items():
        assert held_out not in trained_on and sorted(trained_on + [held_out]) == names
    with pytest.raises(DataError):
        training_sets("leave-one-out", ["a"])
    with pytest.raises(DataError):
        training_sets("fleet", names)


@pytest.mark.slow
@pytest.mark.traces
@pytest.mark.parametrize("mode", ["pooled", "leave-one-out"])
def test_evaluate_traces_pooled_and_leave_one_out_tiny(traces_root, mode):
    from ml.eval.traces import evaluate_traces

    names = ["5gophers-umn", "ucc-5g-irish"]
    res = evaluate_traces(names, quick=True, seed=0, root=traces_root, progress=lambda s: None, mode=mode,
                          context="long")  # fmt: skip
    assert res["mode"] == mode and set(res["datasets"]) == set(names)
    for name, rep in res["datasets"].items():
        if mode == "leave-one-out":
            assert rep["trained_on"] == [n for n in names if n != name]
            assert res["models"][f"all but {name}"]["trained_on"] == rep["trained_on"]
        else:
            assert rep["trained_on"] == names
        h10 = rep["horizons"]["10"]["predictors"]
        assert {"served", "lstm", "ewma", "ewma@dataset"} <= set(h10)  # the dataset's own naive fit too
        s = rep["summary"]["10"]
        assert s["served_pinball_ratio"] is not None and s["served_pinball_ratio"] > 0
        assert s["best_naive_pinball"].split("@")[0] in ("last_value", "ewma", "moving_average")
    assert len(res["models"]) == (1 if mode == "pooled" else 2)
