"""Worker metrics: names, labels and values after a known small run (fresh registry per test)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pipeline_helpers import LastValuePredictor, make_record
from prometheus_client import CollectorRegistry, generate_latest

from stream.metrics import WorkerMetrics
from stream.records import WINDOW
from stream.window import WindowStore
from stream.worker import InRecord, PipelineCore

pytestmark = pytest.mark.integration


def test_metrics_after_a_known_run(bwp_settings):
    import redis.asyncio as aioredis

    registry = CollectorRegistry()
    metrics = WorkerMetrics.create(registry)
    links, steps = 3, WINDOW + 2
    recs = [make_record(k, s) for s in range(steps) for k in range(links)]
    batch = [InRecord(r.to_bytes(), None, "tel", 0, i) for i, r in enumerate(recs)]
    batch.append(InRecord(b"{oops", None, "tel", 0, 999))
    batch.append(InRecord(recs[-1].to_bytes(), None, "tel", 0, 1000))  # same state again
    batch.append(InRecord(make_record(0, 2).to_bytes(), None, "tel", 0, 1001))  # out of order, window-less
    before = time.time()

    async def go():
        client = aioredis.Redis.from_url(bwp_settings.redis_url)
        try:
            core = PipelineCore(WindowStore(client, "m", 60), LastValuePredictor(), metrics)
            out = await core.process(batch)
            await core.confirm(out)
        finally:
            await client.aclose()

    asyncio.run(go())
    v = registry.get_sample_value
    assert v("bwp_records_consumed_total") == len(batch)
    assert v("bwp_dead_letters_total", {"reason": "invalid_json"}) == 1
    assert v("bwp_records_dropped_total", {"kind": "duplicate"}) == 2
    assert v("bwp_windows_filling_total") == links * (WINDOW - 1)
    decisions = links * (steps - WINDOW + 1)
    assert v("bwp_decisions_total", {"model_version": "test-last-value"}) == decisions
    assert v("bwp_model_info", {"version": "test-last-value"}) == 1
    assert v("bwp_end_to_end_latency_seconds_count") == decisions
    assert v("bwp_batch_records_count") == 1 and v("bwp_batch_records_sum") == len(batch)
    for stage in ("decode", "redis", "predict", "ack"):
        assert v("bwp_stage_duration_seconds_count", {"stage": stage}) == 1, stage
    assert v("bwp_redis_errors_total") == 0 and v("bwp_predict_errors_total") == 0
    assert v("bwp_last_record_processed_timestamp_seconds") >= before
    text = generate_latest(registry).decode()
    assert "link_id" not in text  # no per-link series
    for name in ("bwp_produce_errors_total", "bwp_consumer_lag_records", "bwp_model_reloads_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


def test_metrics_endpoint_serves_the_registry():
    import urllib.request

    from stream.stack import free_port

    m = WorkerMetrics.create(CollectorRegistry())
    m.records_consumed.inc(7)
    port = free_port()
    m.serve(port, addr="127.0.0.1")
    body = ""
    for _ in range(50):
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            break
        except OSError:
            time.sleep(0.05)
    assert "bwp_records_consumed_total 7.0" in body
