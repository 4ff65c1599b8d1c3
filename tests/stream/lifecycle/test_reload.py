"""Model hot reload (stream/reload.py).

Unit tests drive ``ModelWatcher`` with real registry folders and the real
``ml.serving.predictor.load_predictor``; the integration tests run the worker as a subprocess
against the embedded broker and Redis and promote versions while it decides.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stream.core.records import WINDOW, Telemetry
from stream.metrics.scrape import scrape
from stream.pipeline.core import InRecord, PipelineCore
from tests.helpers.pipeline import TopicReader, WorkerProcess, fleet, produce


# --- registry helpers -------------------------------------------------------------------------
def registry_copy(trained_model_dir: Path, dest: Path) -> tuple[Path, str]:
    """A private copy of the quick-trained registry; returns (dir, its current version)."""
    from ml.serving.registry import current_version

    shutil.copytree(trained_model_dir, dest)
    v = current_version(dest)
    assert v
    return dest, v


def clone_version(model_dir: Path, src: str) -> str:
    """Register a new version holding ``src``'s artefacts (its checksums stay valid, metadata
    names the new version), not promoted. Cheaper than training a second model."""
    from ml.serving.registry import METADATA_FILE, new_version_name, verify_version

    name = new_version_name()
    while (model_dir / name).exists():
        name = new_version_name()
    tmp = model_dir / f".{name}.tmp"
    shutil.copytree(model_dir / src, tmp)
    meta = json.loads((tmp / METADATA_FILE).read_text())
    meta["version"] = name
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.rename(model_dir / name)  # appears complete, as save_version does
    verify_version(model_dir, name)
    return name


def tamper(model_dir: Path, version: str) -> None:
    """Modify lstm.keras after registration (its checksum no longer matches)."""
    with open(model_dir / version / "lstm.keras", "ab") as fh:
        fh.write(b"\0tampered")


def wrong_shape_version(model_dir: Path, src: str) -> str:
    """A version whose checksums are valid but whose LSTM reads (10, 3) windows."""
    import keras

    from ml.serving.registry import METADATA_FILE, sha256_file

    name = clone_version(model_dir, src)
    path = model_dir / name
    m = keras.Sequential([keras.Input((WINDOW, 3)), keras.layers.LSTM(4), keras.layers.Dense(1)])
    m.save(path / "lstm.keras")
    meta = json.loads((path / METADATA_FILE).read_text())
    meta["sha256"]["lstm.keras"] = sha256_file(path / "lstm.keras")
    (path / METADATA_FILE).write_text(json.dumps(meta))
    return name


# --- unit: the watcher with real registry folders ---------------------------------------------
def _batch(link: str, seqs: range) -> list[InRecord]:
    recs = [Telemetry(link_id=link, seq=s, ts_ms=1_700_000_000_000 + s, latency_ms=5.0, bandwidth_mbps=50.0 + s,
                      packet_loss=0.0, reliability=0.99, profile="datacenter") for s in seqs]  # fmt: skip
    return [InRecord(r.to_bytes(), r.link_id.encode()) for r in recs]


def _reloads(metrics, result: str) -> float:
    return metrics.registry.get_sample_value("bwp_model_reloads_total", {"result": result}) or 0.0


def test_watcher_swaps_verified_versions_and_refuses_broken_ones(trained_model_dir, tmp_path, caplog) -> None:
    from ml.serving.predictor import load_predictor
    from ml.serving.registry import promote_version, rollback
    from stream.lifecycle.reload import ModelWatcher
    from stream.metrics.worker import WorkerMetrics
    from stream.pipeline.memory_window import MemoryWindowStore

    caplog.set_level(logging.WARNING, logger="bwp.reload")
    reg, a = registry_copy(trained_model_dir, tmp_path / "models")
    b = clone_version(reg, a)
    c = clone_version(reg, a)
    tamper(reg, c)
    d = wrong_shape_version(reg, a)

    metrics = WorkerMetrics.create()
    core = PipelineCore(MemoryWindowStore(), load_predictor(reg), metrics)
    now = [0.0]
    calls: list[str] = []

    def loader(model_dir: Path, version: str):
        calls.append(version)
        return load_predictor(model_dir, version)

    w = ModelWatcher(reg, core.predictor.version, core.set_predictor, metrics, loader=loader, retry_after_s=600,
                     clock=lambda: now[0])  # fmt: skip

    async def scenario() -> None:
        assert await w.tick() is None and calls == []  # pointer = what is served: nothing to do
        out = await core.process(_batch("lk-1", range(0, 12)))
        assert {x.model_version for x in out.decisions} == {a}

        promote_version(reg, b)
        assert await w.tick() == b
        assert core.predictor.version == b and _reloads(metrics, "ok") == 1
        assert metrics.registry.get_sample_value("bwp_model_info", {"version": b}) == 1
        out = await core.process(_batch("lk-1", range(12, 14)))
        assert [x.model_version for x in out.decisions] == [b, b]

        promote_version(reg, c)  # tampered after registration
        assert await w.tick() is None
        assert core.predictor.version == b and _reloads(metrics, "failed") == 1
        assert f"refused version {c}, still serving {b}" in caplog.text and "does not match its checksum" in caplog.text
        for _ in range(3):  # no tight retry loop on the same broken version
            assert await w.tick() is None
        assert calls.count(c) == 1
        out = await core.process(_batch("lk-1", range(14, 15)))
        assert [x.model_version for x in out.decisions] == [b]

        promote_version(reg, d)  # valid checksums, wrong LSTM input shape
        assert await w.tick() is None and _reloads(metrics, "failed") == 2
        assert "maps [10, 3]" in caplog.text and core.predictor.version == b

        now[0] += 601  # the long back-off is over: one more attempt
        assert await w.tick() is None and calls.count(d) == 2 and _reloads(metrics, "failed") == 3

        assert rollback(reg) == c  # the pointer moved (back to c): c gets a new attempt, still refused
        assert await w.tick() is None and calls.count(c) == 2 and core.predictor.version == b
        assert rollback(reg) == b  # back to the served version: nothing to load
        assert await w.tick() is None and calls.count(b) == 1
        promote_version(reg, a)  # a rollout back to the first version is a normal reload
        assert await w.tick() == a and core.predictor.version == a and _reloads(metrics, "ok") == 2

    asyncio.run(scenario())
    w.close()


@dataclass
class _P:
    bandwidth_mbps: np.ndarray
    action: np.ndarray
    reference_bandwidth_mbps: np.ndarray


class SlowEcho:
    """TEST-ONLY predictor: echoes the last bandwidth after ``delay_s``."""

    def __init__(self, version: str, delay_s: float = 0.0) -> None:
        self.version = version
        self.delay_s = delay_s

    def predict(self, windows: np.ndarray, profiles=None) -> _P:
        time.sleep(self.delay_s)
        n = len(windows)
        return _P(windows[:, -1, 1].copy(), np.zeros(n, np.int64), windows[:, :, 1].max(axis=1))


def test_a_swap_during_a_batch_applies_from_the_next_batch() -> None:
    from stream.lifecycle.reload import ModelWatcher
    from stream.metrics.worker import WorkerMetrics
    from stream.pipeline.memory_window import MemoryWindowStore

    class Loader:
        def __call__(self, model_dir: Path, version: str) -> SlowEcho:
            return SlowEcho(version)

    metrics = WorkerMetrics.create()
    core = PipelineCore(MemoryWindowStore(), SlowEcho("old", delay_s=0.5), metrics)

    async def scenario(reg: Path) -> None:
        w = ModelWatcher(reg, "old", core.set_predictor, metrics, loader=Loader())
        batch = asyncio.create_task(core.process(_batch("lk-9", range(0, 30))))
        await asyncio.sleep(0.1)  # the batch is inside predict now
        (reg / "current").write_text("new\n")
        assert await w.tick() == "new" and core.predictor.version == "new"
        out = await batch
        assert len(out.decisions) == 30 - WINDOW + 1 and {x.model_version for x in out.decisions} == {"old"}
        out2 = await core.process(_batch("lk-9", range(30, 32)))
        assert [x.model_version for x in out2.decisions] == ["new", "new"]
        w.close()

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(scenario(Path(d)))


def test_smoke_check_refuses_a_predictor_that_returns_nan() -> None:
    from stream.lifecycle.reload import smoke_check

    class NaNModel(SlowEcho):
        def predict(self, windows: np.ndarray, profiles=None) -> _P:
            p = super().predict(windows)
            p.bandwidth_mbps[:] = np.nan
            return p

    smoke_check(SlowEcho("ok"))
    with pytest.raises(ValueError, match="bandwidth_mbps"):
        smoke_check(NaNModel("nan"))


# --- integration: a running worker ------------------------------------------------------------
def _metrics(port: int) -> dict[tuple[str, tuple], float]:
    samples = scrape(port, timeout_s=2.0)
    assert samples is not None, f"no /metrics on port {port}"
    return samples


def _wait_metric(port: int, name: str, labels: dict, want: float, timeout_s: float, worker: WorkerProcess) -> float:
    end = time.monotonic() + timeout_s
    got = None
    while time.monotonic() < end and worker.alive():
        try:
            got = _metrics(port).get((name, tuple(sorted(labels.items()))))
        except OSError:
            got = None  # not serving yet
        if got == want:
            return got
        time.sleep(0.3)
    raise AssertionError(f"{name}{labels} = {got}, expected {want} within {timeout_s}s\n{worker.log_tail()}")


def _decisions(msgs: list) -> list[dict]:
    return [json.loads(m.value()) for m in msgs]


@pytest.fixture
def reg_worker(bwp_settings, trained_model_dir, tmp_path):
    """(settings with a private registry copy, version A, metrics port, start())."""
    from stream.ops.stack import free_port

    reg, a = registry_copy(trained_model_dir, tmp_path / "models")
    settings = bwp_settings.model_copy(update={"model_dir": reg})
    port = free_port()
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / "worker.log", predictor=None, extra=["--metrics-port", str(port)])
        started.append(w)
        return w.start()

    yield settings, a, port, start
    for w in started:
        w.stop()


@pytest.mark.integration
def test_hot_reload_under_load_loses_and_duplicates_nothing(reg_worker) -> None:
    """K links stream while B is promoted: every state decided exactly once, by A then B per link."""
    from ml.serving.registry import promote_version

    settings, a, port, start = reg_worker
    b = clone_version(settings.model_dir, a)
    K = 10
    w = start()
    reader = TopicReader(settings, settings.decisions_topic)
    try:
        produce(settings, fleet(K, 14))
        reader.poll_until(lambda m: len(m) >= K * (14 - WINDOW + 1) or not w.alive(), 120)
        assert len(reader.messages) >= K * (14 - WINDOW + 1), w.log_tail()
        promote_version(settings.model_dir, b)
        # keep streaming, one step every ~0.2 s, until B decided a few steps (bounded)
        steps, b_since = 14, None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (b_since is None or steps < b_since + 4):
            produce(settings, fleet(K, 1, start_seq=steps))
            steps += 1
            reader.poll_until(lambda m: False, 0.2)
            if b_since is None and any(d["model_version"] == b for d in _decisions(reader.messages)):
                b_since = steps
        assert b_since is not None, f"B never served within 60 s\n{w.log_tail()}"
        want = K * (steps - WINDOW + 1)
        reader.poll_until(lambda m: len(m) >= want or not w.alive(), 60)
        msgs = reader.drain(quiet_s=1.5)
    finally:
        reader.close()
    assert w.alive(), w.log_tail()
    ds = _decisions(msgs)
    keys = [(d["link_id"], d["seq"]) for d in ds]
    assert len(keys) == len(set(keys)) == want, (len(keys), len(set(keys)), want)
    assert {d["model_version"] for d in ds} == {a, b}
    by_link: dict[str, list[tuple[int, str]]] = {}
    for d in ds:
        by_link.setdefault(d["link_id"], []).append((d["seq"], d["model_version"]))
    for link, seq_v in by_link.items():
        versions = [v for _, v in sorted(seq_v)]
        first_b = versions.index(b)
        assert set(versions[first_b:]) == {b}, f"{link}: A after B: {versions}"
    m = _metrics(port)
    assert m[("bwp_model_reloads_total", (("result", "ok"),))] == 1
    assert m[("bwp_model_info", (("version", b),))] == 1
    assert f"model reload: now serving {b} (was {a}" in w.log_tail(20_000)
    # The heap frozen at start-up held A: it was re-frozen after the swap, one more full collection.
    deadline = time.monotonic() + 20
    while "heap re-frozen after a model swap" not in w.log_tail(20_000) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "heap re-frozen after a model swap" in w.log_tail(20_000)
    assert _metrics(port)[("bwp_gc_pause_seconds_count", (("generation", "2"),))] >= 2
    # live accuracy ran in the worker too: every decision but each link's last one was scored, twice
    for predictor in ("lstm", "last_value"):
        labels = (("predictor", predictor), ("profile", "datacenter"))
        assert m[("bwp_live_abs_error_mbps_count", labels)] == K * (steps - WINDOW), predictor


@pytest.mark.integration
def test_tampered_version_is_refused_and_the_old_model_keeps_serving(reg_worker) -> None:
    from ml.serving.registry import promote_version

    settings, a, port, start = reg_worker
    c = clone_version(settings.model_dir, a)
    tamper(settings.model_dir, c)
    K = 5
    w = start()
    reader = TopicReader(settings, settings.decisions_topic)
    try:
        produce(settings, fleet(K, 11))
        reader.poll_until(lambda m: len(m) >= K * 2 or not w.alive(), 120)
        assert len(reader.messages) >= K * 2, w.log_tail()
        _wait_metric(port, "bwp_model_reloads_total", {"result": "failed"}, 0.0, 10, w)  # exported from the start
        promote_version(settings.model_dir, c)
        _wait_metric(port, "bwp_model_reloads_total", {"result": "failed"}, 1.0, 20, w)
        produce(settings, fleet(K, 4, start_seq=11))
        reader.poll_until(lambda m: len(m) >= K * 6 or not w.alive(), 30)
        time.sleep(3)  # a few more polls: the broken version must not be retried
        msgs = reader.drain(quiet_s=1.0)
    finally:
        reader.close()
    ds = _decisions(msgs)
    assert len(ds) == K * 6 and {d["model_version"] for d in ds} == {a}
    m = _metrics(port)
    assert m[("bwp_model_reloads_total", (("result", "failed"),))] == 1
    assert m[("bwp_model_reloads_total", (("result", "ok"),))] == 0
    assert m[("bwp_model_info", (("version", a),))] == 1
    log = w.log_tail(50_000)
    assert log.count(f"model reload: refused version {c}, still serving {a}") == 1, log
    assert "does not match its checksum" in log
    assert w.stop() == 0, w.log_tail()  # the reload task does not hold up a graceful shutdown
