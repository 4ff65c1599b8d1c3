"""``bwp bench broker`` and ``bwp bench redis``: short real runs on their own private servers."""

from __future__ import annotations

import json
import tempfile

import pytest

from stream.cli import main

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
