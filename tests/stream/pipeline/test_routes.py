"""Route-group state: the Redis script and its in-memory twin (order changes, stale members,
duplicates and redelivered states, the interval, TTL), and their agreement."""

from __future__ import annotations

import asyncio
import random

import pytest

from stream.core.records import Telemetry
from stream.core.routes import RouteRanking
from stream.pipeline.routes import MemoryRouteStore, RouteStore
from tests.helpers.pipeline import grouped_state, route_entries

pytestmark = pytest.mark.integration

STALE_S, INTERVAL_S = 30.0, 5.0


def _order(rk: RouteRanking) -> list[str]:
    return [m.link_id for m in rk.members]


async def _redis(url: str, fn):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return await fn(RouteStore(client, "t", ttl_s=120, stale_s=STALE_S, interval_s=INTERVAL_S), client)
    finally:
        await client.aclose()


async def _scenario(store) -> list[list[tuple[str, str, list[str]]]]:
    """The behaviours, step by step; each step's published (group, reason, order)."""
    steps = [
        (route_entries([grouped_state("a", 1, 10.0), grouped_state("b", 1, 20.0)], 0), 0),  # first ranking: b, a
        (route_entries([grouped_state("a", 1, 10.0), grouped_state("b", 1, 20.0)], 100), 100),  # duplicates: nothing
        (route_entries([grouped_state("a", 2, 10.0)], 200), 200),  # same order, interval not passed: nothing
        (route_entries([grouped_state("a", 3, 30.0)], 300), 300),  # a overtakes b: at once
        (route_entries([grouped_state("a", 2, 99.0)], 400), 400),  # an older (redelivered) seq: ignored, nothing
        (route_entries([grouped_state("a", 4, 30.0)], 6_000), 6_000),  # same order, interval passed: again
        (
            route_entries([grouped_state("a", 5, 31.0, group="h"), grouped_state("c", 1, 5.0, group="h")], 6_100),
            6_100,
        ),  # another group
        (route_entries([grouped_state("a", 6, 30.0)], 40_000), 40_000),  # b silent for 40 s > stale: dropped
        (
            route_entries([grouped_state("b", 2, 50.0), grouped_state("b", 3, 1.0)], 40_100),
            40_100,
        ),  # b back; its latest (3) counts
        (
            route_entries([grouped_state("d", 1, 30.0, lat=5.0)], 40_200),
            40_200,
        ),  # same score as a, lower latency: before a
    ]
    out = []
    for batch, now in steps:
        out.append([(r.route_group, r.reason, _order(r)) for r in await store.update(batch, now)])
    return out


EXPECTED = [
    [("g", "order", ["b", "a"])],
    [],
    [],
    [("g", "order", ["a", "b"])],
    [],
    [("g", "interval", ["a", "b"])],
    [("h", "order", ["a", "c"])],
    [("g", "order", ["a"])],
    [("g", "order", ["a", "b"])],
    [("g", "order", ["d", "a", "b"])],
]


def test_memory_store_behaviour():
    assert asyncio.run(_scenario(MemoryRouteStore(STALE_S, INTERVAL_S))) == EXPECTED


def test_redis_store_behaviour_and_ttl(bwp_settings):
    async def go(store: RouteStore, client):
        got = await _scenario(store)
        ttl = await client.ttl(store.key("g"))
        return got, ttl, await store.members("g"), store.key("g")

    got, ttl, members, key = asyncio.run(_redis(bwp_settings.redis_url, go))
    assert got == EXPECTED
    assert 0 < ttl <= 120
    assert members == {"a": 6, "b": 3, "d": 1}  # entries only moved forward
    assert key == "t:{rg:g}"  # hash tag: the group's one cluster slot


