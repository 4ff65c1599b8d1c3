"""Decisions schema v3 (stream/core/decision.py): v2 plus the compression hint, against decisions.v3.schema.json;
v1 and v2 still written and read on request."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.compression import NONE, choose, compression_of, default_profile
from stream.core.records import DECISION_SCHEMA_VERSION, Decision
from stream.core.schemas import decisions_schema

V2, V3 = decisions_schema(2), decisions_schema(3)
FC = {1: (9.0, 10.0, 11.0), 10: (80.0, 100.0, 120.0), 60: (5.0, 9.5, 14.0)}


def _v3(**kw) -> Decision:
    return Decision.make("lk-1", 12, 1_000, 10.0, 4, 20.0, "m7", 1_050, "internet", **{"forecast": FC, **kw})


@given(
    level=st.sampled_from([None, *range(1, 20)]),
    p50=st.floats(0, 1e6, allow_nan=False),
    version=st.sampled_from([1, 2, 3]),
)
def test_every_version_round_trips_and_validates_only_its_schema(level, p50, version) -> None:
    comp = NONE if level is None else compression_of(level)
    d = Decision.make("a", 1, 2, p50, 3, 5.0, "v", 4, forecast={1: (p50, p50, p50)}, schema_version=version,
                      compression=comp)  # fmt: skip
    obj = json.loads(d.to_bytes())
    jsonschema.validate(obj, decisions_schema(version))
    assert Decision.from_bytes(d.to_bytes()) == d
    assert d.compression == (comp if version == 3 else None)
    for other in {1, 2, 3} - {version}:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, decisions_schema(other))


def test_v3_is_the_default_and_the_hint_defaults_to_the_shipped_profile_at_h10() -> None:
    assert DECISION_SCHEMA_VERSION == 3
    d = _v3()
    assert d.schema_version == 3 and d.compression == choose(100.0, default_profile())  # h=10 p50
    point = Decision.make("lk-1", 9, 1, 42.5, 3, 50.0, "m1", 2)  # no forecast: h=1 = the prediction
    assert point.compression == choose(42.5, default_profile())
    obj = json.loads(point.to_bytes())
    jsonschema.validate(obj, V3)
    assert list(obj)[-1] == "compression" and obj["compression"] == point.compression.to_dict()


def test_v3_keeps_every_v2_field_and_its_rules() -> None:
    jsonschema.Draft202012Validator.check_schema(V3)
    strip = lambda p: {k: v for k, v in p.items() if k != "description"}  # noqa: E731
    for name, rule in V2["properties"].items():
        if name != "schema_version":
            assert strip(V3["properties"][name]) == strip(rule), name
    assert set(V3["required"]) == set(V2["required"]) | {"compression"}
    assert V3["additionalProperties"] is False and V3["properties"]["schema_version"] == {"const": 3}
    assert V3["$defs"] == V2["$defs"]


@pytest.mark.parametrize(
    "comp",
    [{"codec": "zstd"}, {"codec": "zstd", "level": 0}, {"codec": "zstd", "level": 20}, {"codec": "gzip", "level": 3},
     {"codec": "none", "level": 3}, {"codec": "zstd", "level": 3, "x": 1}, "zstd", None],
)  # fmt: skip
def test_bad_compression_is_refused_by_schema_and_decoder(comp) -> None:
    obj = {**_v3().to_dict(), "compression": comp}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, V3)
    with pytest.raises(
        ValueError, match=r'compression must be \{"codec": "none"\} or \{"codec": "zstd", "level": 1..19\}'
    ):
        Decision.from_bytes(json.dumps(obj).encode())


def test_v3_record_without_hint_is_refused() -> None:
    obj = _v3().to_dict()
    del obj["compression"]
    with pytest.raises(ValueError, match=r"decision v3 needs its schema's fields: missing \['compression'\]"):
        Decision.from_bytes(json.dumps(obj).encode())
    with pytest.raises(ValueError, match="is v3 but lacks compression"):
        dataclasses.replace(_v3(), compression=None).to_bytes()
