"""Helpers of the PipelineCore tests (tests/stream/pipeline/test_core*.py): consumed records
as the core receives them, and a core on a fresh Redis client."""

from __future__ import annotations

import asyncio

from stream.metrics.worker import WorkerMetrics
from stream.pipeline.core import InRecord, PipelineCore
from stream.pipeline.redis_window import WindowStore
from tests.helpers.pipeline import LastValuePredictor


def in_records(recs, topic="tel"):
    """``recs`` as consumed from partition 0 of ``topic``, at offsets 0, 1, ..."""
    return [InRecord(r.to_bytes(), r.link_id.encode(), topic, 0, i) for i, r in enumerate(recs)]


def run_core(settings, fn, predictor=None, **kw):
    """Build a PipelineCore on a fresh redis.asyncio client and run ``fn(core)``."""
    import redis.asyncio as aioredis

    async def go():
        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2)
        try:
            core = PipelineCore(
                WindowStore(client, "u", 60), predictor or LastValuePredictor(), WorkerMetrics.create(), **kw
            )
            return await fn(core)
        finally:
            await client.aclose()

    return asyncio.run(go())


def decide_all(settings, recs, predictor=None, **kw):
    """Run ``recs`` through one ``process`` and ``confirm`` of a fresh core: its BatchOutput."""

    async def go(core):
        out = await core.process(in_records(recs))
        await core.confirm(out)
        return out

    return run_core(settings, go, predictor, **kw)
