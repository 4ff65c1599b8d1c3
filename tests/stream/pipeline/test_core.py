"""PipelineCore.process (decode, window update, decide, confirm) against the real embedded Redis."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from stream.core.records import H_ERROR_CODE, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC, WINDOW
from stream.pipeline.core import InRecord
from tests.helpers.pipeline import LastValuePredictor, StandInPrediction, make_record
from tests.helpers.pipeline_core import decide_all, in_records, run_core

pytestmark = pytest.mark.integration


def test_one_decision_per_full_window_and_batched_predict(bwp_settings):
    pred = LastValuePredictor()
    recs = [make_record(k, s) for s in range(12) for k in range(3)]

    out = decide_all(bwp_settings, recs, pred)
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
    batch = in_records(good[:5])
    for i, raw in enumerate(bad):
        batch.append(InRecord(raw, b"k", "tel", 2, 100 + i))
    batch += in_records(good[5:])

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
        first = await core.process(in_records(recs + [recs[-1]]))
        await core.confirm(first)
        again = await core.process(in_records([recs[-1], recs[3]]))
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
        lost = await core.process(in_records(recs))  # decisions built, never published nor confirmed
        redo = await core.process(in_records(recs))  # the broker redelivers the whole batch
        await core.confirm(redo)
        after = await core.process(in_records(recs))
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

    def predict(self, windows: np.ndarray, profiles=None) -> StandInPrediction:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("injected predictor failure")
        return super().predict(windows)


def test_predictor_errors_are_retried_not_dropped(bwp_settings):
    recs = [make_record(1, s) for s in range(WINDOW)]

    async def go(core):
        out = await core.process(in_records(recs))
        return out, core.metrics

    out, m = run_core(bwp_settings, go, FlakyPredictor(2), backoff_first_s=0.01)
    assert len(out.decisions) == 1
    assert m.registry.get_sample_value("bwp_predict_errors_total") == 2


def test_predictor_swap_applies_from_the_next_batch(bwp_settings):
    class Other(LastValuePredictor):
        version = "test-other"

    async def go(core):
        a = await core.process(in_records([make_record(1, s) for s in range(WINDOW)]))
        core.set_predictor(Other())
        b = await core.process(in_records([make_record(1, WINDOW)]))
        return a, b, core.metrics

    a, b, m = run_core(bwp_settings, go)
    assert a.decisions[0].model_version == "test-last-value" and b.decisions[0].model_version == "test-other"
    assert m.registry.get_sample_value("bwp_model_info", {"version": "test-other"}) == 1
    assert m.registry.get_sample_value("bwp_model_info", {"version": "test-last-value"}) is None


@pytest.mark.parametrize("defect", ["short", "action_out_of_range", "nan_forecast"])
def test_core_retries_a_predictor_returning_malformed_predictions(bwp_settings, defect):
    class Broken(LastValuePredictor):
        version = "test-broken"

        def predict(self, windows, profiles=None):
            p = super().predict(windows)
            if defect == "short":
                return StandInPrediction(p.bandwidth_mbps[:1], p.action, p.reference_bandwidth_mbps)
            if defect == "action_out_of_range":
                return StandInPrediction(p.bandwidth_mbps, p.action + 6, p.reference_bandwidth_mbps)
            return StandInPrediction(p.bandwidth_mbps * np.nan, p.action, p.reference_bandwidth_mbps)

    async def go(core):
        task = asyncio.ensure_future(
            core.process(in_records([make_record(k, s) for s in range(WINDOW) for k in (1, 2)]))
        )
        await asyncio.sleep(0.3)
        done = task.done()  # must still be retrying: a malformed batch is never published
        task.cancel()
        return done, core.metrics

    done, m = run_core(bwp_settings, go, Broken(), backoff_first_s=0.01, backoff_cap_s=0.05)
    assert not done
    assert m.registry.get_sample_value("bwp_predict_errors_total") >= 2


def test_decision_payloads_are_schema_valid(bwp_settings):
    import jsonschema

    import stream.core.schemas

    schema = stream.core.schemas.decisions_schema(3)  # the worker's default

    async def go(core):
        return await core.process(in_records([make_record(5, s, profile=None) for s in range(WINDOW + 1)]))

    out = run_core(bwp_settings, go)
    assert len(out.decisions) == 2
    for d in out.decisions:
        jsonschema.validate(json.loads(d.to_bytes()), schema)


def test_reorder_puts_per_slot_results_back_in_record_order():
    """Redis Cluster path: calls grouped by slot, results mapped back to record order."""
    from stream.pipeline.redis_window import _reorder
    from stream.pipeline.window import BatchUpdate, Outcome

    # records 0..4; slot A got [0, 2, 4], slot B got [1, 3]; 2 and 3 have windows
    w2, w3 = np.full((WINDOW, 4), 2.0), np.full((WINDOW, 4), 3.0)
    a = BatchUpdate(
        np.array([Outcome.FILLING, Outcome.FULL, Outcome.DUPLICATE], np.int8), np.array([5, 0, 0], np.uint8), w2[None]
    )
    b = BatchUpdate(np.array([Outcome.STALE, Outcome.REDELIVERED], np.int8), np.zeros(2, np.uint8), w3[None])
    got = _reorder([a, b], [[0, 2, 4], [1, 3]], 5)
    assert got.outcomes.tolist() == [
        Outcome.FILLING,
        Outcome.STALE,
        Outcome.FULL,
        Outcome.REDELIVERED,
        Outcome.DUPLICATE,
    ]
    assert got.filled.tolist() == [5, 0, 0, 0, 0]
    assert got.windows[:, 0, 0].tolist() == [2.0, 3.0]


class _ContextPredictor(LastValuePredictor):
    """A stand-in that reads the link states (``context = True``) and records them."""

    context = True

    def __init__(self) -> None:
        super().__init__()
        self.states: list[np.ndarray] = []

    def predict(self, windows, profiles=None, states=None):
        assert states is not None and states.shape == (len(windows), 6)
        self.states.append(np.array(states))
        return super().predict(windows, profiles)


def test_a_context_predictor_gets_each_windows_link_state(bwp_settings):
    """The core passes the window store's long-memory state of each window (the state after its
    last step, stream.core.longmem) to a predictor that reads context; others are called as before."""
    from stream.core.longmem import initial_state, update_state

    pred = _ContextPredictor()
    recs = [make_record(k, s) for s in range(14) for k in range(2)]

    out = decide_all(bwp_settings, recs, pred)
    got = np.concatenate(pred.states)
    want = []
    state = {r.link_id: initial_state() for r in recs}
    for r in recs:
        state[r.link_id] = update_state(state[r.link_id], r.bandwidth_mbps)
        if r.seq >= WINDOW - 1:
            want.append(state[r.link_id])
    order = [(d.link_id, d.seq) for d in out.decisions]
    assert order == [(r.link_id, r.seq) for r in recs if r.seq >= WINDOW - 1]
    assert got.tobytes() == np.array(want).tobytes()
