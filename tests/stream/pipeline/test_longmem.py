"""The long-memory state in the window script (Lua) against its twins: stream.core.longmem's
update along the accepted states, and MemoryWindowStore, bit for bit, whatever the cuts."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from stream.core.longmem import STATE, STATE_STRUCT, initial_state, update_state
from stream.core.records import Telemetry
from stream.pipeline.memory_window import MemoryWindowStore
from stream.pipeline.redis_window import WindowStore
from stream.pipeline.window import OLD_ENTRY_BYTES, Outcome, pack_entry

pytestmark = pytest.mark.integration


def _rec(link: str, seq: int, bw: float) -> Telemetry:
    return Telemetry(link_id=link, seq=seq, ts_ms=1_000 * seq, latency_ms=5.0, bandwidth_mbps=bw,
                     packet_loss=0.0, reliability=1.0, profile="internet")  # fmt: skip


async def _apply(url: str, prefix: str, batches, acks):
    """Every batch through the Redis store and the memory twin, acking as told after each."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        store, twin = WindowStore(client, prefix=prefix, ttl_s=60), MemoryWindowStore()
        got, want = [], []
        for batch, ack in zip(batches, acks):
            got.append(await store.update_batch(batch))
            want.append(await twin.update_batch(batch))
            if ack:
                await store.ack(ack)
                await twin.ack(ack)
        links = sorted({r.link_id for b in batches for r in b})
        lm = {lid: (await store.long_memory(lid), await twin.long_memory(lid)) for lid in links}
        return got, want, lm
    finally:
        await client.aclose()


bandwidth = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False))


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 60), bandwidth), min_size=1, max_size=120),
    st.data(),
)
def test_lua_state_equals_its_twins_bit_for_bit(bwp_settings, events, data):
    """Three links, seqs drawn with repeats, gaps and reordering (duplicates and redeliveries),
    random micro-batch cuts, acks in between: the Redis store and the memory twin give the same
    outcomes, windows and states, and each link's stored state is stream.core.longmem's update
    along its accepted seqs (each counted once, in order; a gap just moves on)."""
    tag = uuid.uuid4().hex[:8]
    recs = [_rec(f"l{k}-{tag}", s, bw) for k, s, bw in events]
    batches, acks, i = [], [], 0
    while i < len(recs):
        n = data.draw(st.integers(1, 20), label="cut")
        batches.append(recs[i : i + n])
        picked = data.draw(st.lists(st.sampled_from(recs[: i + n]), max_size=2), label="acks")
        acks.append([(r.link_id, r.seq) for r in picked])
        i += n
    got, want, lm = asyncio.run(_apply(bwp_settings.redis_url, f"lm{tag}", batches, acks))
    for g, w in zip(got, want):
        assert np.array_equal(g.outcomes, w.outcomes)
        assert np.array_equal(g.windows, w.windows)
        assert g.window_states().tobytes() == w.window_states().tobytes()  # bit for bit
    # the reference: the state along each link's accepted (strictly increasing) seqs
    expected: dict[str, list[float]] = {}
    last: dict[str, int] = {}
    for r in recs:
        if r.seq > last.get(r.link_id, -1):
            last[r.link_id] = r.seq
            expected[r.link_id] = update_state(expected.get(r.link_id) or initial_state(), r.bandwidth_mbps)
    for lid, (stored, twin) in lm.items():
        assert stored is not None and stored.tobytes() == STATE_STRUCT.pack(*expected[lid])
        assert twin.tobytes() == stored.tobytes()


def test_redelivery_returns_the_state_at_that_seq_and_moves_nothing(bwp_settings):
    link = f"r-{uuid.uuid4().hex[:8]}"
    first = [_rec(link, s, 10.0 + s) for s in range(14)]

    async def go():
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(bwp_settings.redis_url)
        try:
            store = WindowStore(client, prefix="lmr", ttl_s=60)
            up = await store.update_batch(first)
            before = await store.long_memory(link)
            again = await store.update_batch(first[10:12])  # redelivered, not acked: windows again
            return up, before, again, await store.long_memory(link)
        finally:
            await client.aclose()

    up, before, again, after = asyncio.run(go())
    assert (again.outcomes == Outcome.REDELIVERED).all()
    assert np.array_equal(again.window_states(), up.window_states()[1:3])  # the states at seqs 10 and 11
    assert before.tobytes() == after.tobytes() and before[0] == 14  # counted once each


def test_entries_from_before_the_state_existed_read_as_nothing_known(bwp_settings):
    """A window list written by an older worker (entries without the state): windows still come,
    the old entries' states read as zeros, the link's state starts from its first new state."""
    link = f"o-{uuid.uuid4().hex[:8]}"
    old = [_rec(link, s, 5.0) for s in range(12)]

    async def go():
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(bwp_settings.redis_url)
        try:
            store = WindowStore(client, prefix="lmo", ttl_s=60)
            await client.rpush(store.window_key(link), *(pack_entry(r) for r in old))
            await client.hset(store.meta_key(link), "last", b"%020d" % 11)
            up = await store.update_batch([_rec(link, 12, 7.0)])
            again = await store.update_batch([_rec(link, 11, 5.0)])  # redelivered, an old entry: zeros
            return up, again, await store.long_memory(link)
        finally:
            await client.aclose()

    up, again, lm = asyncio.run(go())
    assert up.outcomes.tolist() == [Outcome.FULL] and len(pack_entry(old[0])) == OLD_ENTRY_BYTES
    assert up.window_states()[0].tolist() == [1.0, 7.0, 7.0, 7.0, 7.0, 0.0] == lm.tolist()
    assert again.outcomes.tolist() == [Outcome.REDELIVERED]
    assert again.windows[0, :, 1].tolist() == [5.0] * 10 and again.window_states()[0].tolist() == [0.0] * len(STATE)
