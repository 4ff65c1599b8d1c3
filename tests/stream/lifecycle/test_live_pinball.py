"""Live drift on the pinball loss of v2 decisions (stream/lifecycle/live.py, drift.py).

Streams of v2 decisions with known quantiles go through ``LiveScorer``: the served h = 1
quantiles are scored against the naive probabilistic forecaster (last value widened by the
model's training quantiles from its metadata), the pinball histogram is exported per
predictor and profile only, and Page-Hinkley fires when the model is made worse on purpose.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from ml.forecast.naive import NAIVE, NaiveQuantiles
from stream.core.records import Decision, Telemetry
from stream.lifecycle.drift import (
    CLIP,
    LiveAccuracy,
    pinball_losses,
    relative_errors,
    relative_pinballs,
)
from stream.lifecycle.live import NO_WIDENING, LiveScorer, naive_quantiles, naive_widening
from stream.lifecycle.reload import attach_reloader
from stream.metrics.worker import WorkerMetrics

SIGMA = 0.4  # log-normal step noise of the synthetic links
TAUS = (0.1, 0.5, 0.9)
Z = np.array([-1.2815515655446004, 0.0, 1.2815515655446004])  # standard normal quantiles at TAUS


def _metadata(offsets_star: list[float], offsets_internet: list[float] | None = None, horizons=(1, 10, 60)) -> dict:
    """A quantile model's metadata with naive offsets (same for every horizon and forecaster)."""
    nq = NaiveQuantiles(tuple(horizons), TAUS, [0.5] * len(horizons))
    groups = {"*": offsets_star} | ({"internet": offsets_internet} if offsets_internet else {})
    for g, off in groups.items():
        nq.offsets[g] = {name: np.tile(np.asarray(off, float), (len(horizons), 1)) for name in NAIVE}
    return {"head": "quantile", "forecast": {"naive": nq.to_json()}}


def _rec(link: str, seq: int, bw: float, profile: str = "internet") -> Telemetry:
    return Telemetry(link, seq, 1000 * seq, 5.0, bw, 0.0, 1.0, profile)


def _dec(link: str, seq: int, q, profile: str = "internet", version: str = "v", schema: int = 2) -> Decision:
    q = tuple(float(x) for x in q)
    return Decision.make(link, seq, 1000 * seq, q[1], 4, 20.0, version, 0, profile,
                         forecast={1: q, 10: q}, schema_version=schema)  # fmt: skip


def _value(m: WorkerMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


# --- the signal ----------------------------------------------------------------------------
@given(
    st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=20),
    st.lists(st.floats(0, 1e4, allow_nan=False), min_size=20, max_size=20),
)
def test_equal_quantiles_score_their_absolute_relative_error(f, a):
    """2 x mean pinball of quantiles all equal to f is |f - a|: the point signal, so one test takes both."""
    f_arr, a_arr = np.array(f), np.array(a[: len(f)])
    got = relative_pinballs(np.repeat(f_arr[:, None], 3, axis=1), a_arr)
    assert np.allclose(got, relative_errors(f_arr, a_arr), rtol=1e-9, atol=1e-12)


def test_relative_pinball_values_clip_and_non_finite():
    q = np.array([[8.0, 10.0, 12.0], [8.0, 10.0, 12.0], [0.0, 0.0, 0.0], [np.nan, 1.0, 2.0]])
    y = np.array([11.0, 20.0, 5.0, 1.0])
    # y = 11: (0.1*3 + 0.5*1 + 0.1*1) / 3 = 0.3; y = 20: (0.1*12 + 0.5*10 + 0.9*8) / 3 = 4.4666
    assert np.allclose(pinball_losses(q[:2], y[:2]), [0.3, 13.4 / 3])
    got = relative_pinballs(q, y)
    assert got[0] == pytest.approx(2 * 0.3 / 11) and got[1] == pytest.approx(2 * 13.4 / 3 / 20)
    assert got[2] == pytest.approx(min(CLIP, 2 * (0.1 * 5 + 0.5 * 5 + 0.9 * 5) / 3 / 5))
    assert got[3] == CLIP  # a NaN quantile scores like a broken forecast


def test_naive_widening_comes_from_the_models_training_quantiles():
    w = naive_widening(_metadata([-0.5, 0.0, 0.4], [-0.2, 0.01, 0.3]))
    assert w is not None and set(w) == {"*", "internet"}
    assert w["*"] == pytest.approx(tuple(np.exp([-0.5, 0.0, 0.4])))
    assert w["internet"] == pytest.approx(tuple(np.exp([-0.2, 0.01, 0.3])))
    for no in (None, {}, {"head": "point"}, {"forecast": {"naive": {"horizons": [1]}}}):
        assert naive_widening(no) is None  # point model, v1 artefact, malformed: degenerate naive
    assert naive_widening(_metadata([-0.5, 0.0, 0.4], horizons=(10, 60))) is None  # no h = 1
    # levels other than 0.1 / 0.5 / 0.9 are interpolated in the ratio space
    nq = NaiveQuantiles((1,), (0.05, 0.25, 0.5, 0.75, 0.95), [0.5])
    nq.offsets["*"] = {n: np.array([[-1.0, -0.5, 0.0, 0.5, 1.0]]) for n in NAIVE}
    w5 = naive_widening({"forecast": {"naive": nq.to_json()}})
    assert w5 is not None
    assert w5["*"] == pytest.approx(tuple(np.exp([-0.875, 0.0, 0.875])))


