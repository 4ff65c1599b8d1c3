"""Live accuracy in the worker (stream/live.py): PipelineCore-level, no Kafka.

Known records go through the worker's own ``PipelineCore`` (in-memory window store) with a
deterministic TEST-ONLY predictor; the exported histograms must equal an offline computation
on the same records.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from stream.core.records import WINDOW, Telemetry
from stream.lifecycle.drift import CLIP, FLOOR, LiveAccuracy
from stream.lifecycle.live import LiveScorer, attach_live_accuracy
from stream.metrics.worker import WorkerMetrics
from stream.pipeline.core import InRecord, PipelineCore
from stream.pipeline.memory_window import MemoryWindowStore


@dataclass
class _Pred:
    bandwidth_mbps: np.ndarray
    action: np.ndarray
    reference_bandwidth_mbps: np.ndarray


class AffinePredictor:
    """TEST-ONLY: forecast = 0.7 * last + 0.3 * mean of the window's bandwidth (+ ``bias`` from ``bad_from`` calls on)."""

    version = "test-affine"

    def __init__(self, bias: float = 0.0, bad_after_calls: int | None = None) -> None:
        self.bias = bias
        self.bad_after_calls = bad_after_calls
        self.calls = 0

    @staticmethod
    def forecast(window: np.ndarray) -> np.ndarray:
        """(N, 10, 4) -> (N,)"""
        bw = window[:, :, 1]
        return 0.7 * bw[:, -1] + 0.3 * bw.mean(axis=1)

    def predict(self, windows: np.ndarray, profiles=None) -> _Pred:
        self.calls += 1
        f = self.forecast(windows)
        if self.bad_after_calls is not None and self.calls > self.bad_after_calls:
            f = f + self.bias
        n = len(windows)
        return _Pred(f, np.full(n, 3, dtype=np.int64), windows[:, :, 1].max(axis=1))


def _records(seed: int = 1, steps: int = 40) -> list[Telemetry]:
    """3 datacenter + 2 internet links, ``steps`` steps; link 1 skips seqs 20-21, link 3 has no profile."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(steps):
        for k in range(5):
            if k == 1 and s in (20, 21):
                continue
            profile = "datacenter" if k < 3 else "internet"
            base = 500.0 if profile == "datacenter" else 20.0
            bw = float(max(0.0, base * (1 + 0.2 * np.sin(s / 5 + k)) + rng.normal(0, base * 0.05)))
            if k == 4 and s == 30:
                bw = 0.0  # an outage: the relative error divides by the floor and clips
            out.append(Telemetry(link_id=f"lk-{k}", seq=s, ts_ms=1_700_000_000_000 + s * 1000, latency_ms=5.0,
                                 bandwidth_mbps=bw, packet_loss=0.0, reliability=0.99,
                                 profile=None if k == 3 else profile))  # fmt: skip
    return out


def _offline(records: list[Telemetry]) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(predictor, profile) -> (abs errors, relative errors), computed without the pipeline."""
    by_link: dict[str, list[Telemetry]] = defaultdict(list)
    for r in records:
        by_link[r.link_id].append(r)
    res: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for states in by_link.values():
        states.sort(key=lambda r: r.seq)
        feats = np.array([r.features() for r in states])  # (n, 4)
        for i in range(WINDOW - 1, len(states) - 1):
            nxt = states[i + 1]
            if nxt.seq != states[i].seq + 1:
                continue  # gap: no actual for the forecast step
            f = float(AffinePredictor.forecast(feats[None, i - WINDOW + 1 : i + 1])[0])
            actual = nxt.bandwidth_mbps
            profile = states[i].profile or "unknown"
            for name, fc in (("lstm", f), ("last_value", states[i].bandwidth_mbps)):
                err = abs(fc - actual)
                res[(name, profile)][0].append(err)
                res[(name, profile)][1].append(min(CLIP, err / max(actual, FLOOR)))
    return res


def _run(core: PipelineCore, batches: list[list[Telemetry]]) -> list:
    async def go() -> list:
        outs = []
        for b in batches:
            outs.append(await core.process([InRecord(r.to_bytes(), r.link_id.encode()) for r in b]))
        return outs

    return asyncio.run(go())


