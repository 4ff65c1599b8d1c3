"""``bwp bench serve``: a short real run (two ``bwp serve`` processes, the quick model)."""

from __future__ import annotations

import json

import pytest

from stream.cli.main import main

pytestmark = pytest.mark.integration


def test_bench_serve_measures_both_modes(trained_model_dir, capsys):
    code = main(["bench", "serve", "--model-dir", str(trained_model_dir), "--seconds", "1",
                 "--concurrency", "1,8", "--json"])  # fmt: skip
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["modes"]) == {"batching_on", "batching_off"} and res["model_version"]
    for mode, rows in res["modes"].items():
        assert [r["concurrency"] for r in rows] == [1, 8]
        for r in rows:
            assert r["errors"] == 0 and r["requests"] > 0, (mode, r)
            assert 0 < r["p50_ms"] <= r["p99_ms"] < 10_000
    assert all(r["mean_batch_windows"] == 1.0 for r in res["modes"]["batching_off"])
    assert res["modes"]["batching_on"][1]["mean_batch_windows"] > 1.0  # 8 clients shared passes
    assert res["batching_speedup_at_max_concurrency"] > 0


def test_bench_serve_rejects_bad_arguments(capsys):
    assert main(["bench", "serve", "--seconds", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "serve", "--concurrency", "0,x"])
