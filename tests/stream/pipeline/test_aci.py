"""Online calibration (stream.pipeline.aci): the reference update, its convergence, and the
Redis script == in-memory twin == reference, whatever the micro-batch cuts."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.records import Telemetry
from stream.pipeline.aci import MAX_OFFSET, AciParams, AciState, calibrate_link
from stream.pipeline.memory_window import MemoryWindowStore

finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


def _run(ys: np.ndarray, q: np.ndarray, params: AciParams) -> np.ndarray:
    """Published (p10, p90) of one link whose state t has bandwidth ys[t] and forecast q[t] for t+1."""
    state, out = None, np.empty((len(ys), 2))
    for t, (y, row) in enumerate(zip(ys.tolist(), q.tolist())):
        state, out[t, 0], out[t, 1] = calibrate_link(state, t, y, row, params)
    return out


def _coverage(ys: np.ndarray, pub: np.ndarray) -> tuple[float, float]:
    """Share of next values at or below the published p10 and p90 (the live coverage's rule)."""
    nxt = ys[1:]
    return float(np.mean(nxt <= pub[:-1, 0])), float(np.mean(nxt <= pub[:-1, 1]))


def _miscalibrated(ys_next_scale: np.ndarray) -> np.ndarray:
    """A forecast whose interval is far too narrow: p10/p90 at the true 0.35/0.65 quantiles of a
    lognormal(0, 0.5) around ``scale`` (true p10/p90 are at z = -+1.2816)."""
    z = 0.3853  # Phi(0.3853) = 0.65
    s = ys_next_scale[:, None]
    return np.hstack([s * math.exp(-0.5 * z), s, s * math.exp(0.5 * z)])


def test_stationary_stream_converges_to_nominal_coverage():
    rng = np.random.default_rng(11)
    n = 20_000
    ys = 50.0 * np.exp(0.5 * rng.standard_normal(n))
    q = _miscalibrated(np.full(n, 50.0))
    raw_lo, raw_hi = _coverage(ys, np.stack([q[:, 0], q[:, 2]], axis=1))
    assert raw_lo > 0.3 and raw_hi < 0.7  # the model alone is badly off (the test is not vacuous)
    pub = _run(ys, q, AciParams(gamma=0.01))
    lo, hi = _coverage(ys[n // 2 :], pub[n // 2 :])
    assert abs(lo - 0.1) < 0.01 and abs(hi - 0.9) < 0.01, (lo, hi)


def test_recovers_after_a_level_shift():
    """At t = 5000 the link's level drops by a quarter and its volatility grows by half, while
    the model keeps forecasting the old level and width: within 500 steps the coverage over
    the next 2000 is back within 2 points of nominal. (The offsets cannot move p10 above or
    p90 below the model's p50, so the shift is one the interval can follow around that p50.)"""
    rng = np.random.default_rng(5)
    n, shift = 10_000, 5_000
    after = np.arange(n) >= shift
    ys = np.where(after, 75.0, 100.0) * np.exp(np.where(after, 0.45, 0.3) * rng.standard_normal(n))
    q = _miscalibrated(np.full(n, 100.0))
    pub = _run(ys, q, AciParams(gamma=0.02))
    before = _coverage(ys[shift - 2000 : shift], pub[shift - 2000 : shift])
    assert abs(before[0] - 0.1) < 0.02 and abs(before[1] - 0.9) < 0.02, before
    just_after = _coverage(ys[shift : shift + 100], pub[shift : shift + 100])
    assert just_after[0] > 0.2  # right after the shift p10 is far too high...
    lo, hi = _coverage(ys[shift + 500 : shift + 2500], pub[shift + 500 : shift + 2500])
    assert abs(lo - 0.1) < 0.02 and abs(hi - 0.9) < 0.02, (lo, hi)  # ...then it has caught up


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(finite, finite, finite, finite, st.integers(0, 3)), min_size=1, max_size=40),
    gamma=st.floats(min_value=0.0, max_value=1.0),
)
def test_published_quantiles_never_cross_and_offsets_stay_bounded(steps, gamma):
    params = AciParams(gamma=gamma)
    state, seq = None, 0
    for y, a, b, c, jump in steps:
        lo, mid, hi = sorted((a, b, c))
        seq += jump  # 0: a duplicate, >1: a gap
        state, p_lo, p_hi = calibrate_link(state, seq, y, (lo, mid, hi), params)
        assert p_lo <= mid <= p_hi
        assert abs(state.b_lo) <= MAX_OFFSET and abs(state.b_hi) <= MAX_OFFSET


def test_duplicates_and_gaps_do_not_move_the_offsets():
    p = AciParams(gamma=0.5)
    s0, _, _ = calibrate_link(None, 5, 10.0, (8.0, 10.0, 12.0), p)
    assert (s0.b_lo, s0.b_hi) == (0.0, 0.0)
    again, lo, hi = calibrate_link(s0, 5, 1.0, (8.0, 10.0, 12.0), p)  # the same state redelivered
    assert again == s0 and (lo, hi) == (8.0, 12.0)
    older, _, _ = calibrate_link(s0, 3, 1.0, (8.0, 10.0, 12.0), p)
    assert older == s0
    gap, _, _ = calibrate_link(s0, 7, 1.0, (8.0, 10.0, 12.0), p)  # seq 6 missing: nothing scored
    assert (gap.seq, gap.b_lo, gap.b_hi) == (7, 0.0, 0.0)
    nxt, _, _ = calibrate_link(s0, 6, 1.0, (8.0, 10.0, 12.0), p)  # y = 1 <= p10 and <= p90
    assert nxt.b_lo == pytest.approx(0.5 * (0.1 - 1)) and nxt.b_hi == pytest.approx(0.5 * (0.9 - 1))


@given(st.integers(0, 10**19), *(st.floats(allow_nan=False, allow_infinity=False) for _ in range(4)))
def test_state_round_trips(seq, a, b, c, d):
    s = AciState(seq, a, b, c, d)
    assert AciState.decode(s.encode()) == s


def test_bad_params_and_state_text_are_refused():
    with pytest.raises(ValueError, match="gamma"):
        AciParams(gamma=-0.1)
    with pytest.raises(ValueError, match="tau"):
        AciParams(tau_lo=0.9, tau_hi=0.1)
    with pytest.raises(ValueError, match="expected"):
        AciState.decode(b"1 2 3")


# --- the Redis script and the twin -------------------------------------------------------------
def _random_stream(seed: int, links: int = 5, n: int = 400) -> tuple[list[Telemetry], np.ndarray]:
    """States of several links (interleaved, with duplicates, older repeats and gaps) and a
    (p10, p50, p90) forecast per state."""
    rng = random.Random(seed)
    nxt = dict.fromkeys(range(links), 0)
    recs, q = [], []
    for _ in range(n):
        k = rng.randrange(links)
        u = rng.random()
        if u < 0.08 and nxt[k] > 0:
            seq = nxt[k] - 1 - rng.randrange(min(3, nxt[k]))  # duplicate or older repeat
        else:
            if u > 0.95:
                nxt[k] += 2  # a gap
            seq = nxt[k]
            nxt[k] += 1
        bw = rng.lognormvariate(3.0, 0.6)
        recs.append(Telemetry(f"l{k}", seq, 1_000 + seq, 5.0, bw, 0.0, 1.0, "internet"))
        mid = rng.lognormvariate(3.0, 0.3)
        q.append((mid * rng.uniform(0.5, 1.0), mid, mid * rng.uniform(1.0, 2.0)))
    return recs, np.array(q)


def _cuts(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < n:
        j = min(n, i + rng.choice([1, 3, 17, 80, 300]))
        out.append((i, j))
        i = j
    return out


async def _apply(store, recs, q, params, cuts) -> np.ndarray:
    return np.concatenate([await store.calibrate(recs[a:b], q[a:b], params) for a, b in cuts])


def test_memory_twin_equals_the_reference_whatever_the_cuts():
    recs, q = _random_stream(3)
    params = AciParams(gamma=0.05)
    want = None
    for seed in range(4):
        got = asyncio.run(_apply(MemoryWindowStore(), recs, q, params, _cuts(len(recs), seed)))
        if want is None:
            want = got
        assert np.array_equal(got, want)
    # offsets did move (not only zeros), and every state reported p10 <= p50 <= p90
    assert not np.array_equal(want, q[:, [0, 2]])
    assert np.all(want[:, 0] <= q[:, 1]) and np.all(want[:, 1] >= q[:, 1])


@pytest.mark.integration
def test_redis_script_equals_the_twin(bwp_settings):
    """Random streams with duplicates, repeats and gaps: the Lua script publishes what the twin
    publishes and stores the same per-link state, cut into any micro-batches (and > CALL_RECORDS)."""
    import redis.asyncio as aioredis

    from stream.pipeline.redis_window import WindowStore

    recs, q = _random_stream(9, links=7, n=900)
    params = AciParams(gamma=0.05)
    twin = MemoryWindowStore()
    want = asyncio.run(_apply(twin, recs, q, params, [(0, len(recs))]))

    async def go():
        client = aioredis.Redis.from_url(bwp_settings.redis_url)
        try:
            store = WindowStore(client, bwp_settings.key_prefix, 60)
            got = await _apply(store, recs, q, params, _cuts(len(recs), 1))
            states = {f"l{k}": await store.aci_state(f"l{k}") for k in range(7)}
            ttl = await client.ttl(store.meta_key("l0"))
            return got, states, ttl
        finally:
            await client.aclose()

    got, states, ttl = asyncio.run(go())
    np.testing.assert_allclose(got, want, rtol=1e-13)
    for link, s in states.items():
        t = asyncio.run(twin.aci_state(link))
        assert s is not None and t is not None and s.seq == t.seq
        np.testing.assert_allclose([s.b_lo, s.b_hi, s.q_lo, s.q_hi], [t.b_lo, t.b_hi, t.q_lo, t.q_hi], rtol=1e-13)
    assert 0 < ttl <= 60


@pytest.mark.integration
def test_worker_core_publishes_calibrated_h1_and_redeliveries_move_nothing(bwp_settings):
    """Through PipelineCore on real Redis: the decisions' h = 1 p10/p90 are the reference
    calibration of the link's states; a redelivered run of states is decided again with the
    current offsets and leaves the stored state as it was."""
    from stream.core.records import WINDOW
    from tests.helpers.pipeline import QuantileStandIn, make_record
    from tests.helpers.pipeline_core import in_records, run_core

    params = AciParams(gamma=0.2)
    recs = [make_record(1, s, profile="internet") for s in range(WINDOW + 30)]

    async def go(core):
        first = await core.process(in_records(recs))
        before = await core.store.aci_state(recs[0].link_id)
        again = await core.process(in_records(recs[-5:]))  # redelivered: not acknowledged yet
        after = await core.store.aci_state(recs[0].link_id)
        return first, again, before, after

    first, again, before, after = run_core(bwp_settings, go, QuantileStandIn(), aci=params)
    assert len(first.decisions) == 31 and len(again.decisions) == 5
    assert before == after and before.seq == recs[-1].seq
    # the reference over the decided states (QuantileStandIn: 0.8 x, x, 1.25 x of the last value)
    state, want = None, []
    for r in recs[WINDOW - 1 :]:
        x = r.bandwidth_mbps
        state, lo, hi = calibrate_link(state, r.seq, x, (0.8 * x, x, 1.25 * x), params)
        want.append((lo, hi))
    got = [(d.forecast[0][1], d.forecast[0][3]) for d in first.decisions]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[-1] != (0.8 * recs[-1].bandwidth_mbps, 1.25 * recs[-1].bandwidth_mbps)  # offsets moved
    assert all(d.safe_bandwidth_mbps == d.forecast[0][1] for d in first.decisions)
    # redelivered decisions: the current offsets on the model's quantiles
    x = recs[-1].bandwidth_mbps
    d = again.decisions[-1]
    assert d.forecast[0][1] == pytest.approx(min(0.8 * x * math.exp(after.b_lo), x), rel=1e-12)
    assert d.forecast[0][3] == pytest.approx(max(1.25 * x * math.exp(after.b_hi), x), rel=1e-12)
    assert [h[1:] for h in d.forecast[1:]] == [(0.8 * x, x, 1.25 * x)] * 2  # h = 10, 60 untouched
