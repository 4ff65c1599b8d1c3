"""A real Prometheus scrapes a running worker; PromQL on bwp data returns what was fed.

Needs the ``prometheus`` binary (``make prometheus`` installs Debian's package where it
can); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from stream.ops.stack import free_port
from tests.helpers import REPO
from tests.helpers.pipeline import TopicReader, WorkerProcess, decision_keys, fleet, produce

pytestmark = pytest.mark.integration

LINKS, STEPS = 3, 12  # 36 records; each link's window is full from seq 9 on: 3 decisions per link
RECORDS, DECISIONS = LINKS * STEPS, LINKS * (STEPS - 9)


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _wait_http(url: str, timeout_s: float, alive=lambda: True) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            _get(url)
            return
        except OSError:
            if not alive() or time.monotonic() > end:
                raise
            time.sleep(0.2)


class Prometheus:
    """``prometheus`` on 127.0.0.1:<free port>, scraping ``target`` every second."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        self.port = free_port()
        cfg = workdir / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: bwp-worker\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict]:
        """Instant query; raises on a PromQL error."""
        body = json.loads(_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        res = self.query(promql)
        return float(res[0]["value"][1]) if res else None

    def wait_value(self, promql: str, expected: float, timeout_s: float) -> float | None:
        end = time.monotonic() + timeout_s
        got = None
        while time.monotonic() < end:
            got = self.value(promql)
            if got == expected:
                return got
            time.sleep(0.5)
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        pytest.skip("the `prometheus` binary is not on PATH (run `make prometheus`: Debian package, needs root)")
    return found


def _dashboard_queries() -> list[str]:
    dash = json.loads((REPO / "deploy/grafana/dashboards/bwp.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    # Grafana's variables, as Grafana would substitute them for a 1 s scrape interval.
    return [e.replace("$__rate_interval", "15s").replace("$instance", ".*") for e in exprs]


def test_prometheus_scrapes_the_worker(bwp_settings, prometheus_binary: str, tmp_path: Path) -> None:
    mport = free_port()
    worker = WorkerProcess(bwp_settings, tmp_path / "worker.log", extra=["--metrics-port", str(mport)]).start()
    prom = None
    reader = TopicReader(bwp_settings, bwp_settings.decisions_topic)
    try:
        _wait_http(f"http://127.0.0.1:{mport}/metrics", 60, worker.alive)
        prom = Prometheus(prometheus_binary, f"127.0.0.1:{mport}", tmp_path)
        _wait_http(f"{prom.url}/-/ready", 30, lambda: prom.proc.poll() is None)

        produce(bwp_settings, fleet(LINKS, STEPS))
        msgs = reader.poll_until(lambda m: len(m) >= DECISIONS, 60)
        assert len(set(decision_keys(msgs))) == DECISIONS, worker.log_tail()

        # What the worker counted reaches Prometheus through a real scrape.
        assert prom.wait_value('up{job="bwp-worker"}', 1.0, 20) == 1.0, prom.log.read_text()[-2000:]
        assert prom.wait_value("sum(bwp_records_consumed_total)", RECORDS, 30) == RECORDS
        assert prom.wait_value("sum(bwp_decisions_total)", DECISIONS, 30) == DECISIONS
        assert prom.value('bwp_model_info{version="test-last-value"}') == 1.0
        assert prom.value("sum(bwp_dead_letters_total)") in (None, 0.0)
        stages = {r["metric"]["stage"] for r in prom.query("sum by (stage) (bwp_stage_duration_seconds_count)")}
        assert {"decode", "redis", "predict", "produce", "ack"} <= stages
        e2e = prom.value("sum(bwp_end_to_end_latency_seconds_count)")
        assert e2e == DECISIONS

        # Every dashboard query is valid PromQL against this Prometheus, and the
        # throughput / latency panels have data.
        time.sleep(2)  # two more scrapes so rate() has samples after the feed
        for q in _dashboard_queries():
            prom.query(q)
        assert prom.value("sum(rate(bwp_records_consumed_total[15s]))") is not None
        p99 = prom.query("histogram_quantile(0.99, sum by (le, stage) (rate(bwp_stage_duration_seconds_bucket[15s])))")
        assert {r["metric"]["stage"] for r in p99} >= {"decode", "predict"}
        assert not re.search(r"Traceback", worker.log_tail())
    finally:
        reader.close()
        worker.stop()
        if prom is not None:
            prom.stop()
