"""``bwp bench broker``: a short real run on its own private embedded stack."""

from __future__ import annotations

import json

import pytest

from stream.cli import main

pytestmark = pytest.mark.integration


def test_bench_broker_reports_latency_per_fetch_wait(tmp_path, capsys):
    code = main(["bench", "broker", "--rate", "400", "--seconds", "2", "--links", "20",
                 "--fetch-wait-ms", "20", "--fetch-wait-ms", "200", "--json"])  # fmt: skip
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["fetch_max_wait_ms"] for r in res["runs"]] == [20, 200]
    for r in res["runs"]:
        lat = r["latency_ms"]
        assert r["records"] > 400  # 2 s at 400/s, less the warm-up share
        assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"] < 5_000


def test_bench_broker_rejects_bad_arguments(capsys):
    assert main(["bench", "broker", "--rate", "0", "--json"]) == 2
    assert "--rate and --seconds must be > 0" in capsys.readouterr().err
