"""stream/pipeline/_redis_compat.py: the redis-py connection layer the window store drives is
the reviewed one; an untested redis-py falls back to the public pipeline with the same replies."""

from __future__ import annotations

import asyncio
import inspect
import logging

import numpy as np
import pytest

from stream.core.compat import spec
from stream.core.records import WINDOW
from stream.pipeline import _redis_compat as compat
from stream.pipeline.redis_window import WindowStore
from tests.helpers.compat import assert_reviewed, fake_version, pyproject_spec
from tests.helpers.pipeline import make_record


def test_upstream_code_is_the_reviewed_code():
    assert_reviewed(compat, "stream/pipeline/_redis_compat.py")


def test_the_connection_layer_takes_the_calls_send_raw_makes():
    from redis.asyncio.connection import AbstractConnection, ConnectionPool

    # get_connection() without a command name (required before 5.3), check_health=False
    params = inspect.signature(ConnectionPool.get_connection).parameters
    assert all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for n, p in params.items() if n != "self")  # fmt: skip
    assert "check_health" in inspect.signature(AbstractConnection.send_packed_command).parameters
    for name in ("read_response", "disconnect"):
        assert inspect.iscoroutinefunction(getattr(AbstractConnection, name)), name
    assert inspect.iscoroutinefunction(ConnectionPool.release)


def test_client_kinds_on_real_instances():
    import redis.asyncio as aioredis
    from redis.asyncio.connection import ConnectionPool

    single = aioredis.Redis(host="127.0.0.1", port=1)
    cluster = aioredis.RedisCluster(host="127.0.0.1", port=1)  # connects only on first use
    assert compat.single_pool(single) and not compat.is_cluster(single)
    assert compat.is_cluster(cluster) and not compat.single_pool(cluster)
    assert isinstance(single.connection_pool, ConnectionPool)  # the class whose methods are fingerprinted


def test_installed_version_is_tested():
    assert compat.check_version() is True
    assert WindowStore(object())._raw_tested is True


@pytest.mark.parametrize("version", ["9.0.0", "8.3.0", "8.0.0", "5.2.1", "5.0.0", None])
def test_untested_version_falls_back_to_the_pipeline(monkeypatch, caplog, version):
    import redis.asyncio as aioredis

    fake_version(monkeypatch, "redis", version)
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        assert compat.check_version() is False
        store = WindowStore(aioredis.Redis(host="127.0.0.1", port=1))
    assert not store._raw_ok()
    msg = caplog.records[0].getMessage()
    assert "redis-py" in msg and (version or "not installed") in msg and spec(compat.TESTED) in msg
    assert "pipeline" in msg


def test_pyproject_bound_is_the_supported_range():
    assert pyproject_spec("redis") == spec(compat.SUPPORTED)
    assert compat.SUPPORTED[0] <= compat.TESTED[0] and compat.SUPPORTED[1] == compat.TESTED[1]


@pytest.mark.integration
def test_raw_and_pipeline_paths_give_the_same_results(bwp_settings, monkeypatch):
    import redis.asyncio as aioredis

    recs = [make_record(k, s) for s in range(WINDOW + 2) for k in ("a", "b")]
    recs += [recs[3], make_record("a", 1)]  # a duplicate and a stale record

    async def go(prefix: str) -> tuple:
        client = aioredis.Redis.from_url(bwp_settings.redis_url)
        try:
            store = WindowStore(client, prefix=prefix, ttl_s=60)
            up = await store.update_batch(recs)
            await store.ack([("a", 3)])
            again = await store.update_batch(recs[:4])
            return store._raw_ok(), up, again, await store.meta("a")
        finally:
            await client.aclose()

    raw = asyncio.run(go("raw"))
    fake_version(monkeypatch, "redis", "9.0.0")
    piped = asyncio.run(go("pipe"))
    assert raw[0] is True and piped[0] is False
    for a, b in zip(raw[1:3], piped[1:3]):
        assert np.array_equal(a.outcomes, b.outcomes) and np.array_equal(a.filled, b.filled)
        assert np.array_equal(a.windows, b.windows)
    assert raw[3] == piped[3]
