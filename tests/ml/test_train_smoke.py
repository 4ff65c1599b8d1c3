"""End to end: quick training -> registry -> predictor -> evaluation, on simulator data."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from tests.helpers.models import quick_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return quick_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(model_dir):
    from ml.serving.predictor import load_predictor

    return load_predictor(model_dir)


def _sim_windows(n_links: int = 6, steps: int = 80, seed: int = 7) -> np.ndarray:
    from ml.data import simulator_links, windows_of

    w, _, _ = windows_of(simulator_links("mixed", n_links, steps, seed))
    return w


def test_training_summary_says_what_serves(model_dir):
    """The summary names, per horizon, the source a decision's forecast_source will carry on the held-out
    links: the model, or the naive forecaster that serves instead."""
    import re

    from tests.helpers.models import quick_model_progress

    line = next((p for p in quick_model_progress() if p.startswith("what serves on the held-out links")), None)
    assert line is not None, quick_model_progress()[-5:]
    for h in ("1", "10", "60"):
        m = re.search(rf"h={h} ((?:lstm|last_value|ewma|moving_average) \d+%(?:, )?)+", line)
        assert m, line


def test_metadata_has_metrics_and_data_description(model_dir):
    from ml.serving.registry import current_version, read_metadata

    meta = read_metadata(model_dir)
    assert meta["version"] == current_version(model_dir)
    rep = meta["metrics"]["forecast_test"]
    assert rep["n"] > 0 and set(rep["by_profile"]) == {"datacenter", "internet"}
    assert np.isfinite(rep["predictors"]["lstm"]["mae"])
    assert meta["training_data"]["seeds"] == {"train": 1, "val": 2, "test": 3}
    assert 0 < meta["ewma_alpha"] <= 1
    assert meta["lstm"]["history"]["epochs_run"] >= 1
    # a quantile model's DDQN sees the served h = 1 p10 and p90 too: the 11-column layout, recorded
    assert meta["policy"]["observation"] == meta["ddqn"]["observation"] == "quantiles"
    assert meta["shapes"]["qnet"]["input"] == [11] and meta["ddqn"]["obs_dim"] == 11
    json.dumps(meta)  # plain JSON


def test_predictor_gives_finite_forecasts_and_valid_actions(predictor):
    w = _sim_windows()
    pred = predictor.predict(w)
    assert pred.bandwidth_mbps.shape == pred.action.shape == pred.reference_bandwidth_mbps.shape == (len(w),)
    assert np.isfinite(pred.bandwidth_mbps).all() and (pred.bandwidth_mbps >= 0).all()
    assert pred.action.dtype.kind == "i" and pred.action.min() >= 0 and pred.action.max() <= 9
    np.testing.assert_allclose(pred.reference_bandwidth_mbps, w[:, :, 1].max(axis=1))
    # scale-free model: forecasts follow the link's level (datacenter Gbit/s vs internet Mbit/s)
    ratio = pred.bandwidth_mbps / np.maximum(w[:, -1, 1], 1e-9)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.5)


def test_predictor_batches_are_consistent_and_handle_edge_sizes(predictor):
    w = _sim_windows()
    full = predictor.predict(w).bandwidth_mbps
    one = np.concatenate([predictor.predict(w[i : i + 1]).bandwidth_mbps for i in range(5)])
    np.testing.assert_allclose(one, full[:5], rtol=1e-4)
    empty = predictor.predict(np.zeros((0, 10, 4)))
    assert empty.bandwidth_mbps.shape == (0,) and empty.action.shape == (0,)
    big = predictor.predict(np.repeat(w[:1], 4100, axis=0))  # more than the largest bucket
    assert big.bandwidth_mbps.shape == (4100,)
    np.testing.assert_allclose(big.bandwidth_mbps, full[0], rtol=1e-4)
    zero = np.zeros((2, 10, 4))  # outage window
    z = predictor.predict(zero)
    assert np.isfinite(z.bandwidth_mbps).all() and (z.reference_bandwidth_mbps == 0).all()
    with pytest.raises(ValueError, match=r"\(N, 10, 4\)"):
        predictor.predict(np.zeros((3, 9, 4)))


def test_predictor_is_safe_from_several_threads(predictor):
    w = _sim_windows()
    expect = predictor.predict(w).bandwidth_mbps
    errors = []

    def work():
        try:
            for _ in range(5):
                np.testing.assert_allclose(predictor.predict(w).bandwidth_mbps, expect, rtol=1e-5)
        except Exception as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_collect_forecasts_on_records(model_dir):
    from ml.eval.forecast import PREDICTORS, collect_forecasts, report
    from simulator.generator import generate_records

    recs = list(generate_records("internet", 3, 30, seed=7, start_ms=0))
    fc = collect_forecasts(model_dir, None, recs)
    assert len(fc["y_true"]) == 3 * 20
    assert set(fc["y_pred"]) == set(PREDICTORS)
    assert set(fc["profiles"].tolist()) == {"internet"}
    rep = report(fc)
    assert rep["n"] == 60 and np.isfinite(rep["predictors"]["lstm"]["mae"])


def test_cli_models_and_evaluate(model_dir, capsys):
    from stream.cli.main import main

    assert main(["models", "list", "--model-dir", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "*" in out and "mixed quick" in out
    assert (
        main(
            [
                "evaluate",
                "--model-dir",
                str(model_dir),
                "--profile",
                "internet",
                "--links",
                "2",
                "--steps",
                "40",
                "--json",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 60 and set(rep["predictors"]["ewma"]) == {
        "mae",
        "rmse",
        "mape",
        "smape",
        "within_2pct",
        "within_10pct",
    }
    assert main(["models", "rollback", "--model-dir", str(model_dir)]) == 2  # nothing to roll back to


def _tracing_counts(predictor) -> int:
    fns = [predictor._serve_fn] + ([predictor._serve_xla] if predictor.xla else [])
    return sum(f.experimental_get_tracing_count() for f in fns)


def test_predict_never_retraces_after_warm_up(predictor):
    before = _tracing_counts(predictor)
    assert before == len(predictor.buckets())  # one trace per bucket, done at load
    w = _sim_windows()
    for n in (1, 2, 7, 9, 63, 100, 300, 1000, 5000):
        predictor.predict(np.resize(w, (n, 10, 4)))
    assert _tracing_counts(predictor) == before


def test_buckets_pad_the_worker_chunk_sizes_by_at_most_half():
    from ml.serving.predictor import BUCKETS, _bucket

    assert list(BUCKETS) == sorted(set(BUCKETS))
    for n in range(1, BUCKETS[-1] + 1):
        b = _bucket(n)
        assert b >= n and (b == BUCKETS[0] or n > BUCKETS[BUCKETS.index(b) - 1])  # the smallest that fits
        if 64 < n <= 512:  # the worker's chunks at a few thousand states/s
            assert b <= 1.5 * n, (n, b)


def test_xla_and_plain_graph_predict_the_same(model_dir):
    from ml.serving.predictor import Predictor
    from ml.serving.registry import load_version

    loaded = load_version(model_dir)
    xla, plain = Predictor(loaded, xla=True), Predictor(loaded, xla=False)
    assert xla.xla and not plain.xla
    w = np.resize(_sim_windows(), (3000, 10, 4))  # XLA chunks of 1024, plain graph in one 4096 bucket
    a, b = xla.predict(w), plain.predict(w)
    np.testing.assert_allclose(a.bandwidth_mbps, b.bandwidth_mbps, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(a.reference_bandwidth_mbps, b.reference_bandwidth_mbps)
    # argmax of Q-values equal up to float32 rounding: the same action nearly everywhere
    assert np.mean(a.action == b.action) > 0.999
    for n in (1, 3):  # the smallest buckets (a lone `bwp serve` client) are XLA-compiled too
        small = w[:n]
        np.testing.assert_allclose(
            xla.predict(small).bandwidth_mbps, plain.predict(small).bandwidth_mbps, rtol=1e-4, atol=1e-6
        )


def test_serving_import_does_not_pull_in_training_code(model_dir):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from ml.serving.predictor import load_predictor\n"
        f"p = load_predictor({str(model_dir)!r})\n"
        "p.predict(np.ones((2, 10, 4)))\n"
        "bad = sorted(m for m in ('ml.train', 'ml.forecast.training', 'ml.policy.ddqn', 'ml.policy.env', 'ml.policy.buffer', 'ml.forecast.lstm', 'ml.eval.forecast', 'ml.eval.traces') if m in sys.modules)\n"
        "print('TRAINING_MODULES', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TRAINING_MODULES []" in out.stdout


def test_bench_model_times_the_requested_batches(model_dir, capsys):
    from stream.cli.main import main

    assert main(["bench", "model", "--model-dir", str(model_dir), "--repeats", "1", "--batches", "4,1",
                 "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"batch_1", "batch_4", "compiled_bound_per_s", "xla", "load_s"}
    assert "batch_1000_vs_bound" not in res  # no batch 1000 timed: no ratio
    for b in ("batch_1", "batch_4"):
        assert res[b]["p50_ms"] > 0 and res[b]["per_s"] > 0
    with pytest.raises(SystemExit) as exc:
        main(["bench", "model", "--model-dir", str(model_dir), "--batches", "1,x"])
    assert exc.value.code == 2
    assert "comma-separated batch sizes" in capsys.readouterr().err
