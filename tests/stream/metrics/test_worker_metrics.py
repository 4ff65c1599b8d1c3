"""Worker metrics: names, labels and values after a known small run (fresh registry per test)."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from stream.core.records import WINDOW
from stream.metrics.worker import WorkerMetrics, observe_many
from stream.pipeline.core import InRecord, PipelineCore
from stream.pipeline.redis_window import WindowStore
from tests.helpers.pipeline import LastValuePredictor, make_record

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

    from stream.ops.stack import free_port

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


# --- observe_many: the worker's bulk histogram update equals a loop of observe() ------------


def _hist_samples(registry) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in registry.collect()
        for s in fam.samples
        if not s.name.endswith("_created")
    }


@hsettings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=64),
            st.sampled_from([0.005, 0.01, 0.1, 60.0, 0.0, -1.0]),  # exactly on bucket bounds, below all
        ),
        max_size=60,
    )
)
def test_observe_many_matches_observe_loop(values):
    import math

    a, b = WorkerMetrics.create(CollectorRegistry()), WorkerMetrics.create(CollectorRegistry())
    a_child, b_child = a.live_rel_error.labels("lstm", "internet"), b.live_rel_error.labels("lstm", "internet")
    for v in values:
        a.e2e_latency_seconds.observe(v)
        a_child.observe(v)
    observe_many(b.e2e_latency_seconds, values)
    observe_many(b_child, values)
    sa, sb = _hist_samples(a.registry), _hist_samples(b.registry)
    assert sa.keys() == sb.keys()
    for k in sa:
        x, y = sa[k], sb[k]
        if k[0].endswith("_sum"):
            # a sum of the same floats in another order: equal up to rounding (or both NaN/inf)
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-9, abs=1e-9), k
        else:
            assert x == y, k
