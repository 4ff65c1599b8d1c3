"""Wire records: round trips, validation, and agreement with the published JSON Schemas."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.errors import TelemetryDecodeError
from stream.core.records import FEATURES, MAX_RECORD_BYTES, Decision, Telemetry, dlq_headers
from stream.core.schemas import decisions_schema, load_schema

TELEMETRY_SCHEMA = load_schema("telemetry")
DLQ_SCHEMA = load_schema("dlq")

link_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
unit = st.floats(0.0, 1.0, allow_nan=False)
telemetry = st.builds(
    Telemetry,
    link_id=link_ids,
    seq=st.integers(0, 2**63 - 1),
    ts_ms=st.integers(0, 2**62),
    latency_ms=st.floats(0.0, 3.6e6, allow_nan=False),
    bandwidth_mbps=st.floats(0.0, 1e7, allow_nan=False),
    packet_loss=unit,
    reliability=unit,
    profile=st.sampled_from([None, "datacenter", "internet"]),
    imputed=st.lists(st.sampled_from(["latency_ms", "packet_loss", "reliability"]), unique=True).map(tuple),
)


@given(telemetry)
def test_telemetry_round_trip_and_schema(t: Telemetry) -> None:
    raw = t.to_bytes()
    assert Telemetry.from_bytes(raw) == t
    jsonschema.validate(json.loads(raw), TELEMETRY_SCHEMA)
    assert t.features() == tuple(getattr(t, f) for f in FEATURES)


@given(
    link_id=link_ids,
    seq=st.integers(0, 2**62),
    action=st.integers(0, 9),
    pred=st.floats(0, 1e6, allow_nan=False),
    ref=st.floats(0, 1e6, allow_nan=False),
)
def test_decision_round_trip_and_schema(link_id: str, seq: int, action: int, pred: float, ref: float) -> None:
    for version in (1, 2, 3):  # v1, v2 on request, v3 by default (the degenerate form when no quantiles are given)
        kw = {"schema_version": version} if version != 3 else {}
        d = Decision.make(link_id, seq, 1, pred, action, ref, "v1", 2, profile="internet", **kw)
        assert d.schema_version == version
        assert d.allocation_pct == (action + 1) * 10
        assert math.isclose(d.allocated_bandwidth_mbps, ref * d.allocation_pct / 100)
        raw = d.to_bytes()
        jsonschema.validate(json.loads(raw), decisions_schema(version))
        assert Decision.from_bytes(raw) == d


GOOD = {
    "link_id": "dc-000001",
    "seq": 5,
    "ts_ms": 1_700_000_000_000,
    "latency_ms": 0.4,
    "bandwidth_mbps": 40_000.0,
    "packet_loss": 0.001,
    "reliability": 0.999,
    "profile": "datacenter",
}


def _with(**kw):
    d = dict(GOOD)
    for k, v in kw.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


BAD = [
    (b"", "empty"),
    (b"{not json", "invalid_json"),
    (b"\xff\xfe{}", "invalid_utf8"),
    (b"[1, 2]", "not_object"),
    (_with(seq=...), "missing_field"),
    (_with(bandwidth_mbps="fast"), "wrong_type"),
    (_with(seq=1.5), "wrong_type"),
    (_with(seq=True), "wrong_type"),
    (
        b'{"link_id":"a","seq":1,"ts_ms":1,"latency_ms":NaN,"bandwidth_mbps":1,"packet_loss":0,"reliability":1}',
        "not_finite",
    ),
    (
        b'{"link_id":"a","seq":1,"ts_ms":1,"latency_ms":1,"bandwidth_mbps":Infinity,"packet_loss":0,"reliability":1}',
        "not_finite",
    ),
    (_with(latency_ms=-1), "out_of_range"),
    (_with(packet_loss=1.5), "out_of_range"),
    (_with(bandwidth_mbps=1e300), "out_of_range"),
    (_with(seq=-3), "out_of_range"),
    (_with(link_id="bad link!"), "invalid_link_id"),
    (_with(link_id="x" * 129), "invalid_link_id"),
    (_with(profile="satellite"), "unknown_profile"),
    (b'{"pad":"' + b"x" * MAX_RECORD_BYTES + b'"}', "too_large"),
]


@pytest.mark.parametrize("raw,code", BAD, ids=[c + str(i) for i, (_, c) in enumerate(BAD)])
def test_bad_records_rejected_with_code(raw: bytes, code: str) -> None:
    with pytest.raises(TelemetryDecodeError) as info:
        Telemetry.from_bytes(raw)
    assert info.value.code == code
    assert info.value.code in DLQ_SCHEMA["properties"]["bwp-error-code"]["enum"]
    # The schema must agree with the decoder wherever the input is JSON at all.
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return
    if code in ("too_large",):
        return
    if isinstance(obj, dict) and any(isinstance(v, float) and not math.isfinite(v) for v in obj.values()):
        return  # NaN/Infinity are not JSON; Python's json accepts them, the decoder does not
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, TELEMETRY_SCHEMA)


def test_integral_float_seq_is_accepted_as_int() -> None:
    t = Telemetry.from_bytes(_with(seq=7.0))
    assert t.seq == 7 and isinstance(t.seq, int)


def test_error_messages_say_expected_and_got() -> None:
    with pytest.raises(TelemetryDecodeError, match=r"packet_loss must be in \[0, 1\], got 1.5"):
        Telemetry.from_bytes(_with(packet_loss=1.5))


def test_dlq_headers_match_schema() -> None:
    headers = dlq_headers("out_of_range", "packet_loss must be in [0, 1], got 1.5", "bwp.telemetry", 3, 42)
    as_dict = {k: v.decode() for k, v in headers}
    jsonschema.validate(as_dict, DLQ_SCHEMA)
    assert as_dict["bwp-source-offset"] == "42"


def test_decision_rejects_bad_action() -> None:
    with pytest.raises(ValueError, match="action must be in 0..9"):
        Decision.make("a", 1, 1, 1.0, 10, 1.0, "v", 1)
