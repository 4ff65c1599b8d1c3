"""``bwp bench broker`` and ``bwp bench redis``: short real runs on their own private servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from stream.cli.main import main
from stream.ops.stack import _pid_alive

pytestmark = pytest.mark.integration


def test_bench_broker_reports_latency_per_fetch_wait(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the private stack lives
    code = main(["bench", "broker", "--rate", "400", "--seconds", "2", "--links", "20",
                 "--fetch-wait-ms", "20", "--fetch-wait-ms", "200", "--json"])  # fmt: skip
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["fetch_max_wait_ms"] for r in res["runs"]] == [20, 200]
    for r in res["runs"]:
        lat = r["latency_ms"]
        assert r["records"] > 400  # 2 s at 400/s, less the warm-up share
        assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"] < 5_000
    assert list(tmp_path.iterdir()) == []  # the stack's directory is removed after a good run


def test_bench_broker_rejects_bad_arguments(capsys):
    assert main(["bench", "broker", "--rate", "0", "--json"]) == 2
    assert "--rate and --seconds must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("cluster", [0, 2])
def test_bench_redis_measures_the_window_store(cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = main(["bench", "redis", "--cluster", str(cluster), "--links", "40", "--steps", "12",
                 "--batch", "100", "--repeats", "2", "--json"])  # fmt: skip
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["redis"] == ("cluster of 2 primaries" if cluster else "one server")
    assert len(res["runs_states_per_s"]) == 2 and all(r > 0 for r in res["runs_states_per_s"])
    assert min(res["runs_states_per_s"]) <= res["states_per_s"] <= max(res["runs_states_per_s"])
    assert list(tmp_path.iterdir()) == []  # servers stopped, directory removed


def test_bench_redis_rejects_bad_arguments(capsys):
    assert main(["bench", "redis", "--links", "0", "--json"]) == 2
    assert "--links must be >= 1" in capsys.readouterr().err


def test_sigterm_stops_what_a_bench_started(tmp_path):
    """SIGTERM to ``bwp`` runs the command's clean-up, as Ctrl-C does (the default
    SIGTERM used to leave the private broker and Redis running)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "stream.cli", "bench", "broker", "--rate", "200", "--seconds", "120",
           "--links", "10", "--fetch-wait-ms", "50"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # measuring starts once the stack is up
            lines.append(line)
            if "fetch wait 50 ms" in line:
                break
        else:
            pytest.fail("bench ended before measuring:\n" + "".join(lines))
        pids = [int(p.read_text()) for p in tmp_path.glob("bwp-bench-broker-*/**/*.pid")]
        assert pids and all(_pid_alive(p) for p in pids)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 143, err
    assert "terminated (SIGTERM)" in err
    deadline = time.monotonic() + 10
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_pid_alive(p) for p in pids)
