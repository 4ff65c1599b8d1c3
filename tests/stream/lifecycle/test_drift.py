"""Drift detection on synthetic error streams, and the retrain flag."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.lifecycle.drift import CLIP, LiveAccuracy, RetrainFlag, relative_error


def _stream(rng: np.random.Generator, n: int, model_sd: float, base_sd: float = 0.15):
    actual = rng.uniform(50, 150, n)
    forecast = actual * (1 + rng.normal(0, model_sd, n))
    baseline = actual * (1 + rng.normal(0, base_sd, n))
    return forecast, baseline, actual


def test_relative_error_clips_and_handles_zero_and_nan():
    assert relative_error(110.0, 100.0) == pytest.approx(0.1)
    assert relative_error(5.0, 0.0) == CLIP  # actual 0: divides by the floor, then clipped
    assert relative_error(float("nan"), 1.0) == CLIP
    assert relative_error(0.0, 0.0) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_drift_no_detection(seed):
    rng = np.random.default_rng(seed)
    la = LiveAccuracy()
    f, b, a = _stream(rng, 20_000, model_sd=0.10)
    fired = [la.observe("internet", *x) for x in zip(f, b, a)]
    assert not any(fired)
    assert la.detections() == 0
    assert la.stats()["internet"]["observed"] == 20_000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_change_detected_quickly(seed):
    rng = np.random.default_rng(seed)
    events = []
    la = LiveAccuracy(on_drift=events.append)
    f, b, a = _stream(rng, 5_000, model_sd=0.10)
    for x in zip(f, b, a):
        assert not la.observe("datacenter", *x)
    # the model now errs ~4x more than before (and ~3x more than last-value)
    f2, b2, a2 = _stream(rng, 1_000, model_sd=0.50)
    first = next((i for i, x in enumerate(zip(f2, b2, a2)) if la.observe("datacenter", *x)), None)
    assert first is not None and first < 200, first
    assert la.detections("datacenter") >= 1
    assert events and events[0].profile == "datacenter"
    assert events[0].recent_model_error > events[0].recent_baseline_error
    assert "drift on profile datacenter" in events[0].reason


def test_profiles_are_independent():
    rng = np.random.default_rng(7)
    la = LiveAccuracy()
    f, b, a = _stream(rng, 3_000, model_sd=0.10)
    for x in zip(f, b, a):
        la.observe("datacenter", *x)
        la.observe("internet", *x)
    f2, b2, a2 = _stream(rng, 500, model_sd=0.60)
    for x in zip(f2, b2, a2):
        la.observe("internet", *x)
    assert la.detections("internet") >= 1
    assert la.detections("datacenter") == 0


def test_model_getting_better_is_not_drift():
    rng = np.random.default_rng(3)
    la = LiveAccuracy()
    f, b, a = _stream(rng, 3_000, model_sd=0.3)
    for x in zip(f, b, a):
        la.observe("internet", *x)
    f2, b2, a2 = _stream(rng, 3_000, model_sd=0.02)
    assert not any(la.observe("internet", *x) for x in zip(f2, b2, a2))


def test_flag_file_roundtrip(tmp_path):
    flag = RetrainFlag(model_dir=tmp_path)
    assert flag.read() is None
    rng = np.random.default_rng(0)
    la = LiveAccuracy(on_drift=flag)
    f, b, a = _stream(rng, 1_000, model_sd=0.1)
    f2, b2, a2 = _stream(rng, 1_000, model_sd=0.8)
    for x in list(zip(f, b, a)) + list(zip(f2, b2, a2)):
        la.observe("internet", *x)
    got = flag.read()
    assert got is not None and got["profile"] == "internet" and "drift" in got["reason"]
    flag.clear()
    assert flag.read() is None


@pytest.mark.integration
def test_flag_redis_roundtrip(bwp_settings):
    flag = RetrainFlag.from_settings(bwp_settings)
    try:
        flag.request("manual request")
        raw = flag.redis.get(f"{bwp_settings.key_prefix}:retrain_requested")
        assert raw is not None and b"manual request" in raw
        assert flag.read()["reason"] == "manual request"
        flag.clear()
        assert flag.read() is None
    finally:
        flag.redis.close()


@given(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
)
def test_relative_errors_is_relative_error_elementwise(f, a):
    from stream.lifecycle.drift import relative_errors

    got = relative_errors([f, f], [a, a])
    want = relative_error(f, a)
    assert got.shape == (2,)
    assert got[0] == pytest.approx(want) and got[1] == got[0]


def test_observe_errors_equals_one_observe_per_step():
    from stream.lifecycle.drift import relative_errors

    rng = np.random.default_rng(3)
    actual = rng.uniform(50, 150, 3000)
    forecast = actual * np.where(np.arange(3000) < 1500, 1.01, 1.6)  # the model breaks half-way
    base = actual * 1.05
    one, many = LiveAccuracy(), LiveAccuracy()
    hits = [i for i in range(3000) if one.observe("dc", forecast[i], base[i], actual[i])]
    found = 0
    for lo in range(0, 3000, 700):  # micro-batches of 700 steps
        found += many.observe_errors(
            "dc",
            relative_errors(forecast[lo : lo + 700], actual[lo : lo + 700]),
            relative_errors(base[lo : lo + 700], actual[lo : lo + 700]),
        )
    assert hits and found == len(hits)
    assert [e.n_observed for e in many.events] == [e.n_observed for e in one.events]
    assert many.stats() == one.stats()