def test_naive_quantiles_widen_the_last_value():
    q = naive_quantiles(np.array([100.0, 0.0]), np.array([np.exp([-0.5, 0.0, 0.4])] * 2))
    e = 0.01 * 100 + 1e-6
    assert q[0] == pytest.approx((100 + e) * np.exp([-0.5, 0.0, 0.4]) - e)
    assert q[1] == pytest.approx([0.0, 0.0, 1e-6 * (math.exp(0.4) - 1)])  # an outage stays at ~0


# --- the scorer ----------------------------------------------------------------------------
def _stream(scorer: LiveScorer, served, steps: int, links: int = 20, seed: int = 0, version: str = "v") -> int:
    """``links`` log-normal random walks through ``scorer``; ``served(t, lv)`` gives each decision's
    (p10, p50, p90). Returns the step of the first drift detection (-1: none)."""
    rng = np.random.default_rng(seed)
    bw = np.full(links, 100.0)
    first = -1
    for t in range(steps):
        recs = [_rec(f"lk-{k}", t, float(bw[k])) for k in range(links)]
        decs = [_dec(f"lk-{k}", t, served(t, float(bw[k])), version=version) for k in range(links)]
        before = scorer.live.detections()
        scorer.update(recs, decs)
        if first < 0 and scorer.live.detections() > before:
            first = t
        bw = bw * np.exp(rng.normal(0.0, SIGMA, links))
    return first


