"""Route score, ranking order, the RouteRanking wire record and Telemetry.route_group."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.errors import TelemetryDecodeError
from stream.core.records import Telemetry
from stream.core.routes import (
    SCORE_HORIZON,
    RouteRanking,
    rank_members,
    route_score,
    score_horizon,
)
from stream.core.schemas import load_schema

SCHEMA = load_schema("routes")
TELEMETRY = load_schema("telemetry")
DLQ = load_schema("dlq")

quantile = st.floats(0.0, 1e4, allow_nan=False)


@st.composite
def forecasts(draw):
    hs = sorted({1, *draw(st.sets(st.integers(2, 120), max_size=4))})
    rows = []
    for h in hs:
        a, b, c = sorted(draw(st.tuples(quantile, quantile, quantile)))
        rows.append((h, a, b, c))
    return tuple(rows)


@given(forecasts(), st.floats(0.0, 1.0))
def test_score_is_p10_of_the_largest_horizon_up_to_10_times_delivery(fc, loss):
    score, h = route_score(fc, loss)
    below = [r for r in fc if r[0] <= SCORE_HORIZON]
    assert h == max(r[0] for r in below)  # h=1 is always there
    p10 = next(r[1] for r in fc if r[0] == h)
    assert score == pytest.approx(p10 * (1 - loss))
    assert score >= 0


def test_score_horizon_prefers_10_then_below():
    assert score_horizon(((1, 1, 1, 1), (10, 2, 2, 2), (60, 3, 3, 3))) == 10
    assert score_horizon(((1, 1, 1, 1), (5, 2, 2, 2), (60, 3, 3, 3))) == 5
    assert score_horizon(((1, 1, 1, 1),)) == 1


def _entry(link, score, lat, seq=1, ts=1_000):
    return {"link_id": link, "seq": seq, "ts_ms": ts, "latency_ms": lat, "packet_loss": 0.01, "score": score,
            "horizon": 10, "forecast": [[1, 1.0, 2.0, 3.0], [10, score, score + 1, score + 2]]}  # fmt: skip


member = st.tuples(st.floats(0, 100, allow_nan=False), st.sampled_from([1.0, 5.0, 20.0]))


@given(st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), member, min_size=1, max_size=8))
def test_ranking_order_score_desc_then_latency_then_link(members):
    rk = rank_members("g", [_entry(k, s, lat) for k, (s, lat) in members.items()], 5_000, "order")
    keys = [(-m.score, m.latency_ms, m.link_id) for m in rk.members]
    assert keys == sorted(keys)
    assert [m.rank for m in rk.members] == list(range(1, len(members) + 1))
    assert all(m.age_ms == 4_000 for m in rk.members)


def test_ties_break_on_latency_then_link_id():
    rk = rank_members("g", [_entry("b", 5.0, 10.0), _entry("a", 5.0, 10.0), _entry("c", 5.0, 1.0)], 0, "order")
    assert [m.link_id for m in rk.members] == ["c", "a", "b"]
    assert all(m.age_ms == 0 for m in rk.members)  # ts after the clock: age is clamped at 0


@given(st.lists(member, min_size=0, max_size=5), st.sampled_from(["order", "interval"]))
def test_ranking_round_trips_and_matches_its_schema(ms, reason):
    rk = rank_members("rg-1", [_entry(f"l{i}", s, lat, seq=i) for i, (s, lat) in enumerate(ms)], 10**12, reason)
    raw = rk.to_bytes()
    jsonschema.validate(json.loads(raw), SCHEMA)
    assert RouteRanking.from_bytes(raw) == rk


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(schema_version=2),
        lambda d: d.update(reason="why"),
        lambda d: d.update(route_group="has space"),
        lambda d: d.pop("score_rule"),
        lambda d: d.update(extra=1),
        lambda d: d["members"][0].update(age_ms=-1),
        lambda d: d["members"][0].update(forecast={}),
        lambda d: d["members"][0]["forecast"]["1"].pop("p50"),
    ],
)
def test_invalid_rankings_are_refused_by_schema_and_decoder(mutate):
    d = json.loads(rank_members("g", [_entry("a", 1.0, 1.0)], 2_000, "order").to_bytes())
    mutate(d)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(d, SCHEMA)
    with pytest.raises(ValueError):
        RouteRanking.from_bytes(json.dumps(d).encode())


def test_decoder_refuses_members_out_of_rank_order():
    d = json.loads(rank_members("g", [_entry("a", 1.0, 1.0), _entry("b", 2.0, 1.0)], 2_000, "order").to_bytes())
    d["members"].reverse()  # schema-valid (it cannot see order), but ranks 2, 1
    with pytest.raises(ValueError, match="ranked 1..n"):
        RouteRanking.from_bytes(json.dumps(d).encode())


def test_non_finite_member_is_refused_on_write():
    rk = rank_members("g", [_entry("a", float("nan"), 1.0)], 0, "order")
    with pytest.raises(ValueError, match="non-finite"):
        rk.to_bytes()


BASE = {"link_id": "a", "seq": 1, "ts_ms": 1, "latency_ms": 1, "bandwidth_mbps": 1, "packet_loss": 0,
        "reliability": 1}  # fmt: skip


def test_telemetry_route_group_is_optional_and_round_trips():
    t = Telemetry.from_dict(BASE)
    assert t.route_group is None and "route_group" not in t.to_dict()
    g = Telemetry.from_dict({**BASE, "route_group": "rg-0:eu.west"})
    assert g.route_group == "rg-0:eu.west"
    assert Telemetry.from_bytes(g.to_bytes()) == g
    jsonschema.validate(g.to_dict(), TELEMETRY)


@pytest.mark.parametrize(
    ("group", "code"), [("", "invalid_route_group"), ("a b", "invalid_route_group"), ("x" * 129, "invalid_route_group"),
                        (5, "wrong_type"), (["a"], "wrong_type")],
)  # fmt: skip
def test_invalid_route_group_is_a_decode_error_the_schemas_agree_with(group, code):
    with pytest.raises(TelemetryDecodeError) as e:
        Telemetry.from_dict({**BASE, "route_group": group})
    assert e.value.code == code
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**BASE, "route_group": group}, TELEMETRY)
    assert code in DLQ["properties"]["bwp-error-code"]["enum"]


@pytest.mark.parametrize(("link", "code"), [(None, "missing_field"), (3, "wrong_type"), ("a b", "invalid_link_id")])
def test_link_id_errors_keep_their_codes(link, code):
    obj = {k: v for k, v in BASE.items() if k != "link_id"} if link is None else {**BASE, "link_id": link}
    with pytest.raises(TelemetryDecodeError) as e:
        Telemetry.from_dict(obj)
    assert e.value.code == code
