"""Decisions schema v2: quantile forecast records against decisions.v2.schema.json (v2 on request since v3
is the default, tests/stream/core/test_decision.py), v1 still on request, decoder checks the schema cannot
express, and BWP_DECISIONS_SCHEMA_VERSION."""

from __future__ import annotations

import dataclasses
import json
import math

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.errors import ConfigError
from stream.core.records import (
    DECISION_SCHEMA_V1,
    DECISION_SCHEMA_V2,
    FORECAST_SOURCES,
    POLICIES,
    Decision,
)
from stream.core.schemas import decisions_schema, load_schema
from stream.core.settings import Settings, load_settings

V1 = load_schema("decisions")
V2 = load_schema("decisions.v2")
V1_KEYS = ["schema_version", "link_id", "seq", "ts_ms", "predicted_bandwidth_mbps", "action", "allocation_pct",
           "reference_bandwidth_mbps", "allocated_bandwidth_mbps", "model_version", "decided_at_ms"]  # fmt: skip
V2_NEW = {"forecast", "safe_bandwidth_mbps", "forecast_source", "policy"}

mbps = st.floats(0, 1e6, allow_nan=False)
triples = st.lists(mbps, min_size=3, max_size=3).map(lambda q: tuple(sorted(q)))
horizons = st.sets(st.integers(2, 9999), max_size=4).map(lambda hs: sorted({1} | hs))


@st.composite
def forecasts(draw: st.DrawFn) -> dict[int | str, tuple[float, ...]]:
    keys = draw(horizons)
    return {draw(st.sampled_from([h, str(h)])): draw(triples) for h in keys}


def _v2(**kw) -> Decision:
    args = {"forecast": {1: (9.0, 10.0, 11.0), 10: (8.0, 10.0, 12.0), 60: (5.0, 9.5, 14.0)}, "forecast_source": "ewma",
            "schema_version": DECISION_SCHEMA_V2}  # fmt: skip
    return Decision.make("lk-1", 12, 1_000, 10.0, 4, 20.0, "m7", 1_050, "internet", **{**args, **kw})


def _raw(**changes) -> bytes:
    """A valid v2 record with top-level fields replaced (``...`` removes one)."""
    d = _v2().to_dict()
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


@given(
    link_id=st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
    seq=st.integers(0, 2**62),
    action=st.integers(0, 9),
    ref=mbps,
    fc=forecasts(),
    safe=st.none() | mbps,
    source=st.sampled_from(FORECAST_SOURCES),
    policy=st.sampled_from(POLICIES),
    profile=st.sampled_from([None, "datacenter", "internet"]),
)
def test_v2_round_trip_and_schema(link_id, seq, action, ref, fc, safe, source, policy, profile) -> None:
    p50 = next(q[1] for h, q in fc.items() if int(h) == 1)
    d = Decision.make(link_id, seq, 1, p50, action, ref, "v", 2, profile,
                      forecast=fc, safe_bandwidth_mbps=safe, forecast_source=source, policy=policy,
                      schema_version=DECISION_SCHEMA_V2)  # fmt: skip
    assert d.schema_version == 2
    assert [h for h, *_ in d.forecast] == sorted(int(h) for h in fc)
    assert d.safe_bandwidth_mbps == (d.forecast[0][1] if safe is None else safe)
    raw = d.to_bytes()
    obj = json.loads(raw)
    jsonschema.validate(obj, V2)
    assert set(obj["forecast"]) == {str(h) for h in sorted(int(h) for h in fc)}
    assert Decision.from_bytes(raw) == d
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, V1)  # strict v1 consumers must be kept on v1 (BWP_DECISIONS_SCHEMA_VERSION=1)


def test_v2_on_request_and_a_point_forecast_fills_it_degenerately() -> None:
    d = Decision.make("lk-1", 9, 1, 42.5, 3, 50.0, "m1", 2, schema_version=DECISION_SCHEMA_V2)
    assert d.compression is None
    assert d.forecast == ((1, 42.5, 42.5, 42.5),) and d.quantiles(1) == (42.5, 42.5, 42.5)
    assert (d.safe_bandwidth_mbps, d.forecast_source, d.policy) == (42.5, "lstm", "ddqn")
    obj = json.loads(d.to_bytes())
    jsonschema.validate(obj, V2)
    assert obj["forecast"] == {"1": {"p10": 42.5, "p50": 42.5, "p90": 42.5}}
    assert list(obj)[: len(V1_KEYS)] == V1_KEYS


