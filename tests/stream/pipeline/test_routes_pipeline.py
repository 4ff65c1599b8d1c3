"""Route rankings through the whole pipeline: real embedded broker + Redis, the worker as a
subprocess (stand-in predictor), grouped telemetry in, schema-valid rankings on the routes topic."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from stream.core.records import H_ERROR_CODE, WINDOW
from stream.core.routes import RouteRanking
from stream.core.schemas import load_schema
from tests.helpers.pipeline import TopicReader, WorkerProcess, fleet, produce

pytestmark = pytest.mark.integration


def test_worker_publishes_rankings_on_order_change_only_once_per_change(bwp_settings, tmp_path):
    K, M = 4, 14
    # lk-0000..3 in two groups, each link with a constant bandwidth (the stand-in forecasts the
    # last one), so a group's order changes only while its members first arrive; lk-0003 has
    # lk-0001's bandwidth but half its packets lost, so it ranks last.
    bw = {"lk-0000": 100.0, "lk-0001": 80.0, "lk-0002": 50.0, "lk-0003": 80.0}
    recs = [
        dataclasses.replace(r, route_group=f"rg-{int(r.link_id[-1]) % 2}", bandwidth_mbps=bw[r.link_id],
                            packet_loss=0.5 if r.link_id == "lk-0003" else 0.0)
        for r in fleet(K, M)
    ]  # fmt: skip
    bad = (b"bad", b'{"link_id":"x","seq":1,"ts_ms":1,"latency_ms":1,"bandwidth_mbps":1,"packet_loss":0,'
                   b'"reliability":1,"route_group":"no spaces"}')  # fmt: skip
    s = bwp_settings.model_copy(update={"routes_interval_s": 3600.0})  # no interval republish in this test
    w = WorkerProcess(s, tmp_path / "worker.log").start()
    readers = [TopicReader(s, t) for t in (s.routes_topic, s.dlq_topic, s.decisions_topic)]
    try:
        produce(s, [*recs, bad, *recs[-K:]])  # the last step again: redelivered duplicates
        routes, dlq, decisions = readers
        want_decisions = K * (M - WINDOW + 1)
        decisions.poll_until(
            lambda ms: len({(m.key(), json.loads(m.value())["seq"]) for m in ms}) >= want_decisions, 90
        )
        dlq.poll_until(lambda ms: len(ms) >= 1, 30)
        got = routes.drain(quiet_s=2.0)
        assert w.alive(), w.log_tail()
    finally:
        for r in readers:
            r.close()
        w.stop()
    schema = load_schema("routes")
    rankings = []
    for m in got:
        jsonschema.validate(json.loads(m.value()), schema)
        rk = RouteRanking.from_bytes(m.value())
        assert m.key() == rk.route_group.encode()
        rankings.append(rk)
    by_group: dict[str, list[RouteRanking]] = {}
    for rk in rankings:
        by_group.setdefault(rk.route_group, []).append(rk)
    assert set(by_group) == {"rg-0", "rg-1"}
    for g, rks in by_group.items():
        # Per group the order changes only while members arrive (one, then both; or both in one
        # chunk): one or two rankings, each for an order change; the later states, and the
        # duplicates of the last step, published nothing.
        assert [rk.reason for rk in rks] in (["order"], ["order", "order"]), (g, rks)
        assert [len(rk.members) for rk in rks][-1] == 2
        final = [m.link_id for m in rks[-1].members]
        assert final == (["lk-0000", "lk-0002"] if g == "rg-0" else ["lk-0001", "lk-0003"])
        assert all(m.seq >= WINDOW - 1 for m in rks[-1].members)
    (dead,) = dlq.messages
    assert dict(dead.headers())[H_ERROR_CODE] == b"invalid_route_group"
