"""PipelineCore.stream (the worker's three overlapped stages), its per-link chunking and the
BulkFeed that feeds it, against the real embedded Redis."""

from __future__ import annotations

import asyncio

import pytest

from stream.core.records import WINDOW
from tests.helpers.pipeline import LastValuePredictor, make_record
from tests.helpers.pipeline_core import in_records, run_core

pytestmark = pytest.mark.integration


def test_split_per_link_bounds_states_per_link_and_keeps_order():
    from stream.pipeline.window import MAX_UNACKED_PER_LINK, split_per_link

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

        async def once():  # the batch, then park like an idle consumer
            batches = [in_records(recs)]

            async def next_batch():
                if batches:
                    return batches.pop()
                await asyncio.Event().wait()

            return next_batch

        # depth 1: chunks of MAX_UNACKED_PER_LINK states of a link, nothing overlapped
        with pytest.raises(ConnectionError):
            await core.stream(await once(), crashing, lambda batch: None, depth=1)

        async def ok(out):
            published.extend(out.decisions)

        # the broker redelivers the uncommitted batch
        await _stream_until(core, [in_records(recs)], ok, depth=1, expect_done=1)

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
    raw = in_records(recs)
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
    from stream.pipeline.window import MAX_UNACKED_PER_LINK

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
        return await _stream_until(core, [in_records(recs)], publish, 2, 1)

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

        return await _stream_until(core, [in_records(first), in_records(again)], publish, 2, 2)

    run_core(bwp_settings, go)
    keys = [(d.link_id, d.seq) for d in published]
    assert keys == [("lk-0001", WINDOW - 1), ("lk-0001", WINDOW)]
    del release


def test_stream_predicts_the_next_chunk_while_one_waits_for_its_acknowledgement(bwp_settings):
    """Three stages: the model is not idle while the broker acknowledges the previous chunk."""
    batches = [in_records([make_record(k, s) for k in range(3)]) for s in range(WINDOW + 2)]
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
            return in_records(recs)

        with pytest.raises(RuntimeError, match="bug in publish"):
            await asyncio.wait_for(core.stream(next_batch, publish, done.append, 2), 30)
        assert not core._in_flight

    run_core(bwp_settings, go)
    assert done == []


# --- BulkFeed: getmany results from Faust's fetch loop to the decision loop --------------------
def test_bulk_feed_keeps_order_splits_at_max_and_bounds_by_records():
    from stream.pipeline.feed import BulkFeed

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