def test_v1_on_request_is_exactly_v1() -> None:
    d = _v2(schema_version=DECISION_SCHEMA_V1, safe_bandwidth_mbps=3.0, policy="fixed")
    assert (d.forecast, d.safe_bandwidth_mbps, d.forecast_source, d.policy) == (None, None, None, None)
    assert d.quantiles() is None
    obj = json.loads(d.to_bytes())
    assert list(obj) == [*V1_KEYS, "profile"] and obj["schema_version"] == 1
    jsonschema.validate(obj, V1)
    assert Decision.from_bytes(d.to_bytes()) == d
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, V2)


def test_make_clamps_negatives_and_refuses_bad_v2_values() -> None:
    d = _v2(forecast={"1": (-0.5, 0.0, 2.0)})
    assert d.forecast == ((1, 0.0, 0.0, 2.0),) and d.safe_bandwidth_mbps == 0.0
    assert _v2(safe_bandwidth_mbps=-1.0).safe_bandwidth_mbps == 0.0
    assert _v2(forecast=[(60, 1, 2, 3), ("1", 1, 2, 3)]).forecast == ((1, 1.0, 2.0, 3.0), (60, 1.0, 2.0, 3.0))
    bad = [
        ({"forecast": {1: (5.0, 4.0, 6.0)}}, r'forecast\["1"\] must have 0 <= p10 <= p50 <= p90, got p10=5, p50=4'),
        ({"forecast": {10: (1.0, 2.0, 3.0)}}, "must hold horizon 1"),
        ({"forecast": {1: (1, 2, 3), "1": (1, 2, 3)}}, "each horizon once"),
        ({"forecast": {0: (1, 2, 3)}}, "forecast horizon must be 1..9999 steps"),
        ({"forecast": {1: (1.0, math.nan, 3.0)}}, r"p50 must be a finite number >= 0, got nan"),
        ({"forecast": [(1, 2.0, 3.0)]}, r"or \(h, p10, p50, p90\), got 1: \(2.0, 3.0\)"),
        ({"safe_bandwidth_mbps": math.inf}, "safe_bandwidth_mbps must be a finite number"),
        ({"safe_bandwidth_mbps": math.nan}, "safe_bandwidth_mbps must be a finite number >= 0, got nan"),
        ({"forecast_source": "arima"}, "forecast_source must be in"),
        ({"policy": "greedy"}, "policy in"),
        ({"schema_version": 4}, r"schema_version must be one of \(1, 2, 3\), got 4"),
    ]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            _v2(**kw)


def test_to_bytes_refuses_non_finite_and_incomplete_v2() -> None:
    d = _v2()
    for bad in (
        dataclasses.replace(d, safe_bandwidth_mbps=math.nan),
        dataclasses.replace(d, forecast=((1, 1.0, 2.0, math.inf),)),
    ):
        with pytest.raises(ValueError, match="non-finite number"):
            bad.to_bytes()
    with pytest.raises(ValueError, match="is v2 but lacks forecast"):
        dataclasses.replace(d, forecast=None).to_bytes()
    with pytest.raises(ValueError, match="schema_version must be one of"):
        dataclasses.replace(d, schema_version=4).to_bytes()


def _fc(**by_h) -> dict:
    return {h.lstrip("h"): q for h, q in by_h.items()}


BAD_V2 = [
    (_raw(forecast=_fc(h1={"p10": 5, "p50": 4, "p90": 6})), r'forecast\["1"\] must have 0 <= p10 <= p50 <= p90, got p10=5, p50=4, p90=6'),
    (_raw(forecast=_fc(h1={"p10": 1, "p50": 2, "p90": 3}, h10={"p10": 1, "p50": 3, "p90": 2})), r'forecast\["10"\] must have'),
    (_raw(forecast=_fc(h1={"p10": -1, "p50": 2, "p90": 3})), r"got p10=-1"),
    (_raw(forecast=_fc(h1={"p10": "1", "p50": 2, "p90": 3})), r"p10 must be a finite number >= 0, got '1'"),
    (_raw(forecast=_fc(h1={"p10": 1, "p50": 2})), "must be an object of exactly p10, p50, p90"),
    (_raw(forecast=_fc(h1={"p10": 1, "p50": 2, "p90": 3, "p99": 4})), "exactly p10, p50, p90"),
    (_raw(forecast=_fc(h10={"p10": 1, "p50": 2, "p90": 3})), r"must hold horizon 1 .*got horizons \[10\]"),
    (_raw(forecast={}), r"got horizons \[\]"),
    (_raw(forecast={"01": {"p10": 1, "p50": 2, "p90": 3}}), r"forecast horizon must be 1..9999 steps .*got '01'"),
    (_raw(forecast={"10000": {"p10": 1, "p50": 2, "p90": 3}}), "forecast horizon must be"),
    (_raw(forecast=[1, 2, 3]), "forecast must be an object keyed by horizon, got list"),
    (_raw(safe_bandwidth_mbps=-1.0), r"safe_bandwidth_mbps must be a finite number >= 0, got -1.0"),
    (_raw(forecast_source="arima"), r"forecast_source must be one of \('lstm', .*got 'arima'"),
    (_raw(policy="greedy"), r"policy must be one of .*got 'greedy'"),
    (_raw(policy=...), r"missing \['policy'\], unexpected \[\]"),
    (_raw(extra=1), r"unexpected \['extra'\]"),
    (_raw(schema_version=4), r"schema_version must be one of \(1, 2, 3\), got 4"),
    (_raw(schema_version=3), r"decision v3 needs its schema's fields: missing \['compression'\], unexpected \[\]"),
    (_raw(schema_version="2"), r"got '2'"),
    (_raw(schema_version=True), "got True"),
    (_raw(schema_version=1), r"decision v1 needs its schema's fields: missing \[\], unexpected \['forecast', 'forecast_source', 'policy', 'safe_bandwidth_mbps'\]"),
    (b"[2]", "must be a JSON object, got list"),
]  # fmt: skip


