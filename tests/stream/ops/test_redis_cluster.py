"""``BWP_REDIS_CLUSTER``: the window store and the worker against a real three-primary
Redis Cluster (three valkey/redis processes, see :mod:`stream.ops.redis_cluster`)."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from stream.core.errors import ConfigError, StackError
from stream.core.records import WINDOW
from stream.core.settings import load_settings
from stream.ops.healthcheck import CheckFailed, check_redis
from stream.ops.redis_cluster import LocalRedisCluster
from stream.ops.stack import EmbeddedStack
from stream.pipeline.redis_window import CALL_RECORDS, WindowStore
from stream.pipeline.window import Outcome
from tests.helpers.pipeline import STAND_IN, TopicReader, WorkerProcess, decision_keys, fleet, make_record, produce

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def cluster_settings(cluster: LocalRedisCluster, bwp_settings):
    """The test's topics and Redis prefix, with Redis on the (flushed) cluster."""
    cluster.flushall()
    return bwp_settings.model_copy(update={"redis_url": cluster.url, "redis_cluster": True})


def _stream(links: int, steps: int, seed: int) -> list:
    """Every link's states 0..steps-1, interleaved across links, with ~5 % duplicates and
    ~5 % late (out-of-order) repeats of an earlier state mixed in."""
    rng = random.Random(seed)
    recs = [make_record(f"lk-{k:04d}", s) for s in range(steps) for k in range(links)]
    out = []
    for r in recs:
        out.append(r)
        u = rng.random()
        if u < 0.05:
            out.append(r)
        elif u < 0.10 and r.seq > 3:
            out.append(make_record(r.link_id, r.seq - rng.randint(1, 3)))
    return out


