"""WindowStore + its Lua scripts against the real embedded Redis."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from stream.core.records import WINDOW
from stream.pipeline.redis_window import WindowStore
from stream.pipeline.window import KEEP, Outcome, decode_window, pack_entry, pad_seq
from tests.helpers.pipeline import make_record

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(bwp_settings) -> str:
    return bwp_settings.redis_url


def run(coro):
    return asyncio.run(coro)


async def _with_store(url: str, fn, prefix: str = "t"):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return await fn(WindowStore(client, prefix=prefix, ttl_s=60))
    finally:
        await client.aclose()


def test_pack_roundtrip_keeps_seq_order_and_values():
    recs = [make_record(1, s) for s in (0, 9, 10, 2**63 - 1)]
    seqs, x = decode_window(b"".join(pack_entry(r) for r in recs))
    assert seqs.tolist() == [0, 9, 10, 2**63 - 1]
    assert x[:, 1].tolist() == [r.bandwidth_mbps for r in recs]
    # zero padding makes string order == numeric order (what the Lua script relies on)
    assert sorted([pad_seq(10), pad_seq(9), pad_seq(100)]) == [pad_seq(9), pad_seq(10), pad_seq(100)]


def test_window_fills_then_slides_and_keys_are_hash_tagged(redis_url):
    async def go(store: WindowStore):
        ups = await store.update([make_record("a", s) for s in range(WINDOW + 3)])
        assert [u.outcome for u in ups[: WINDOW - 1]] == [Outcome.FILLING] * (WINDOW - 1)
        assert [u.filled for u in ups[: WINDOW - 1]] == list(range(1, WINDOW))
        assert all(u.outcome is Outcome.FULL for u in ups[WINDOW - 1 :])
        last = ups[-1].window
        assert last.shape == (WINDOW, 4)
        # oldest first, ending at the record's own state: seqs 3..12
        assert last[:, 1].tolist() == [s + 0.5 for s in range(3, WINDOW + 3)]
        assert store.window_key("a") == "t:{a}:w" and store.meta_key("a") == "t:{a}:m"
        ttl = await store.client.ttl(store.window_key("a"))
        assert 0 < ttl <= 60
        return await store.meta("a")

    assert run(_with_store(redis_url, go)) == {"last": WINDOW + 2, "ack": None}


def test_duplicates_and_out_of_order_never_enter_the_window(redis_url):
    async def go(store: WindowStore):
        await store.update([make_record("a", s) for s in range(12)])
        ups = await store.update([make_record("a", 11), make_record("a", 5), make_record("a", 12)])
        seqs, _ = await store.window("a")
        return ups, seqs

    ups, seqs = run(_with_store(redis_url, go))
    # 11 and 5 are <= last (11) but not acked: still owed decisions -> REDELIVERED with their windows
    assert ups[0].outcome is Outcome.REDELIVERED and ups[0].window[-1, 1] == 11.5
    assert ups[1].outcome is Outcome.DUPLICATE  # seq 5 never completed a window (fewer than 10 before it)
    assert ups[2].outcome is Outcome.FULL
    assert seqs.tolist() == list(range(13))


def test_ack_makes_redelivery_a_duplicate_and_never_moves_back(redis_url):
    async def go(store: WindowStore):
        await store.update([make_record("a", s) for s in range(15)])
        await store.ack([("a", 13), ("a", 12)])
        await store.ack([("a", 11)])  # older ack must not move it back
        meta = await store.meta("a")
        ups = await store.update([make_record("a", 13), make_record("a", 14), make_record("a", 9)])
        return meta, ups

    meta, ups = run(_with_store(redis_url, go))
    assert meta == {"last": 14, "ack": 13}
    assert ups[0].outcome is Outcome.DUPLICATE  # decision 13 acknowledged
    assert ups[1].outcome is Outcome.REDELIVERED  # 14 seen but not acknowledged: owed
    assert ups[1].window[:, 1].tolist() == [s + 0.5 for s in range(5, 15)]
    assert ups[2].outcome is Outcome.DUPLICATE


def test_redelivery_beyond_the_kept_states_is_stale(redis_url):
    async def go(store: WindowStore):
        await store.update([make_record("a", s) for s in range(KEEP + 20)])
        return await store.update([make_record("a", 3)]), await store.window("a")

    ups, (seqs, _) = run(_with_store(redis_url, go))
    assert ups[0].outcome is Outcome.STALE
    assert seqs.tolist() == list(range(20, KEEP + 20))


def test_links_are_independent(redis_url):
    async def go(store: WindowStore):
        recs = [make_record(k, s) for s in range(WINDOW) for k in ("x", "y")]
        ups = await store.update(recs)
        return [(r.link_id, u.outcome) for r, u in zip(recs, ups) if u.outcome is Outcome.FULL]

    assert run(_with_store(redis_url, go)) == [("x", Outcome.FULL), ("y", Outcome.FULL)]


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=80), st.data())
def test_window_is_last_ten_accepted_seqs_in_order(redis_url, seqs, data):
    """Any interleaving of duplicates / out-of-order seqs: the stored states are the
    running maxima (accepted seqs) in order; every FULL/REDELIVERED window is the 10
    accepted states ending at that seq."""
    link = f"h{uuid.uuid4().hex}"  # fresh link per example (hypothesis would reuse drawn ids)

    async def go(store: WindowStore):
        ups = []
        # split into random pipeline chunks: the outcome must not depend on batching
        i = 0
        while i < len(seqs):
            n = data.draw(st.integers(1, 8))
            ups += await store.update([make_record(link, s) for s in seqs[i : i + n]])
            i += n
        stored, _ = await store.window(link)
        return ups, stored

    ups, stored = run(_with_store(redis_url, go, prefix="hyp"))
    accepted: list[int] = []
    for s, u in zip(seqs, ups):
        if not accepted or s > accepted[-1]:
            accepted.append(s)
            assert u.outcome is (Outcome.FULL if len(accepted) >= WINDOW else Outcome.FILLING)
        else:
            assert u.outcome in (Outcome.DUPLICATE, Outcome.STALE, Outcome.REDELIVERED)
            kept = accepted[-KEEP:]
            if s in kept:
                idx = kept.index(s)
                if idx >= WINDOW - 1:
                    assert u.outcome is Outcome.REDELIVERED
                else:  # no window at that seq, or one that was trimmed away
                    assert u.outcome is (Outcome.DUPLICATE if len(kept) < KEEP else Outcome.STALE)
            else:
                assert u.outcome is Outcome.STALE
        if u.outcome in (Outcome.FULL, Outcome.REDELIVERED):
            pos = accepted.index(s)
            want = [a + 0.5 for a in accepted[pos - WINDOW + 1 : pos + 1]]
            assert u.window[:, 1].tolist() == want
    assert stored.tolist() == accepted[-KEEP:]
    assert np.all(np.diff(stored) > 0)
