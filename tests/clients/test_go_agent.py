"""The Go client against the real stack: ``bwp-agent`` consumes every decision a real worker
published (partition mode on tansu) exactly once, and its ``PredictBandwidth`` through ``bwp serve``
equals the worker's forecast for the same window."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stream.core.settings import load_settings
from tests.helpers.pipeline import TopicReader, WorkerProcess, decision_keys, make_record, produce
from tests.helpers.serve import running_server, wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SARAMA = Path("/usr/share/gocode/src/github.com/Shopify/sarama")
GO_PKG = "github.com/bwp/clients/go/bwp"
LINKS, STEPS, WINDOW = 5, 14, 10
FEATURES = ("latency_ms", "bandwidth_mbps", "packet_loss", "reliability")


def build_agent(out_dir: Path) -> Path:
    """Build cmd/bwp-agent into ``out_dir`` the way ``make test-go`` does (GOPATH mode, Debian sarama)."""
    gopath = out_dir / "gopath"
    link = gopath / "src" / GO_PKG
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(ROOT / "clients" / "go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:/usr/share/gocode",
        "CGO_CFLAGS": "-Wno-deprecated-declarations",
        "GOFLAGS": "",
        "GOCACHE": str(out_dir / "gocache") if "GOCACHE" not in os.environ else os.environ["GOCACHE"],
    }
    binary = out_dir / "bwp-agent"
    r = subprocess.run(
        ["go", "build", "-o", str(binary), "./cmd/bwp-agent"], cwd=link, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, f"go build failed:\n{r.stderr}"
    return binary


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    if shutil.which("go") is None:
        pytest.skip("go not on PATH (install golang-go)")
    if not SARAMA.is_dir():
        pytest.skip(f"sarama sources missing at {SARAMA} (install golang-github-shopify-sarama-dev)")
    return build_agent(tmp_path)


def run_agent(binary: Path, *args: str, timeout_s: float = 120) -> list[dict]:
    r = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout_s)
    assert r.returncode == 0, f"bwp-agent exited {r.returncode}:\n{r.stderr[-4000:]}"
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_agent_gets_every_decision_once_and_predicts_like_the_worker(agent, bwp_settings, trained_model_dir, tmp_path):
    settings = bwp_settings.model_copy(update={"model_dir": trained_model_dir})
    # profile=None: PredictBandwidth sends no profile, so the worker must decide without one too
    records = [make_record(k, s, profile=None) for s in range(STEPS) for k in range(LINKS)]
    want = {(r.link_id, s) for r in records for s in range(WINDOW - 1, STEPS)}
    worker = WorkerProcess(settings, tmp_path / "worker.log", predictor=None).start()
    reader = TopicReader(settings, settings.decisions_topic)
    try:
        produce(settings, records)
        reader.poll_until(lambda m: want <= set(decision_keys(m)) or not worker.alive(), 180)
        assert worker.alive(), worker.log_tail()
        msgs = reader.drain(quiet_s=1.5)
    finally:
        reader.close()
        worker.stop()
    published = [json.loads(m.value()) for m in msgs]
    assert {(d["link_id"], d["seq"]) for d in published} == want

    got = run_agent(
        agent, "-brokers", settings.kafka_bootstrap, "-topic", settings.decisions_topic, "-mode", "partition",
        "-offset", "oldest", "-idle", "3s", "-duration", "90s",
    )  # fmt: skip
    keys = [(d["link_id"], d["seq"]) for d in got]
    assert len(keys) == len(set(keys)), "a decision was applied twice"
    assert set(keys) == want

    by_key = {(r.link_id, r.seq): r for r in records}
    chosen = sorted(want)[:: max(1, len(want) // 8)]
    windows = tmp_path / "windows.jsonl"
    windows.write_text(
        "".join(
            json.dumps([{f: getattr(by_key[(k, s)], f) for f in FEATURES} for s in range(seq - WINDOW + 1, seq + 1)])
            + "\n"
            for k, seq in chosen
        )
    )
    forecast = {(d["link_id"], d["seq"]): d["predicted_bandwidth_mbps"] for d in published}
    with running_server(load_settings(model_dir=trained_model_dir)) as (client, _app):
        wait_ready(client)
        preds = run_agent(agent, "-serve", str(client.base_url).rstrip("/"), "-windows", str(windows))
    assert [p["window"] for p in preds] == list(range(len(chosen)))
    for p, key in zip(preds, chosen, strict=True):
        assert not math.isnan(p["predicted_bandwidth_mbps"]), p
        assert p["predicted_bandwidth_mbps"] == pytest.approx(forecast[key], rel=1e-5), key


def test_go_producer_to_worker_to_go_consumer_every_decision_once(agent, bwp_settings, tmp_path):
    """A DWCP node is also the probe: bwp-agent -publish sends its telemetry (the Go Telemetry type
    and producer), a real worker decides, bwp-agent consumes every decision exactly once."""
    settings = bwp_settings
    records = [make_record(k, s) for s in range(STEPS) for k in range(LINKS)]
    want = {(r.link_id, s) for r in records for s in range(WINDOW - 1, STEPS)}
    telemetry = tmp_path / "telemetry.jsonl"
    telemetry.write_text("".join(r.to_bytes().decode() + "\n" for r in records))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        out = run_agent(agent, "-publish", str(telemetry), "-brokers", settings.kafka_bootstrap,
                        "-telemetry-topic", settings.telemetry_topic)  # fmt: skip
        assert out == [{"published": len(records), "topic": settings.telemetry_topic}]
        reader = TopicReader(settings, settings.decisions_topic)
        try:
            reader.poll_until(lambda m: want <= set(decision_keys(m)) or not worker.alive(), 120)
            assert worker.alive(), worker.log_tail()
        finally:
            reader.close()
        dlq = TopicReader(settings, settings.dlq_topic)
        try:
            assert dlq.drain(quiet_s=1.0) == [], "the worker dead-lettered a record the Go producer validated"
        finally:
            dlq.close()
    finally:
        worker.stop()
    got = run_agent(
        agent, "-brokers", settings.kafka_bootstrap, "-topic", settings.decisions_topic, "-mode", "partition",
        "-offset", "oldest", "-idle", "3s", "-duration", "90s",
    )  # fmt: skip
    keys = [(d["link_id"], d["seq"]) for d in got]
    assert len(keys) == len(set(keys)) and set(keys) == want