@pytest.mark.parametrize("raw, match", BAD_V2, ids=[str(i) for i in range(len(BAD_V2))])
def test_from_bytes_rejects_bad_v2_saying_expected_and_got(raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Decision.from_bytes(raw)


def test_nan_quantile_is_rejected_by_the_decoder() -> None:
    raw = _raw().replace(b'"p10": 9.0', b'"p10": NaN')
    assert b"NaN" in raw
    with pytest.raises(ValueError, match=r'forecast\["1"\].p10 must be a finite number >= 0, got nan'):
        Decision.from_bytes(raw)


def test_schema_rejects_unknown_enums_and_horizon_keys_but_not_crossing_quantiles() -> None:
    for bad in (
        {"forecast_source": "arima"},
        {"policy": "greedy"},
        {"forecast": {"10": {"p10": 1, "p50": 2, "p90": 3}}},
        {"forecast": {"1": {"p10": 1, "p50": 2, "p90": 3}, "0": {"p10": 1, "p50": 2, "p90": 3}}},
        {"forecast": {"1": {"p10": 1, "p50": 2, "p90": 3, "p99": 4}}},
        {"forecast": {"1": {"p10": -1, "p50": 2, "p90": 3}}},
        {"safe_bandwidth_mbps": -0.1},
        {"schema_version": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**json.loads(_raw()), **bad}, V2)
    crossing = {**json.loads(_raw()), "forecast": {"1": {"p10": 5, "p50": 4, "p90": 6}}}
    jsonschema.validate(crossing, V2)  # JSON Schema cannot say p10 <= p50 <= p90: the decoder does
    assert "p10 <= p50 <= p90" in V2["description"] and "decoders must check" in V2["description"]


def test_v2_keeps_every_v1_field_and_its_rules() -> None:
    jsonschema.Draft202012Validator.check_schema(V2)
    strip = lambda p: {k: v for k, v in p.items() if k != "description"}  # noqa: E731
    for name, rule in V1["properties"].items():
        if name != "schema_version":
            assert strip(V2["properties"][name]) == strip(rule), name
    assert set(V2["required"]) == set(V1["required"]) | V2_NEW
    assert V2["additionalProperties"] is False and V2["properties"]["schema_version"] == {"const": 2}
    assert V2["properties"]["forecast_source"]["enum"] == list(FORECAST_SOURCES)
    assert V2["properties"]["policy"]["enum"] == list(POLICIES)
    assert decisions_schema(1) == V1 and decisions_schema(2) == V2
    with pytest.raises(ValueError, match=r"must be one of \[1, 2, 3\], got 4"):
        decisions_schema(4)


@pytest.mark.parametrize("raw, want", [(None, 3), ("1", 1), ("2", 2), ("3", 3)])
def test_setting_accepts_1_2_and_3_default_3(raw, want, monkeypatch: pytest.MonkeyPatch) -> None:
    if raw is None:
        monkeypatch.delenv("BWP_DECISIONS_SCHEMA_VERSION", raising=False)
    else:
        monkeypatch.setenv("BWP_DECISIONS_SCHEMA_VERSION", raw)
    assert load_settings().decisions_schema_version == want
    assert Settings.model_fields["decisions_schema_version"].description


@pytest.mark.parametrize("raw", ["4", "0", "two"])
def test_setting_rejects_other_versions(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BWP_DECISIONS_SCHEMA_VERSION", raw)
    with pytest.raises(ConfigError, match="decisions_schema_version") as err:
        load_settings()
    if raw != "two":
        assert (
            f"BWP_DECISIONS_SCHEMA_VERSION must be one of 1, 2, 3 (the decisions schema versions this release writes), got {raw}"
            in str(err.value)
        )