def test_ranking_carries_the_members_state_and_forecast(bwp_settings):
    async def go(store: RouteStore, _client):
        return await store.update(route_entries([grouped_state("a", 7, 40.0, lat=3.0, loss=0.25)], 10_000), 10_000)

    (rk,) = asyncio.run(_redis(bwp_settings.redis_url, go))
    (m,) = rk.members
    assert (m.link_id, m.seq, m.ts_ms, m.latency_ms, m.packet_loss) == ("a", 7, 1_007, 3.0, 0.25)
    assert m.forecast == ((1, 40.0, 40.0, 40.0),) and m.horizon == 1
    assert m.score == pytest.approx(40.0 * 0.75) and m.age_ms == 10_000 - 1_007
    assert RouteRanking.from_bytes(rk.to_bytes()) == rk


def test_redis_and_memory_agree_on_random_streams(bwp_settings):
    rng = random.Random(7)
    links = [f"l{i}" for i in range(6)]
    seqs = dict.fromkeys(links, 0)
    batches = []
    now = 0
    for _ in range(60):
        now += rng.choice([50, 500, 3_000, 12_000])
        states = []
        for _ in range(rng.randint(1, 5)):
            lk = rng.choice(links)
            if rng.random() < 0.8:
                seqs[lk] += 1
            seq = max(0, seqs[lk] - rng.choice([0, 0, 0, 1]))  # some duplicates / older seqs
            grp = "g1" if links.index(lk) < 4 else "g2"
            states.append(grouped_state(lk, seq, float(rng.choice([5, 10, 20])), rng.choice([1.0, 2.0]), 0.1, grp))
        batches.append((route_entries(states, now), now))

    async def run_all(store):
        return [[r.to_dict() for r in await store.update(b, t)] for b, t in batches]

    async def go(store: RouteStore, _client):
        return await run_all(store)

    redis_out = asyncio.run(_redis(bwp_settings.redis_url, go))
    memory_out = asyncio.run(run_all(MemoryRouteStore(STALE_S, INTERVAL_S)))
    assert redis_out == memory_out
    assert sum(len(x) for x in redis_out) > 10  # the stream did publish (the comparison is not vacuous)


def test_pipeline_core_ranks_grouped_links_and_counts_published():
    from stream.pipeline.core import InRecord, PipelineCore
    from stream.pipeline.memory_window import MemoryWindowStore
    from tests.helpers.pipeline import LastValuePredictor, make_record

    now = [0]
    core = PipelineCore(MemoryWindowStore(), LastValuePredictor(), clock_ms=lambda: now[0],
                        routes=MemoryRouteStore(STALE_S, INTERVAL_S))  # fmt: skip

    def recs(seqs, group):
        out = []
        for s in seqs:
            for k, bw in ((0, 10.0), (1, 20.0)):
                r = make_record(k, s)
                r = Telemetry(r.link_id, s, r.ts_ms, 1.0, bw, 0.0, 1.0, route_group=group)
                out.append(InRecord(r.to_bytes()))
            out.append(InRecord(make_record(5, s).to_bytes()))  # an ungrouped link: decided, never ranked
        return out

    async def go():
        first = await core.process(recs(range(12), "g"))
        now[0] = 1_000
        # redelivered before the first decisions were acknowledged: decided again, not ranked again
        again = await core.process(recs(range(10, 12), "g"))
        await core.confirm(first)
        await core.confirm(again)
        return first, again

    first, again = asyncio.run(go())
    assert len(first.decisions) == 3 * 3
    assert [(r.route_group, r.reason, _order(r)) for r in first.rankings] == [("g", "order", ["lk-0001", "lk-0000"])]
    assert len(again.decisions) == 3 * 2 and again.rankings == []
    assert core.metrics.routes_published.labels("order")._value.get() == 1


def test_a_core_without_route_store_ignores_groups():
    from stream.pipeline.core import InRecord, PipelineCore
    from stream.pipeline.memory_window import MemoryWindowStore
    from tests.helpers.pipeline import LastValuePredictor

    core = PipelineCore(MemoryWindowStore(), LastValuePredictor())
    out = asyncio.run(core.process([InRecord(grouped_state("a", s, 5.0).to_bytes()) for s in range(12)]))
    assert len(out.decisions) == 3 and out.rankings == []
