"""Predict-body parsing: valid windows come back exactly, every refusal has its code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.errors import ApiError
from stream.core.records import FEATURES, MAX_BANDWIDTH_MBPS, WINDOW
from stream.serve.requests import BOUNDS, parse_predict

_state = st.fixed_dictionaries(
    {f: st.floats(lo, min(hi, 1e6), allow_nan=False) for f, (lo, hi) in zip(FEATURES, BOUNDS)}
)
_window = st.lists(_state, min_size=WINDOW, max_size=WINDOW)


@settings(max_examples=60, deadline=None)
@given(st.lists(_window, min_size=1, max_size=6), st.data())
def test_valid_windows_parse_to_the_same_numbers(windows, data):
    profiles = data.draw(st.none() | st.lists(st.sampled_from(["datacenter", "internet", None]),
                                              min_size=len(windows), max_size=len(windows)))  # fmt: skip
    body = {"windows": windows} if profiles is None else {"windows": windows, "profiles": profiles}
    x, got = parse_predict(json.dumps(body).encode(), max_windows=8)
    assert x.shape == (len(windows), WINDOW, len(FEATURES)) and x.dtype == np.float64
    want = np.array([[[s[f] for f in FEATURES] for s in w] for w in windows])
    assert np.array_equal(x, want) and got == profiles


def _state_of(**kw):
    return {"latency_ms": 1.0, "bandwidth_mbps": 2.0, "packet_loss": 0.0, "reliability": 1.0, **kw}


@pytest.mark.parametrize(
    ("raw", "status", "code", "says"),
    [
        (b"{", 400, "invalid_json", "JSON"),
        (b"[]", 422, "wrong_shape", "object"),
        (json.dumps({"windows": [[_state_of()] * WINDOW, [_state_of()] * 3]}).encode(), 422, "wrong_shape",
         "windows[1]"),
        (json.dumps({"windows": [[_state_of(bandwidth_mbps=True)] * WINDOW]}).encode(), 422, "wrong_type",
         "bandwidth_mbps"),
        (json.dumps({"windows": [[_state_of()] * 9 + [_state_of(bandwidth_mbps=MAX_BANDWIDTH_MBPS * 2)]]}).encode(),
         422, "out_of_range", "windows[0][9].bandwidth_mbps"),
        (json.dumps({"windows": [[_state_of(latency_ms=-0.5)] * WINDOW]}).encode(), 422, "out_of_range",
         "latency_ms"),
        (b'{"windows": [[' + b",".join([b'{"latency_ms": 1, "bandwidth_mbps": Infinity, "packet_loss": 0, '
                                        b'"reliability": 1}'] * WINDOW) + b"]]}", 422, "not_finite", "Infinity"),
        (json.dumps({"windows": [[_state_of()] * WINDOW] * 9}).encode(), 422, "too_many_windows", "at most 8"),
    ],
)  # fmt: skip
def test_refusals_name_the_code_and_the_place(raw, status, code, says):
    with pytest.raises(ApiError) as info:
        parse_predict(raw, max_windows=8)
    assert (info.value.status, info.value.code) == (status, code)
    assert says in info.value.message