def _sample(m: WorkerMetrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_exported_errors_equal_the_offline_computation() -> None:
    recs = _records()
    metrics = WorkerMetrics.create()
    core = PipelineCore(MemoryWindowStore(), AffinePredictor(), metrics)
    scorer = LiveScorer(metrics)
    core.observers.append(scorer)
    # uneven micro-batches, and a re-sent stretch (redelivered: decided again, must not be scored twice)
    batches = [recs[i : i + n] for i, n in zip(range(0, len(recs), 37), [37] * 10)]
    batches.insert(4, recs[100:130])
    outs = _run(core, batches)
    assert sum(len(o.decisions) for o in outs) > 150

    want = _offline(recs)
    assert {p for _, p in want} == {"datacenter", "internet", "unknown"}
    n_pairs = 0
    for (name, profile), (abs_e, rel_e) in want.items():
        labels = {"predictor": name, "profile": profile}
        assert _sample(metrics, "bwp_live_abs_error_mbps_count", **labels) == len(abs_e)
        assert _sample(metrics, "bwp_live_abs_error_mbps_sum", **labels) == pytest.approx(sum(abs_e), rel=1e-9)
        assert _sample(metrics, "bwp_live_rel_error_count", **labels) == len(rel_e)
        assert _sample(metrics, "bwp_live_rel_error_sum", **labels) == pytest.approx(sum(rel_e), rel=1e-9)
        if name == "lstm":
            n_pairs += len(abs_e)
    assert scorer.scored == n_pairs == 4 * 30 + 27  # link 1 has 38 states and the 19 -> 22 gap
    # the two predictors really differ (the test would not notice swapped labels otherwise)
    dc = {"profile": "datacenter"}
    assert _sample(metrics, "bwp_live_abs_error_mbps_sum", predictor="lstm", **dc) != pytest.approx(
        _sample(metrics, "bwp_live_abs_error_mbps_sum", predictor="last_value", **dc)
    )
    assert scorer.live.stats()["datacenter"]["observed"] == len(want[("lstm", "datacenter")][0])


def test_drift_is_counted_and_requests_a_retrain_in_redis(bwp_settings) -> None:
    """A model that goes bad mid-stream: detection counted per profile, flag set in the real Redis."""
    import redis

    recs = _records(seed=2, steps=100)
    metrics = WorkerMetrics.create()
    core = PipelineCore(MemoryWindowStore(), AffinePredictor(bias=400.0, bad_after_calls=30), metrics)
    scorer = attach_live_accuracy(core, bwp_settings, metrics)
    _run(core, [recs[i : i + 5] for i in range(0, len(recs), 5)])  # one step per batch

    assert scorer.live.detections("internet") >= 1  # +400 Mbit/s on ~20 Mbit/s links: clipped at 200 %
    detected = set()
    for profile in ("datacenter", "internet", "unknown"):  # link 3 has no profile: "unknown"
        assert _sample(metrics, "bwp_drift_detections_total", profile=profile) == scorer.live.detections(profile)
        if scorer.live.detections(profile):
            detected.add(profile)
    r = redis.Redis.from_url(bwp_settings.redis_url)
    try:
        key = f"{bwp_settings.key_prefix}:retrain_requested"
        raw = None
        for _ in range(50):  # the flag is written by a background thread
            raw = r.get(key)
            if raw:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert raw, "retrain flag not set in Redis"
        flag = json.loads(raw)
        # each detection writes the flag from its own thread: the last write wins, any detected profile
        assert flag["profile"] in detected and f"drift on profile {flag['profile']}" in flag["reason"]
    finally:
        r.close()
    assert not (bwp_settings.model_dir / "retrain-requested.json").exists()  # Redis only: model dir is read-only


def test_memory_is_bounded_and_a_moved_link_is_not_scored() -> None:
    metrics = WorkerMetrics.create()

    @dataclass
    class D:
        link_id: str
        seq: int
        predicted_bandwidth_mbps: float
        profile: str = "datacenter"

    def rec(link: str, seq: int, bw: float) -> Telemetry:
        return Telemetry(link_id=link, seq=seq, ts_ms=1, latency_ms=1.0, bandwidth_mbps=bw, packet_loss=0.0,
                         reliability=1.0, profile="datacenter")  # fmt: skip

    s = LiveScorer(metrics, LiveAccuracy(), max_links=2)
    s.update([rec("a", 9, 10.0), rec("b", 9, 10.0), rec("c", 9, 10.0)],
             [D("a", 9, 11.0), D("b", 9, 12.0), D("c", 9, 13.0)])  # fmt: skip
    assert len(s) == 2 and s.evicted == 1  # "a", least recently updated, is gone
    s.update([rec("a", 10, 10.0), rec("b", 10, 10.0), rec("c", 10, 10.0)], [])
    assert s.scored == 2  # b and c; a's first state after eviction is not scored
    lab = {"predictor": "lstm", "profile": "datacenter"}
    assert _sample(metrics, "bwp_live_abs_error_mbps_sum", **lab) == pytest.approx(2.0 + 3.0)
    # the same next state again (redelivery) is not scored twice
    s.update([rec("b", 10, 10.0)], [])
    assert s.scored == 2


def test_a_failing_observer_never_stops_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    metrics = WorkerMetrics.create()
    s = LiveScorer(metrics)

    class Broken:
        decisions = property(lambda self: 1 / 0)

    s([], Broken())  # logged, not raised
    assert "live accuracy: scoring a micro-batch failed" in caplog.text


def _stream(
    links: int, steps: int, gaps: list[bool], resend: list[tuple[int, int]]
) -> tuple[list[Telemetry], list[Telemetry]]:
    """(unique states, the stream with re-sent copies); seq gaps where ``gaps`` says so."""
    rng = np.random.default_rng(len(gaps) * 31 + steps)
    uniq, seqs = [], [0] * links
    for s in range(steps):
        for k in range(links):
            seqs[k] += 2 if gaps[(s * links + k) % len(gaps)] else 1
            uniq.append(Telemetry(link_id=f"lk-{k}", seq=seqs[k], ts_ms=1_700_000_000_000 + s, latency_ms=3.0,
                                  bandwidth_mbps=float(rng.uniform(0, 100)), packet_loss=0.0, reliability=1.0,
                                  profile="internet" if k % 2 else "datacenter"))  # fmt: skip
    stream = list(uniq)
    for at, back in resend:  # a copy of an earlier state, delivered again later
        pos = min(at, len(stream))
        stream.insert(pos, stream[max(0, pos - 1 - back)])
    return uniq, stream


@hsettings(max_examples=30, deadline=None)
@given(
    links=st.integers(1, 3),
    steps=st.integers(10, 30),
    gaps=st.lists(st.booleans(), min_size=1, max_size=7).map(lambda g: g if not all(g) else g + [False]),
    resend=st.lists(st.tuples(st.integers(0, 90), st.integers(0, 40)), max_size=12),
    batch=st.integers(1, 40),
)
def test_redelivery_and_gaps_never_change_the_scores(links, steps, gaps, resend, batch) -> None:
    """Any batching, seq gaps and re-sent states: the exported counts and sums equal the offline
    computation on the unique states (each forecast scored at most once, gaps never scored)."""
    uniq, stream = _stream(links, steps, gaps, resend)
    metrics = WorkerMetrics.create()
    core = PipelineCore(MemoryWindowStore(), AffinePredictor(), metrics)
    core.observers.append(LiveScorer(metrics))
    _run(core, [stream[i : i + batch] for i in range(0, len(stream), batch)])
    want = _offline(uniq)
    for profile in ("datacenter", "internet"):
        for name in ("lstm", "last_value"):
            abs_e, rel_e = want.get((name, profile), ([], []))
            labels = {"predictor": name, "profile": profile}
            assert _sample(metrics, "bwp_live_abs_error_mbps_count", **labels) == len(abs_e)
            assert _sample(metrics, "bwp_live_abs_error_mbps_sum", **labels) == pytest.approx(sum(abs_e), rel=1e-9)
            assert _sample(metrics, "bwp_live_rel_error_sum", **labels) == pytest.approx(sum(rel_e), rel=1e-9)
