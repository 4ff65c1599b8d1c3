"""bwp backtest: in-memory window store == Redis script; offline pipeline == worker through Kafka."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from stream.core.jsonl import write_jsonl
from stream.core.records import Decision, Telemetry
from stream.lifecycle.backtest import backtest, run_pipeline
from stream.pipeline.memory_window import MemoryWindowStore
from stream.pipeline.window import Outcome
from tests.helpers.pipeline import (
    QUANTILE_STAND_IN,
    STAND_IN,
    LastValuePredictor,
    QuantileStandIn,
    TopicReader,
    WorkerProcess,
)

T0 = 1_764_000_000_000


def rec(link: str, seq: int, bw: float | None = None, ts: int | None = None) -> Telemetry:
    bw = float(seq) + 0.5 if bw is None else bw
    return Telemetry(link, seq, T0 + seq * 1000 if ts is None else ts, 1.0 + seq % 3, bw, 0.001, 0.99, "datacenter")


def _random_ops(seed: int, n: int = 400) -> list[tuple[str, object]]:
    """Mostly in-order states with duplicates, redeliveries, gaps, out-of-order ones and acks."""
    rng = np.random.default_rng(seed)
    nxt = {"a": 0, "b": 0, "c": 0}
    ops: list[tuple[str, object]] = []
    for _ in range(n):
        link = str(rng.choice(list(nxt)))
        u = rng.random()
        if u < 0.6:
            s = nxt[link]
            nxt[link] += 1 + int(rng.random() < 0.1)  # occasional gap
        elif u < 0.93:
            s = max(0, nxt[link] - 1 - int(rng.integers(0, 40)))  # replayed / late, sometimes beyond KEEP
        else:
            ops.append(("ack", (link, max(0, nxt[link] - 1 - int(rng.integers(0, 5))))))
            continue
        ops.append(("upd", rec(link, s, bw=float(rng.uniform(1, 100)))))
    return ops


async def _apply(store, ops) -> list:
    out = []
    for kind, arg in ops:
        if kind == "ack":
            await store.ack([arg])
        else:
            (u,) = await store.update([arg])
            out.append((u.outcome, None if u.window is None else np.asarray(u.window).tolist(), u.filled))
    return out


def test_memory_store_basic_outcomes():
    st = MemoryWindowStore()

    async def go():
        got = [(await st.update([rec("x", s)]))[0] for s in range(10)]
        assert [u.outcome for u in got[:9]] == [Outcome.FILLING] * 9 and got[8].filled == 9
        assert got[9].outcome is Outcome.FULL and got[9].window[:, 1].tolist() == [s + 0.5 for s in range(10)]
        (again,) = await st.update([rec("x", 9)])
        assert again.outcome is Outcome.REDELIVERED  # decision not acked yet
        await st.ack([("x", 9)])
        (dup,) = await st.update([rec("x", 9)])
        assert dup.outcome is Outcome.DUPLICATE

    asyncio.run(go())


@pytest.mark.integration
@pytest.mark.parametrize("seed", range(4))
def test_memory_store_agrees_with_redis_script(bwp_settings, seed):
    import redis.asyncio as aioredis

    from stream.pipeline.redis_window import WindowStore

    ops = _random_ops(seed)

    async def go():
        client = aioredis.Redis.from_url(bwp_settings.redis_url)
        try:
            redis_out = await _apply(WindowStore(client, f"bt{seed}"), ops)
        finally:
            await client.aclose()
        mem_out = await _apply(MemoryWindowStore(), ops)
        return redis_out, mem_out

    redis_out, mem_out = asyncio.run(go())
    kinds = {o for o, _, _ in redis_out}
    assert {Outcome.FULL, Outcome.FILLING, Outcome.DUPLICATE, Outcome.REDELIVERED, Outcome.STALE} <= kinds
    assert mem_out == redis_out


def _fleet_files(tmp_path, links: int = 6, steps: int = 40):
    from simulator.generator import generate_records

    recs = list(generate_records("mixed", links, steps, 3, step_ms=1000, start_ms=T0))
    # two parts, as a recording would have; plus a re-sent batch (at-least-once producers)
    write_jsonl(tmp_path / "d" / "p1.jsonl.gz", recs[: len(recs) // 2] + recs[:links])
    write_jsonl(tmp_path / "d" / "p2.jsonl.gz", recs[len(recs) // 2 :])
    return recs


def test_backtest_with_stand_in_is_last_value_and_fixed_50(tmp_path):
    recs = _fleet_files(tmp_path)
    out = tmp_path / "dec.jsonl"
    rep = backtest([tmp_path / "d"], tmp_path, predictor=LastValuePredictor(), decisions_out=out, batch_max=64)
    links, steps = 6, 40
    assert rep["pipeline"]["decisions"] == links * (steps - 9)
    assert rep["pipeline"]["duplicates"] == links  # the re-sent first step changed nothing
    assert rep["n"] == links * (steps - 10)  # the last state of each link has no next actual
    p = rep["predictors"]
    # the stand-in echoes the last value, so its scores are last_value's, to the bit
    assert p["lstm"] == p["last_value"]
    assert p["ewma"]["mae"] != p["last_value"]["mae"]
    # the stand-in always picks action 4 = 50 %
    assert rep["policy"]["mean_reward"] == pytest.approx(rep["policy"]["fixed_50_mean_reward"])
    assert rep["policy"]["oracle_mean_reward"] >= rep["policy"]["mean_reward"]
    assert set(rep["by_profile"]) == {"datacenter", "internet"} == set(rep["policy"]["by_profile"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == rep["pipeline"]["decisions"]
    assert {(d["link_id"], d["seq"]) for d in lines} == {(r.link_id, r.seq) for r in recs if r.seq >= 9}
    # deterministic: a second run writes the same file
    backtest(
        [tmp_path / "d"], tmp_path, predictor=LastValuePredictor(), decisions_out=tmp_path / "again.jsonl", batch_max=7
    )
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()


@pytest.mark.integration
@pytest.mark.parametrize("stand_in", [STAND_IN, QUANTILE_STAND_IN])
def test_replay_through_kafka_gives_the_backtest_decisions(bwp_settings, tmp_path, stand_in):
    """Same files: `bwp replay --speed max` + the Kafka worker vs `bwp backtest` (stand-in
    models). With the quantile stand-in the published h = 1 p10/p90 carry the per-link online
    calibration, which must not depend on how the worker cut its micro-batches."""
    from stream.lifecycle.replay import replay

    _fleet_files(tmp_path, links=8, steps=30)
    predictor = LastValuePredictor() if stand_in == STAND_IN else QuantileStandIn()
    decisions, _, _, _ = run_pipeline([tmp_path / "d"], predictor, batch_max=2048)
    want = {(d.link_id, d.seq): d for d in decisions}

    worker = WorkerProcess(bwp_settings, tmp_path / "worker.log", predictor=stand_in).start()
    reader = TopicReader(bwp_settings, bwp_settings.decisions_topic, partitions=bwp_settings.partitions)
    try:
        replay(bwp_settings, [tmp_path / "d"], speed=None, progress=None)
        msgs = reader.poll_until(lambda m: len(m) >= len(want) or not worker.alive(), timeout_s=60)
        assert worker.alive(), worker.log_tail()
        msgs = reader.drain(1.0)
    finally:
        reader.close()
        worker.stop()
    got = [Decision.from_bytes(m.value()) for m in msgs]
    assert len(got) == len(want), worker.log_tail()
    for d in got:
        b = want[(d.link_id, d.seq)]
        assert d.action == b.action
        assert d.predicted_bandwidth_mbps == pytest.approx(b.predicted_bandwidth_mbps, rel=1e-6)
        assert d.allocated_bandwidth_mbps == pytest.approx(b.allocated_bandwidth_mbps, rel=1e-6)
        assert (d.forecast is None) == (b.forecast is None)
        if d.forecast is not None:
            np.testing.assert_allclose(np.array(d.forecast), np.array(b.forecast), rtol=1e-9)
    if stand_in == QUANTILE_STAND_IN:  # the calibration did move the interval (the check is not vacuous)
        assert any(d.forecast[0][1] != pytest.approx(0.8 * d.predicted_bandwidth_mbps) for d in got)


@pytest.mark.slow
def test_backtest_cli_with_a_trained_model(tmp_path, trained_model_dir, capsys):
    from stream.cli.main import main

    _fleet_files(tmp_path, links=4, steps=30)
    model_dir = trained_model_dir
    t = time.monotonic()
    rc = main(["backtest", str(tmp_path / "d"), "--json", "--model-dir", str(model_dir),
               "--decisions-out", str(tmp_path / "dec.jsonl")])  # fmt: skip
    assert rc == 0, time.monotonic() - t
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 4 * 20 and rep["pipeline"]["decisions"] == 4 * 21
    assert set(rep["predictors"]) == {"lstm", "last_value", "ewma", "harmonic_mean", "moving_average"}
    assert -1.0 <= rep["policy"]["mean_reward"] <= 1.0
    assert np.isfinite(rep["predictors"]["lstm"]["mae"])