def _naive(lv: float) -> np.ndarray:
    """The true conditional quantiles of the next step: the naive forecaster with offsets = SIGMA * Z."""
    return naive_quantiles(np.array([lv]), np.exp(SIGMA * Z)[None, :])[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_model_as_good_as_naive_raises_no_drift(seed):
    m = WorkerMetrics.create()
    s = LiveScorer(m)
    s.set_model("v", _metadata(list(SIGMA * Z)))
    rng = np.random.default_rng(100 + seed)
    first = _stream(s, lambda t, lv: _naive(lv) * np.exp(rng.normal(0, 0.01, 3)), 400, seed=seed)
    assert first == -1 and s.scored == 20 * 399
    stats = s.live.stats()["internet"]
    assert stats["observed"] == 20 * 399
    assert abs(stats["model_error"] - stats["baseline_error"]) < 0.02  # the pinball signals, nearly equal


@pytest.mark.parametrize(("seed", "factor"), [(0, 1.5), (1, 0.5), (2, 1.5), (3, 0.5)])
def test_a_model_made_worse_on_purpose_is_detected(seed, factor):
    """From step 200 on the served quantiles are ``factor`` times the true ones: detected soon after, never before."""
    m = WorkerMetrics.create()
    s = LiveScorer(m)
    s.set_model("v", _metadata(list(SIGMA * Z)))
    first = _stream(s, lambda t, lv: _naive(lv) * (factor if t >= 200 else 1.0), 400, seed=seed)
    assert 200 <= first <= 260, first
    assert _value(m, "bwp_drift_detections_total", profile="internet") >= 1
    ev = s.live.events[0]
    assert ev.recent_model_error > ev.recent_baseline_error + 0.05


def test_collapsed_intervals_are_drift_on_pinball_not_on_the_point_error():
    """From step 200 on p10 = p50 = p90 = the naive median (= the last value): the point error
    equals the naive's, the pinball loss does not. Drift on pinball fires; on the point error
    of the same steps it would not."""
    m = WorkerMetrics.create()
    s = LiveScorer(m)
    s.set_model("v", _metadata(list(SIGMA * Z)))
    first = _stream(s, lambda t, lv: np.repeat(_naive(lv)[1], 3) if t >= 200 else _naive(lv), 400)
    assert 200 <= first <= 260, first
    point = LiveAccuracy()
    rng = np.random.default_rng(0)
    bw = np.full(20, 100.0)
    for _ in range(400):
        nxt = bw * np.exp(rng.normal(0.0, SIGMA, 20))
        med = np.array([_naive(x)[1] for x in bw])
        point.observe_errors("internet", relative_errors(med, nxt), relative_errors(bw, nxt))
        bw = nxt
    assert point.detections() == 0


def test_pinball_histogram_values_and_labels():
    m = WorkerMetrics.create()
    s = LiveScorer(m)
    s.set_model("v", _metadata([-0.5, 0.0, 0.4]))
    s.update([_rec("a", 9, 100.0), _rec("b", 9, 50.0, "datacenter")],
             [_dec("a", 9, (80, 100, 120)), _dec("b", 9, (40, 50, 60), "datacenter")])  # fmt: skip
    s.update([_rec("a", 10, 110.0), _rec("b", 10, 30.0, "datacenter")], [])
    served_a = pinball_losses(np.array([[80.0, 100.0, 120.0]]), np.array([110.0]))[0]
    naive_a = pinball_losses(naive_quantiles(np.array([100.0]), np.exp([[-0.5, 0.0, 0.4]])), np.array([110.0]))[0]
    assert _value(m, "bwp_live_pinball_mbps_sum", predictor="served", profile="internet") == pytest.approx(served_a)
    assert _value(m, "bwp_live_pinball_mbps_sum", predictor="last_value", profile="internet") == pytest.approx(naive_a)
    assert _value(m, "bwp_live_pinball_mbps_count", predictor="served", profile="datacenter") == 1
    assert m.live_pinball._labelnames == ("predictor", "profile")
    labels = {k for fam in m.registry.collect() if fam.name == "bwp_live_pinball_mbps" for x in fam.samples
              for k in x.labels}  # fmt: skip
    assert labels == {"predictor", "profile", "le"}
    text = generate_latest(m.registry)
    assert b"bwp_live_pinball_mbps_bucket" in text and b"link_id" not in text


def test_point_decisions_keep_the_point_error_and_no_pinball():
    m = WorkerMetrics.create()
    s = LiveScorer(m)
    s.set_model("v", _metadata([-0.5, 0.0, 0.4]))
    s.update([_rec("a", 9, 100.0)], [_dec("a", 9, (80, 90, 120), schema=1)])
    s.update([_rec("a", 10, 110.0)], [])
    assert _value(m, "bwp_live_pinball_mbps_count", predictor="served", profile="internet") == 0
    st_ = s.live.stats()["internet"]
    assert st_["model_error"] == pytest.approx(20 / 110) and st_["baseline_error"] == pytest.approx(10 / 110)


def test_each_decision_is_scored_with_its_own_model_versions_widening():
    """A reload registers the new version; decisions of either version use their own naive,
    an unregistered version the plain last value."""
    m = WorkerMetrics.create()
    s = LiveScorer(m)
    s.set_model("old", _metadata([-0.5, 0.0, 0.4]))
    s.set_model("new", _metadata([-0.1, 0.0, 0.1], [-0.2, 0.0, 0.2]))
    q = (90.0, 100.0, 110.0)
    s.update([_rec("a", 1, 100.0), _rec("b", 1, 100.0), _rec("c", 1, 100.0)],
             [_dec("a", 1, q, version="old"), _dec("b", 1, q, version="new"), _dec("c", 1, q, version="pinned")])  # fmt: skip
    assert s._pending["a"][5][3:] == pytest.approx(tuple(np.exp([-0.5, 0.0, 0.4])))
    assert s._pending["b"][5][3:] == pytest.approx(tuple(np.exp([-0.2, 0.0, 0.2])))  # its profile's group
    assert s._pending["c"][5][3:] == NO_WIDENING
    s.set_model("point", {"head": "point"})
    s.update([_rec("d", 1, 100.0, "datacenter")], [_dec("d", 1, q, "datacenter", version="point")])
    assert s._pending["d"][5][3:] == NO_WIDENING


class _App:
    should_stop = True

    def task(self, fn):
        return fn


class _Core:
    def __init__(self) -> None:
        self.predictor = type("P", (), {"version": "old", "metadata": {}})()
        self.swapped: list = []

    def set_predictor(self, p) -> None:
        self.swapped.append(p)
        self.predictor = p


def test_the_reloader_registers_a_swapped_model_before_it_serves(tmp_path):
    core, s = _Core(), LiveScorer(WorkerMetrics.create())
    seen: list = []

    def register(p) -> None:
        s.register(p)
        seen.append(list(core.swapped))  # what was swapped in when the scorer learnt the new model

    def broken(p) -> None:
        raise RuntimeError("a broken callback")

    settings = type("S", (), {"model_dir": tmp_path})()
    w = attach_reloader(_App(), core, settings, WorkerMetrics.create(), on_swap=[broken, register])
    new = type("P", (), {"version": "new", "metadata": _metadata([-0.3, 0.0, 0.3])})()
    w.apply(new)
    w.close()
    assert core.swapped == [new] and seen == [[]]
    assert s._factors("new", "internet") == pytest.approx(tuple(np.exp([-0.3, 0.0, 0.3])))
