"""PipelineCore (the Kafka-free worker core) against the real embedded Redis."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import LastValuePredictor, StandInPrediction, make_record

from stream.metrics import WorkerMetrics
from stream.records import H_ERROR_CODE, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC, WINDOW
from stream.window import WindowStore
from stream.worker import InRecord, PipelineCore

pytestmark = pytest.mark.integration


def _raw(recs, topic="tel"):
    return [InRecord(r.to_bytes(), r.link_id.encode(), topic, 0, i) for i, r in enumerate(recs)]


def run_core(settings, fn, predictor=None, **kw):
    """Build a PipelineCore on a fresh redis.asyncio client and run ``fn(core)``."""
    import redis.asyncio as aioredis

    async def go():
        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2)
        try:
            core = PipelineCore(WindowStore(client, "u", 60), predictor or LastValuePredictor(), WorkerMetrics.create(), **kw)
            return await fn(core)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_one_decision_per_full_window_and_batched_predict(bwp_settings):
    pred = LastValuePredictor()
    recs = [make_record(k, s) for s in range(12) for k in range(3)]

    async def go(core):
        out = await core.process(_raw(recs))
        await core.confirm(out)
        return out

    out = run_core(bwp_settings, go, pred)
    assert out.valid == 36 and out.filling == 3 * (WINDOW - 1) and not out.dead_letters
    assert sorted((d.link_id, d.seq) for d in out.decisions) == sorted(
        (f"lk-{k:04d}", s) for k in range(3) for s in range(WINDOW - 1, 12)
    )
    assert pred.calls == [9]  # every full window of the batch in ONE predict call
    d = next(d for d in out.decisions if d.link_id == "lk-0001" and d.seq == 11)
    assert d.predicted_bandwidth_mbps == 11.5 and d.action == 4 and d.allocation_pct == 50
    assert d.reference_bandwidth_mbps == 11.5 and math.isclose(d.allocated_bandwidth_mbps, 5.75)
    assert d.model_version == "test-last-value" and d.profile == "datacenter"


def test_invalid_records_become_dead_letters_with_original_bytes(bwp_settings):
    good = [make_record(7, s) for s in range(WINDOW)]
    ok = json.loads(good[0].to_bytes())
    bad = {
        b"{not json": "invalid_json",
        json.dumps({**ok, "seq": "3"}).encode(): "wrong_type",
        json.dumps({k: v for k, v in ok.items() if k != "bandwidth_mbps"}).encode(): "missing_field",
        json.dumps({**ok, "latency_ms": float("nan")}).encode(): "not_finite",
        json.dumps({**ok, "packet_loss": 1.5}).encode(): "out_of_range",
        b"": "empty",
        b"\xff\xfe\x00": "invalid_utf8",
    }
    batch = _raw(good[:5])
    for i, raw in enumerate(bad):
        batch.append(InRecord(raw, b"k", "tel", 2, 100 + i))
    batch += _raw(good[5:])

    async def go(core):
        out = await core.process(batch)
        await core.confirm(out)
        return out, core.metrics

    out, m = run_core(bwp_settings, go)
    assert len(out.decisions) == 1 and out.decisions[0].seq == WINDOW - 1  # good records still decided
    got = {value: dict(h) for value, key, h in out.dead_letters}
    assert set(got) == set(bad)  # original bytes, unchanged
    for value, code in bad.items():
        h = got[value]
        assert h[H_ERROR_CODE] == code.encode(), (value, h)
        assert h[H_SOURCE_TOPIC] == b"tel" and h[H_SOURCE_PARTITION] == b"2"
        assert int(h[H_SOURCE_OFFSET]) >= 100
    assert m.registry.get_sample_value("bwp_dead_letters_total", {"reason": "invalid_json"}) == 1


def test_same_state_twice_in_one_batch_and_across_batches_yields_one_decision(bwp_settings):
    recs = [make_record(1, s) for s in range(WINDOW)]

    async def go(core):
        first = await core.process(_raw(recs + [recs[-1]]))
        await core.confirm(first)
        again = await core.process(_raw([recs[-1], recs[3]]))
        await core.confirm(again)
        return first, again

    first, again = run_core(bwp_settings, go)
    assert [(d.link_id, d.seq) for d in first.decisions] == [("lk-0001", WINDOW - 1)]
    assert first.duplicates == 1
    assert again.decisions == [] and again.duplicates == 2


def test_unconfirmed_decision_is_made_again_on_redelivery(bwp_settings):
    """Crash between the Redis update and the publish: the redelivered state still gets its decision."""
    recs = [make_record(1, s) for s in range(WINDOW + 2)]

    async def go(core):
        lost = await core.process(_raw(recs))  # decisions built, never published nor confirmed
        redo = await core.process(_raw(recs))  # the broker redelivers the whole batch
        await core.confirm(redo)
        after = await core.process(_raw(recs))
        return lost, redo, after

    lost, redo, after = run_core(bwp_settings, go)
    want = [("lk-0001", s) for s in range(WINDOW - 1, WINDOW + 2)]
    assert [(d.link_id, d.seq) for d in lost.decisions] == want
    assert [(d.link_id, d.seq) for d in redo.decisions] == want
    assert [d.predicted_bandwidth_mbps for d in redo.decisions] == [d.predicted_bandwidth_mbps for d in lost.decisions]
    assert after.decisions == []


class FlakyPredictor(LastValuePredictor):
    """TEST-ONLY: fails its first ``n`` calls."""

    version = "test-flaky"

    def __init__(self, n: int) -> None:
        super().__init__()
        self.fail = n

    def predict(self, windows: np.ndarray) -> StandInPrediction:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("injected predictor failure")
        return super().predict(windows)


def test_predictor_errors_are_retried_not_dropped(bwp_settings):
    recs = [make_record(1, s) for s in range(WINDOW)]

    async def go(core):
        out = await core.process(_raw(recs))
        return out, core.metrics

    out, m = run_core(bwp_settings, go, FlakyPredictor(2), backoff_first_s=0.01)
    assert len(out.decisions) == 1
    assert m.registry.get_sample_value("bwp_predict_errors_total") == 2


def test_predictor_swap_applies_from_the_next_batch(bwp_settings):
    class Other(LastValuePredictor):
        version = "test-other"

    async def go(core):
        a = await core.process(_raw([make_record(1, s) for s in range(WINDOW)]))
        core.set_predictor(Other())
        b = await core.process(_raw([make_record(1, WINDOW)]))
        return a, b, core.metrics

    a, b, m = run_core(bwp_settings, go)
    assert a.decisions[0].model_version == "test-last-value" and b.decisions[0].model_version == "test-other"
    assert m.registry.get_sample_value("bwp_model_info", {"version": "test-other"}) == 1
    assert m.registry.get_sample_value("bwp_model_info", {"version": "test-last-value"}) is None


@pytest.mark.parametrize("defect", ["short", "action_out_of_range", "nan_forecast"])
def test_core_retries_a_predictor_returning_malformed_predictions(bwp_settings, defect):
    class Broken(LastValuePredictor):
        version = "test-broken"

        def predict(self, windows):
            p = super().predict(windows)
            if defect == "short":
                return StandInPrediction(p.bandwidth_mbps[:1], p.action, p.reference_bandwidth_mbps)
            if defect == "action_out_of_range":
                return StandInPrediction(p.bandwidth_mbps, p.action + 6, p.reference_bandwidth_mbps)
            return StandInPrediction(p.bandwidth_mbps * np.nan, p.action, p.reference_bandwidth_mbps)

    async def go(core):
        task = asyncio.ensure_future(core.process(_raw([make_record(k, s) for s in range(WINDOW) for k in (1, 2)])))
        await asyncio.sleep(0.3)
        done = task.done()  # must still be retrying: a malformed batch is never published
        task.cancel()
        return done, core.metrics

    done, m = run_core(bwp_settings, go, Broken(), backoff_first_s=0.01, backoff_cap_s=0.05)
    assert not done
    assert m.registry.get_sample_value("bwp_predict_errors_total") >= 2


def test_decision_payloads_are_schema_valid(bwp_settings):
    import jsonschema

    import stream.schemas

    schema = json.loads((Path(stream.schemas.__file__).parent / "decisions.schema.json").read_text())

    async def go(core):
        return await core.process(_raw([make_record(5, s, profile=None) for s in range(WINDOW + 1)]))

    out = run_core(bwp_settings, go)
    assert len(out.decisions) == 2
    for d in out.decisions:
        jsonschema.validate(json.loads(d.to_bytes()), schema)



def test_split_per_link_bounds_states_per_link_and_keeps_order():
    from stream.window import MAX_UNACKED_PER_LINK, split_per_link

    recs = [make_record(k, s) for s in range(40) for k in range(2)] + [make_record(9, 0)]
    chunks = split_per_link(recs)
    assert [r for c in chunks for r in c] == recs
    for c in chunks:
        per_link = {}
        for r in c:
            per_link[r.link_id] = per_link.get(r.link_id, 0) + 1
        assert max(per_link.values()) <= MAX_UNACKED_PER_LINK
    assert split_per_link([]) == []


def test_crash_after_a_chunk_window_update_loses_no_decision(bwp_settings):
    """A backlog batch with 40 states of one link; the publish of its 2nd chunk 'crashes'
    (after that chunk's Redis update). Redelivery of the whole batch must decide every state."""
    recs = [make_record(1, s) for s in range(40)]
    published: list = []

    async def go(core):
        calls = 0

        async def crashing(out):
            nonlocal calls
            calls += 1
            if calls == 2:
                raise ConnectionError("injected crash before the broker acknowledged")
            published.extend(out.decisions)

        with pytest.raises(ConnectionError):
            await core.run(_raw(recs), crashing)

        async def ok(out):
            published.extend(out.decisions)

        await core.run(_raw(recs), ok)  # the broker redelivers the uncommitted batch

    run_core(bwp_settings, go)
    keys = [(d.link_id, d.seq) for d in published]
    assert sorted(set(keys)) == [("lk-0001", s) for s in range(WINDOW - 1, 40)]
    assert len(keys) == len(set(keys))  # and nothing was decided twice


# --- PipelineCore.stream: the worker's three overlapped stages ---------------------------------
def _stream_until(core, batches, publish, depth, expect_done):
    """Feed ``batches`` through ``core.stream`` and stop once ``expect_done`` batches are done."""
    feed = list(batches)
    done: list = []
    finished = asyncio.Event()

    async def next_batch():
        if feed:
            return feed.pop(0)
        await asyncio.Event().wait()  # no more input: park like an idle consumer

    def on_done(batch):
        done.append(batch)
        if len(done) == expect_done:
            finished.set()

    async def go():
        task = asyncio.ensure_future(core.stream(next_batch, publish, on_done, depth))
        await asyncio.wait_for(finished.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return done

    return go()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_stream_decides_every_state_once_in_order(bwp_settings, depth):
    links, steps = 7, 30
    recs = [make_record(k, s) for s in range(steps) for k in range(links)]
    raw = _raw(recs)
    batches = [raw[i : i + 25] for i in range(0, len(raw), 25)]
    published: list = []
    in_flight_seen: list[int] = []

    async def go(core):
        async def publish(out):
            in_flight_seen.append(len(core._in_flight))
            published.extend(out.decisions)

        return await _stream_until(core, batches, publish, depth, len(batches))

    done = run_core(bwp_settings, go)
    assert [b[0].offset for b in done] == [b[0].offset for b in batches]  # done in order
    keys = [(d.link_id, d.seq) for d in published]
    assert len(keys) == len(set(keys)) == links * (steps - WINDOW + 1)
    for k in range(links):  # per link, decisions are published in seq order
        seqs = [d.seq for d in published if d.link_id == f"lk-{k:04d}"]
        assert seqs == list(range(WINDOW - 1, steps))
    assert max(in_flight_seen) <= depth


def test_stream_bounds_unacknowledged_states_per_link(bwp_settings):
    """A backlog of one link: with depth d, no chunk holds more than MAX_UNACKED_PER_LINK // d
    of its states, so at most MAX_UNACKED_PER_LINK are between window update and confirmation."""
    from stream.window import MAX_UNACKED_PER_LINK

    recs = [make_record(1, s) for s in range(60)]
    sizes: list[int] = []

    async def go(core):
        async def publish(out):
            sizes.append(sum(len(o.records) for o in core._in_flight))

        orig = core._update

        async def update(chunk, out):
            assert len(chunk) <= MAX_UNACKED_PER_LINK // 2
            return await orig(chunk, out)

        core._update = update
        return await _stream_until(core, [_raw(recs)], publish, 2, 1)

    run_core(bwp_settings, go)
    assert sizes and max(sizes) <= MAX_UNACKED_PER_LINK


def test_stream_same_state_in_two_unconfirmed_chunks_gets_one_decision(bwp_settings):
    """The copy of a state arrives in the next batch while the first copy's decision is not
    confirmed yet (pipelining): Redis calls it REDELIVERED, the in-flight check drops it."""
    first = [make_record(1, s) for s in range(WINDOW)]
    again = [make_record(1, WINDOW - 1), make_record(1, WINDOW)]
    published: list = []
    release = asyncio.Event()

    async def go(core):
        async def publish(out):
            if not published and out.decisions:
                # hold the first decision unconfirmed until the next batch was updated
                await asyncio.sleep(0.3)
            published.extend(out.decisions)

        return await _stream_until(core, [_raw(first), _raw(again)], publish, 2, 2)

    run_core(bwp_settings, go)
    keys = [(d.link_id, d.seq) for d in published]
    assert keys == [("lk-0001", WINDOW - 1), ("lk-0001", WINDOW)]
    del release


def test_stream_predicts_the_next_chunk_while_one_waits_for_its_acknowledgement(bwp_settings):
    """Three stages: the model is not idle while the broker acknowledges the previous chunk."""
    batches = [_raw([make_record(k, s) for k in range(3)]) for s in range(WINDOW + 2)]
    predictor = LastValuePredictor()
    overlapped: list[bool] = []

    async def go(core):
        async def publish(out):
            if out.decisions and not overlapped:
                # the first decided chunk's acknowledgement is slow; the next one gets predicted meanwhile
                for _ in range(200):
                    if len(predictor.calls) >= 2:
                        break
                    await asyncio.sleep(0.01)
                overlapped.append(len(predictor.calls) >= 2)

        return await _stream_until(core, batches, publish, 3, len(batches))

    run_core(bwp_settings, go, predictor)
    assert overlapped == [True]
    assert sum(predictor.calls) == 3 * 3  # every state from the 10th on, once


def test_stream_stops_on_a_stage_error_without_acking(bwp_settings):
    recs = [make_record(1, s) for s in range(WINDOW + 2)]
    done: list = []

    async def go(core):
        async def publish(out):
            raise RuntimeError("bug in publish")

        async def next_batch():
            return _raw(recs)

        with pytest.raises(RuntimeError, match="bug in publish"):
            await asyncio.wait_for(core.stream(next_batch, publish, done.append, 2), 30)
        assert not core._in_flight

    run_core(bwp_settings, go)
    assert done == []


# --- BulkFeed: getmany results from Faust's fetch loop to the decision loop --------------------
def test_bulk_feed_keeps_order_splits_at_max_and_bounds_by_records():
    from stream.worker import BulkFeed

    async def go():
        feed = BulkFeed("tel", max_records=10)
        feed.put_nowait(list(range(0, 6)))
        feed.put_nowait(list(range(6, 12)))  # 12 queued: over the bound
        assert not feed.has_room()
        put = asyncio.ensure_future(feed.put(list(range(12, 15))))
        await asyncio.sleep(0.01)
        assert not put.done()  # waits for room
        assert await feed.get(4) == [0, 1, 2, 3]  # split inside the first list
        assert await feed.get(5) == [4, 5, 6, 7, 8]  # and across lists
        await asyncio.wait_for(put, 1)  # 3 left + 3 = room again
        assert await feed.get(100) == [9, 10, 11, 12, 13, 14]
        getter = asyncio.ensure_future(feed.get(100))
        await asyncio.sleep(0.01)
        assert not getter.done()  # empty: waits for the next list
        feed.put_nowait([15])
        assert await asyncio.wait_for(getter, 1) == [15]
        feed.put_nowait([16, 17])
        assert feed.clear() == 2 and feed.has_room()  # a rebalance drops what is queued

    asyncio.run(go())


def test_reorder_puts_per_slot_results_back_in_record_order():
    """Redis Cluster path: calls grouped by slot, results mapped back to record order."""
    from stream.window import BatchUpdate, Outcome, _reorder

    # records 0..4; slot A got [0, 2, 4], slot B got [1, 3]; 2 and 3 have windows
    w2, w3 = np.full((WINDOW, 4), 2.0), np.full((WINDOW, 4), 3.0)
    a = BatchUpdate(np.array([Outcome.FILLING, Outcome.FULL, Outcome.DUPLICATE], np.int8),
                    np.array([5, 0, 0], np.uint8), w2[None])
    b = BatchUpdate(np.array([Outcome.STALE, Outcome.REDELIVERED], np.int8), np.zeros(2, np.uint8), w3[None])
    got = _reorder([a, b], [[0, 2, 4], [1, 3]], 5)
    assert got.outcomes.tolist() == [Outcome.FILLING, Outcome.STALE, Outcome.FULL, Outcome.REDELIVERED, Outcome.DUPLICATE]
    assert got.filled.tolist() == [5, 0, 0, 0, 0]
    assert got.windows[:, 0, 0].tolist() == [2.0, 3.0]
