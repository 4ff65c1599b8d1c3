"""``bwp evaluate-routes``: simulated grouped telemetry in, hit rates and regrets out."""

from __future__ import annotations

import json

import pytest

from simulator.generator import FleetSimulator
from stream.core.errors import DataError
from stream.core.jsonl import write_jsonl
from stream.core.records import Telemetry
from stream.lifecycle.routes_eval import evaluate_routes, format_table, route_report
from tests.helpers.pipeline import LastValuePredictor


def _simulate(path, links=12, steps=80, groups=3):
    sim = FleetSimulator("internet", links, seed=3, start_ms=0, route_groups=groups)
    write_jsonl(path, [r for _ in range(steps) for r in sim.records()])


def test_simulator_assigns_groups_round_robin_and_payloads_carry_them():
    sim = FleetSimulator("mixed", 5, seed=1, start_ms=0, route_groups=2)
    assert sim.route_groups == ["rg-0", "rg-1", "rg-0", "rg-1", "rg-0"]
    payloads = sim.payloads()
    assert [Telemetry.from_bytes(v).route_group for _, v in payloads] == sim.route_groups
    assert all(r.route_group is None for r in FleetSimulator("mixed", 2, seed=1).records())


def test_evaluate_routes_on_simulated_groups(tmp_path):
    _simulate(tmp_path / "rg.jsonl")
    rep = evaluate_routes([tmp_path / "rg.jsonl"], tmp_path, horizon=10, predictor=LastValuePredictor())
    # decisions from step 9 on; a full future of 10 states up to step 69: 61 steps per group
    assert rep["steps"] == 3 * 61 and set(rep["groups"]) == {"rg-0", "rg-1", "rg-2"}
    for block in (rep["score"], rep["last_value"]):
        assert 0.0 <= block["hit_rate"] <= 1.0
        assert block["mean_regret_mbps"] >= 0.0
        assert block["oracle_mean_mbps"] >= block["pick_mean_mbps"]
    table = format_table(rep)
    assert "rg-1" in table and "ALL" in table
    json.dumps(rep)  # JSON-ready


def test_stand_in_score_is_last_value_times_delivery(tmp_path):
    # with the last-value stand-in and no loss the score picks exactly what "best last value" picks
    recs = [Telemetry(f"l{k}", s, s, 1.0, float((k + 1) * (s % 3 + 1)), 0.0, 1.0, route_group="g")
            for s in range(40) for k in range(3)]  # fmt: skip
    from stream.lifecycle.backtest import run_pipeline

    write_jsonl(tmp_path / "t.jsonl", recs)
    decisions, _, ordered, _ = run_pipeline([tmp_path / "t.jsonl"], LastValuePredictor())
    rep = route_report(decisions, ordered, 5)
    assert rep["score"] == rep["last_value"]
    assert rep["score"]["hit_rate"] == 1.0  # l2 is always the best link


def test_no_groups_is_a_data_error(tmp_path):
    sim = FleetSimulator("internet", 3, seed=1, start_ms=0)
    write_jsonl(tmp_path / "t.jsonl", [r for _ in range(30) for r in sim.records()])
    with pytest.raises(DataError, match="route_group"):
        evaluate_routes([tmp_path / "t.jsonl"], tmp_path, predictor=LastValuePredictor())
