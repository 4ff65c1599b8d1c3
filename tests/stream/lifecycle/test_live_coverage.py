"""Live coverage of the h = 1 quantiles of v2 decisions (bwp_live_quantile_* counters)."""

from __future__ import annotations

from stream.core.records import Decision, Telemetry
from stream.lifecycle.live import LiveScorer
from stream.metrics.worker import WorkerMetrics


def _rec(link: str, seq: int, bw: float, profile: str = "internet") -> Telemetry:
    return Telemetry(link, seq, 1000 * seq, 5.0, bw, 0.0, 1.0, profile)


def _dec(link: str, seq: int, q: tuple[float, float, float], profile: str = "internet", v: int = 2) -> Decision:
    return Decision.make(link, seq, 1000 * seq, q[1], 4, 20.0, "v", 0, profile,
                         forecast={1: q, 10: q}, schema_version=v)  # fmt: skip


def _value(m: WorkerMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_coverage_counts_each_quantile_once_per_scored_step():
    m = WorkerMetrics.create()
    s = LiveScorer(m)
    s.update([_rec("a", 9, 10.0), _rec("b", 9, 10.0)], [_dec("a", 9, (8, 10, 12)), _dec("b", 9, (8, 10, 12))])
    s.update([_rec("a", 10, 11.0), _rec("b", 10, 7.0)], [])  # a: only below p90; b: below all three
    s.update([_rec("a", 10, 11.0)], [])  # redelivered: not scored again
    assert _value(m, "bwp_live_quantile_scored_total", profile="internet", horizon="1") == 2
    below = {q: _value(m, "bwp_live_quantile_below_total", profile="internet", horizon="1", quantile=q)
             for q in ("0.1", "0.5", "0.9")}  # fmt: skip
    assert below == {"0.1": 1, "0.5": 1, "0.9": 2}


def test_v1_decisions_are_scored_for_error_but_not_for_coverage():
    m = WorkerMetrics.create()
    s = LiveScorer(m)
    s.update([_rec("a", 9, 10.0)], [_dec("a", 9, (8, 10, 12), v=1)])
    s.update([_rec("a", 10, 11.0)], [])
    assert s.scored == 1
    assert _value(m, "bwp_live_quantile_scored_total", profile="internet", horizon="1") == 0
