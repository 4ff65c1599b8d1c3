"""The whole pipeline: real embedded broker + Redis, the worker as a subprocess.

Every wait is bounded: tests poll the decisions topic with a deadline.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

import stream.core.schemas
from stream.core.records import H_ERROR_CODE, H_SOURCE_OFFSET, H_SOURCE_TOPIC, WINDOW
from tests.helpers.pipeline import TopicReader, WorkerProcess, decision_keys, fleet, produce

pytestmark = pytest.mark.integration

SCHEMA = stream.core.schemas.decisions_schema(3)  # the worker's default (BWP_DECISIONS_SCHEMA_VERSION)


def _expect(links: int, steps: int, start: int = 0) -> set[tuple[str, int]]:
    return {(f"lk-{k:04d}", s) for k in range(links) for s in range(max(start, WINDOW - 1), steps)}


@pytest.fixture
def worker_factory(bwp_settings, tmp_path):
    started: list[WorkerProcess] = []

    def make(predictor: str | None = "tests.helpers.pipeline:LastValuePredictor", settings=None) -> WorkerProcess:
        w = WorkerProcess(settings or bwp_settings, tmp_path / f"worker{len(started)}.log", predictor=predictor)
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.stop()


@pytest.fixture
def open_reader(bwp_settings):
    """Factory of topic readers, all closed after the test (no client outlives its stack)."""
    made: list[TopicReader] = []

    def make(topic: str) -> TopicReader:
        r = TopicReader(bwp_settings, topic)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _wait_decisions(reader: TopicReader, want: set, timeout_s: float, worker: WorkerProcess) -> set:
    reader.poll_until(lambda msgs: want <= set(decision_keys(msgs)) or not worker.alive(), timeout_s)
    got = set(decision_keys(reader.messages))
    assert worker.alive(), f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}"
    missing = want - got
    assert not missing, f"{len(missing)} decisions missing, e.g. {sorted(missing)[:5]}\n{worker.log_tail()}"
    return got


def test_end_to_end_one_valid_decision_per_full_window(bwp_settings, worker_factory, open_reader, trained_model_dir):
    """K links x M steps in -> exactly K x (M - 9) distinct, schema-valid decisions out, from the real
    quick-trained LSTM + DDQN model loaded from the registry."""
    import jsonschema

    from ml.serving.registry import current_version

    K, M = 20, 30
    version = current_version(trained_model_dir)
    assert version
    w = worker_factory(predictor=None, settings=bwp_settings.model_copy(update={"model_dir": trained_model_dir}))
    produce(bwp_settings, fleet(K, M))
    reader = open_reader(bwp_settings.decisions_topic)
    want = _expect(K, M)
    _wait_decisions(reader, want, 120, w)
    msgs = reader.drain(quiet_s=1.5)
    keys = list(decision_keys(msgs))
    assert len(keys) == len(set(keys)) == K * (M - WINDOW + 1)
    assert set(keys) == want
    versions = set()
    for m in msgs:
        d = json.loads(m.value())
        jsonschema.validate(d, SCHEMA)
        assert m.key() == d["link_id"].encode()
        assert d["allocated_bandwidth_mbps"] == pytest.approx(d["allocation_pct"] / 100 * d["reference_bandwidth_mbps"])
        versions.add(d["model_version"])
    assert versions == {version}


BAD = {
    "invalid_json": b'{"link_id": "x", "seq": 1',
    "wrong_type": b'{"link_id":"x","seq":1,"ts_ms":1,"latency_ms":"fast","bandwidth_mbps":1,"packet_loss":0,"reliability":1}',
    "missing_field": b'{"link_id":"x","seq":1,"ts_ms":1,"latency_ms":1,"packet_loss":0,"reliability":1}',
    "not_finite": b'{"link_id":"x","seq":1,"ts_ms":1,"latency_ms":NaN,"bandwidth_mbps":1,"packet_loss":0,"reliability":1}',
    "not_finite ": b'{"link_id":"x","seq":1,"ts_ms":1,"latency_ms":1,"bandwidth_mbps":Infinity,"packet_loss":0,"reliability":1}',
    "out_of_range": b'{"link_id":"x","seq":1,"ts_ms":1,"latency_ms":1,"bandwidth_mbps":-5,"packet_loss":0,"reliability":1}',
    "out_of_range ": b'{"link_id":"x","seq":1,"ts_ms":1,"latency_ms":1,"bandwidth_mbps":5,"packet_loss":1.5,"reliability":1}',
    "too_large": b'{"pad":"' + b"x" * 20_000 + b'"}',
    "empty": b"",
    "invalid_utf8": b'{"link_id":"\xff\xfe"}',
    "unknown_profile": b'{"link_id":"x","seq":1,"ts_ms":1,"latency_ms":1,"bandwidth_mbps":5,"packet_loss":0,"reliability":1,"profile":"moon"}',
    "not_object": b"[1,2,3]",
}


def test_bad_input_goes_to_dlq_and_duplicates_yield_one_decision(bwp_settings, worker_factory, open_reader):
    K, M = 4, 14
    good = fleet(K, M)
    items: list = []
    for i, rec in enumerate(good):
        items.append(rec)
        if i % 4 == 0 and i // 4 < len(BAD):
            items.append((b"bad", list(BAD.values())[i // 4]))
    items += good[-K:] + good[: K * 3]  # the last step (and some early ones) delivered twice
    w = worker_factory()
    produce(bwp_settings, items)

    dlq = open_reader(bwp_settings.dlq_topic)
    dlq.poll_until(lambda msgs: len(msgs) >= len(BAD), 90)
    reader = open_reader(bwp_settings.decisions_topic)
    _wait_decisions(reader, _expect(K, M), 90, w)
    msgs = reader.drain(quiet_s=1.5)
    keys = list(decision_keys(msgs))
    assert len(keys) == len(set(keys)) == K * (M - WINDOW + 1)  # the duplicates made no second decision

    dead = dlq.drain(quiet_s=0.5)
    assert len(dead) == len(BAD)
    by_value = {m.value() or b"": dict(m.headers()) for m in dead}
    for code, raw in BAD.items():
        h = by_value[raw]  # the original bytes, unchanged
        assert h[H_ERROR_CODE].decode() == code.strip(), (code, h)
        assert h[H_SOURCE_TOPIC].decode() == bwp_settings.telemetry_topic and int(h[H_SOURCE_OFFSET]) >= 0
    assert w.alive()


def test_sigkill_mid_stream_then_restart_loses_no_decision(bwp_settings, worker_factory, open_reader):
    K, M = 30, 120
    w = worker_factory()
    reader = open_reader(bwp_settings.decisions_topic)
    produce(bwp_settings, fleet(K, M // 2))
    # kill as soon as some, but not all, decisions are out
    reader.poll_until(lambda msgs: len(msgs) >= 50, 90)
    w.kill()
    at_kill = len(set(decision_keys(reader.messages)))
    assert 0 < at_kill < len(_expect(K, M // 2)), f"not killed mid-stream ({at_kill} decisions)\n{w.log_tail()}"
    produce(bwp_settings, fleet(K, M - M // 2, start_seq=M // 2))
    w2 = worker_factory()
    _wait_decisions(reader, _expect(K, M), 120, w2)
    got = list(decision_keys(reader.drain(quiet_s=1.5)))
    # at-least-once: a decision published just before the kill may appear twice, never zero times
    assert set(got) == _expect(K, M)


def test_redis_paused_mid_stream_worker_retries_and_resumes(bwp_settings, worker_factory, open_reader, stack):
    K, M = 10, 30
    w = worker_factory()
    reader = open_reader(bwp_settings.decisions_topic)
    produce(bwp_settings, fleet(K, 12))
    _wait_decisions(reader, _expect(K, 12), 90, w)  # seqs 9..11 decided, Redis up
    pid = stack.info.redis_pid
    os.kill(pid, signal.SIGSTOP)  # the shared Redis hangs (tests run one at a time)
    try:
        produce(bwp_settings, fleet(K, M - 12, start_seq=12))
        reader.poll_until(lambda msgs: False, 10)  # ~10 s of outage
        assert w.alive(), w.log_tail()
        during = {k for k in decision_keys(reader.messages) if k[1] >= 12}
    finally:
        os.kill(pid, signal.SIGCONT)
    # every state after the outage began needs Redis: none can have been decided
    assert not during, sorted(during)[:5]
    _wait_decisions(reader, _expect(K, M), 90, w)
    assert "redis window update failed" in w.log_tail(20_000)  # it retried, with backoff


def test_worker_runs_on_the_public_redis_path_with_an_untested_redis_py(
    bwp_settings, worker_factory, open_reader, tmp_path, monkeypatch
):
    """A redis-py release outside _redis_compat.TESTED (faked for the worker subprocess by a
    dist-info ahead of site-packages) takes the public pipeline fallback: a warning, and every
    decision still made."""
    site = tmp_path / "fake-site"
    (site / "redis-9.0.0.dist-info").mkdir(parents=True)
    (site / "redis-9.0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: redis\nVersion: 9.0.0\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    K, M = 5, 16
    w = worker_factory()
    produce(bwp_settings, fleet(K, M))
    reader = open_reader(bwp_settings.decisions_topic)
    _wait_decisions(reader, _expect(K, M), 90, w)
    keys = list(decision_keys(reader.drain(quiet_s=1.0)))
    assert len(keys) == len(set(keys)) == K * (M - WINDOW + 1)
    log = w.log_tail(20_000)
    assert "redis-py 9.0.0 is installed" in log and "public pipeline" in log, log[-2000:]
