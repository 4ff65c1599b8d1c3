"""``bwp demo`` (what ``make demo`` runs), end to end on its own embedded stack."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stream.ops.stack import free_ports, port_in_use

pytestmark = pytest.mark.integration


def _count(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in the demo's output:\n{text[-3000:]}"
    return int(m.group(1).replace(",", ""))


def test_demo_runs_decides_and_stops_what_it_started(trained_model_dir: Path, tmp_path: Path):
    state = tmp_path / "state"
    kafka_port, redis_port = free_ports(2)
    cmd = [sys.executable, "-m", "stream.cli", "demo", "--seconds", "8", "--links", "40",
           "--model-dir", str(trained_model_dir), "--state-dir", str(state),
           "--bootstrap", f"127.0.0.1:{kafka_port}", "--redis-url", f"redis://127.0.0.1:{redis_port}/0"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", "BWP_EMBEDDED": "auto"}  # wide: summary lines unwrapped
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    published = _count(r"records published ([\d,]+)", text)
    decisions = _count(r"decisions ([\d,]+) \(expected about", text)
    expected = _count(r"\(expected about ([\d,]+):", text)
    assert published > 40 * 10 and expected <= decisions <= published
    injected = _count(r"the demo injected (\d+) bad records", text)
    assert injected >= 1 and _count(r"dead letters (\d+) \(the demo injected", text) == injected
    assert _count(r"latency p50 (\d+) ms", text) <= _count(r"latency p50 \d+ ms, p99 (\d+) ms", text)
    assert "stopped: worker, publisher, kafka, redis (started by this demo)" in text
    # what served, from the decisions themselves (names from the decisions schema)
    m = re.search(r"what served \(policy\): ([a-z_]+) (\d+)%", text)
    assert m and m.group(1) in ("ddqn", "ewma_rule", "quantile_rule") and 0 < int(m.group(2)) <= 100, text[-2000:]
    m = re.search(r"what served \(forecast_source\): ([a-z_]+) (\d+)%", text)
    assert m and m.group(1) in ("lstm", "last_value", "ewma", "moving_average"), text[-2000:]
    assert "p50 (p10-p90)" in text and "policy" in text
    assert not port_in_use(kafka_port) and not port_in_use(redis_port)  # the stack it started is down
