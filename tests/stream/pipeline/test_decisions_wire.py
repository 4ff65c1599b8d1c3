"""Decisions schema v1/v2/v3 from the core: what a quantile model adds, what a point model gives, and the
v3 compression hint from the core's profile and horizon."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream.core.compression import CompressionProfile, LevelProfile, choose
from stream.core.records import WINDOW, Decision, Telemetry
from stream.core.schemas import decisions_schema
from stream.pipeline.model import build_decisions, check_prediction
from tests.helpers.pipeline import LastValuePredictor, QuantileStandIn, make_record
from tests.helpers.pipeline_core import in_records, run_core

jsonschema = pytest.importorskip("jsonschema")


def _decide(settings, predictor, **kw):
    async def go(core):
        return await core.process(in_records([make_record(3, s, profile="internet") for s in range(WINDOW + 2)]))

    return run_core(settings, go, predictor, **kw).decisions


def test_quantile_model_decisions_are_v3_with_its_forecast(bwp_settings):
    pred = QuantileStandIn()
    out = _decide(bwp_settings, pred)
    assert len(out) == 3 and pred.profiles_seen[-1] == ["internet"] * 3  # the core passes each record's profile
    for d in out:
        obj = orjson.loads(d.to_bytes())
        jsonschema.validate(obj, decisions_schema(3))
        assert set(obj["forecast"]) == {"1", "10", "60"}
        f1 = obj["forecast"]["1"]
        assert f1["p50"] == pytest.approx(obj["predicted_bandwidth_mbps"])
        assert obj["safe_bandwidth_mbps"] == f1["p10"] == pytest.approx(0.8 * f1["p50"])
        assert (obj["forecast_source"], obj["policy"]) == ("ewma", "ewma_rule")
        assert Decision.from_bytes(d.to_bytes()) == d


def test_v1_setting_publishes_v1_records(bwp_settings):
    for predictor in (QuantileStandIn(), LastValuePredictor()):
        for d in _decide(bwp_settings, predictor, schema_version=1):
            obj = orjson.loads(d.to_bytes())
            jsonschema.validate(obj, decisions_schema(1))
            assert obj["schema_version"] == 1 and "forecast" not in obj


def test_v2_setting_publishes_v2_records(bwp_settings):
    for predictor in (QuantileStandIn(), LastValuePredictor()):
        for d in _decide(bwp_settings, predictor, schema_version=2):
            obj = orjson.loads(d.to_bytes())
            jsonschema.validate(obj, decisions_schema(2))
            assert obj["schema_version"] == 2 and "compression" not in obj and d.compression is None


# A profile whose thresholds sit around the stand-in's bandwidths: level 3 below 16 Mbit/s, level 1 below 80.
_PROFILE = CompressionProfile((LevelProfile(1, 20.0, 0.5), LevelProfile(3, 4.0, 0.25)))


@pytest.mark.parametrize("horizon, col", [(10, 1), (60, 2), (5, 2)])  # h=5 not forecast: the largest, 60
def test_core_fills_the_hint_from_its_profile_and_horizon(bwp_settings, horizon, col):
    class Spread(QuantileStandIn):
        def predict(self, windows, profiles=None):
            p = super().predict(windows, profiles)
            p.wire_quantiles = p.wire_quantiles * np.array([1.0, 3.0, 9.0])[None, :, None]  # h=10, 60 differ
            return p

    out = _decide(bwp_settings, Spread(), compression_profile=_PROFILE, compression_horizon=horizon)
    assert out
    for d in out:
        want = choose(d.forecast[col][2], _PROFILE)
        assert d.compression == want
        assert orjson.loads(d.to_bytes())["compression"] == want.to_dict()


def test_point_model_gives_the_degenerate_v3_form(bwp_settings):
    for d in _decide(bwp_settings, LastValuePredictor(), compression_profile=_PROFILE):
        obj = orjson.loads(d.to_bytes())
        jsonschema.validate(obj, decisions_schema(3))
        assert d.compression == choose(obj["predicted_bandwidth_mbps"], _PROFILE)  # h=1 is all there is
        p = obj["predicted_bandwidth_mbps"]
        assert obj["forecast"] == {"1": {"p10": p, "p50": p, "p90": p}} and obj["safe_bandwidth_mbps"] == p


def test_crossing_or_misshapen_quantiles_are_a_predictor_error():
    w = np.ones((2, WINDOW, 4))
    good = QuantileStandIn().predict(w)
    check_prediction(good, 2, "v")
    crossed = QuantileStandIn().predict(w)
    crossed.wire_quantiles = crossed.wire_quantiles[:, :, ::-1].copy()
    with pytest.raises(ValueError, match="non-decreasing"):
        check_prediction(crossed, 2, "v")
    short = QuantileStandIn().predict(w)
    short.wire_quantiles = short.wire_quantiles[:, :2]
    with pytest.raises(ValueError, match="wire_quantiles of shape"):
        check_prediction(short, 2, "v")


def test_build_decisions_keeps_record_order():
    recs = [Telemetry(f"l{i}", i, i, 1, 10.0 + i, 0, 1) for i in range(3)]
    pred = QuantileStandIn().predict(np.stack([np.full((WINDOW, 4), 10.0 + i) for i in range(3)]))
    out = build_decisions(recs, pred, "v", 5, 2)
    assert [(d.link_id, d.seq) for d in out] == [("l0", 0), ("l1", 1), ("l2", 2)]
    assert [d.predicted_bandwidth_mbps for d in out] == [10.0, 11.0, 12.0]