async def _apply(settings, records, chunk: int, acks_every: int):
    """Feed ``records`` in chunks through a WindowStore on ``settings``' Redis; ack every
    ``acks_every``-th chunk's FULL states. Returns the concatenated outcomes and windows."""
    client = settings.redis_client(asyncio=True)
    try:
        store = WindowStore(client, prefix=settings.key_prefix, ttl_s=60)
        outcomes, windows = [], []
        for i in range(0, len(records), chunk):
            part = records[i : i + chunk]
            upd = await store.update_batch(part)
            outcomes.append(upd.outcomes)
            windows.append(upd.windows)
            if (i // chunk) % acks_every == 0:
                await store.ack((r.link_id, r.seq) for r, ok in zip(part, upd.has_window()) if ok)
        metas = {lk: await store.meta(lk) for lk in sorted({r.link_id for r in records})}
        return np.concatenate(outcomes), np.concatenate(windows), metas
    finally:
        await client.aclose()


def test_cluster_store_gives_the_single_node_results(cluster, cluster_settings, bwp_settings):
    """The same stream of states, duplicates and late repeats applied to one Redis and to the
    cluster: identical outcomes, windows and per-link acks; the keys spread over all nodes."""
    from redis.asyncio import RedisCluster

    records = _stream(links=300, steps=14, seed=7)
    chunk = 3 * CALL_RECORDS  # several links per call on one node, one slot per call on the cluster
    single = asyncio.run(_apply(bwp_settings, records, chunk, acks_every=2))
    clustered = asyncio.run(_apply(cluster_settings, records, chunk, acks_every=2))
    assert isinstance(cluster_settings.redis_client(asyncio=True), RedisCluster)
    np.testing.assert_array_equal(clustered[0], single[0])
    np.testing.assert_array_equal(clustered[1], single[1])
    assert clustered[2] == single[2]
    assert len(single[1]) > 300 * (14 - WINDOW)  # FULL states plus owed redeliveries
    per_node = cluster.keys_per_node()
    assert sum(per_node.values()) == 2 * 300 and min(per_node.values()) > 0, per_node


def test_cluster_store_reloads_scripts_flushed_on_every_node(cluster, cluster_settings):
    """A failover or restart empties a node's script cache: NOSCRIPT -> load on all primaries, replay."""

    async def go():
        client = cluster_settings.redis_client(asyncio=True)
        try:
            store = WindowStore(client, prefix="t", ttl_s=60)
            await store.update([make_record(f"l{k}", s) for s in range(WINDOW - 1) for k in range(50)])
            for port in cluster.ports:
                cluster.client(port).script_flush()
            upd = await store.update_batch([make_record(f"l{k}", WINDOW - 1) for k in range(50)])
            return upd.count(Outcome.FULL)
        finally:
            await client.aclose()

    assert asyncio.run(go()) == 50


def test_worker_on_the_cluster_decides_every_full_window_once(cluster, cluster_settings, tmp_path):
    """K links x M steps in, one redelivered state: K x (M - 9) distinct decisions out."""
    K, M = 40, 25
    w = WorkerProcess(cluster_settings, tmp_path / "worker.log", predictor=STAND_IN)
    w.start()
    reader = TopicReader(cluster_settings, cluster_settings.decisions_topic)
    try:
        recs = fleet(K, M)
        produce(cluster_settings, recs)
        want = {(f"lk-{k:04d}", s) for k in range(K) for s in range(WINDOW - 1, M)}
        reader.poll_until(lambda msgs: want <= set(decision_keys(msgs)) or not w.alive(), 120)
        assert w.alive(), w.log_tail()
        produce(cluster_settings, [recs[-1]])  # decided and acknowledged already: a duplicate
        keys = list(decision_keys(reader.drain(quiet_s=2.0)))
        assert set(keys) == want, f"{len(want - set(keys))} missing\n{w.log_tail()}"
        assert len(keys) == len(want)
        assert min(cluster.keys_per_node().values()) > 0
    finally:
        reader.close()
        w.stop()


def test_route_store_on_the_cluster_ranks_as_its_twin(cluster, cluster_settings):
    """Route groups spread over several slots: one script call per slot, every group's rankings
    equal to the in-memory twin's (per step; across slots the groups come back per call)."""
    from redis.crc import key_slot

    from stream.pipeline.routes import MemoryRouteStore, RouteStore
    from tests.helpers.pipeline import grouped_state, route_entries

    rng = random.Random(11)
    groups = [f"grp{i}" for i in range(8)]
    links = {g: [f"{g}-l{j}" for j in range(3)] for g in groups}
    seqs = {lk: 0 for ls in links.values() for lk in ls}
    steps, now = [], 0
    for _ in range(50):
        now += rng.choice([50, 500, 3_000, 12_000])
        states = []
        for _ in range(rng.randint(2, 12)):
            g = rng.choice(groups)
            lk = rng.choice(links[g])
            seqs[lk] += rng.random() < 0.8
            bw = float(rng.choice([5, 10, 20, 40]))
            states.append(grouped_state(lk, seqs[lk], bw, lat=2.0, loss=0.1, group=g))
        steps.append((route_entries(states, now), now))

    async def run(store) -> list[list[dict]]:
        out = []
        for batch, t in steps:
            out.append(sorted((r.to_dict() for r in await store.update(batch, t)), key=lambda d: d["route_group"]))
        return out

    async def on_cluster() -> list[list[dict]]:
        client = cluster_settings.redis_client(asyncio=True)
        try:
            store = RouteStore(client, cluster_settings.key_prefix, ttl_s=120, stale_s=30.0, interval_s=5.0)
            return await run(store)
        finally:
            await client.aclose()

    slots = {key_slot(RouteStore(None, cluster_settings.key_prefix).key(g).encode()) for g in groups}
    assert len(slots) > 1  # the groups really span several slots (and nodes)
    got = asyncio.run(on_cluster())
    assert got == asyncio.run(run(MemoryRouteStore(30.0, 5.0)))
    assert sum(len(x) for x in got) > 20  # rankings were published: the comparison is not vacuous


def test_healthcheck_on_the_cluster(cluster, cluster_settings, bwp_settings):
    check_redis(cluster_settings, timeout_s=2)
    # the cluster client against a plain Redis: a clear failure, not a traceback
    plain = bwp_settings.model_copy(update={"redis_cluster": True})
    with pytest.raises(CheckFailed, match="redis"):
        check_redis(plain, timeout_s=2)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:7000/3", "unix:///tmp/redis.sock"])
def test_cluster_setting_refuses_urls_a_cluster_cannot_serve(url):
    with pytest.raises(ConfigError, match="BWP_REDIS_CLUSTER"):
        load_settings(redis_url=url, redis_cluster=True)


def test_embedded_stack_never_starts_a_cluster(tmp_path):
    s = load_settings(state_dir=tmp_path, redis_cluster=True, embedded="always")
    with pytest.raises(StackError, match="never a cluster"):
        EmbeddedStack(s).up()
