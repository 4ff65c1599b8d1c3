"""``bwp bench model``: latency and throughput of the full serving path.

Measures :meth:`ml.predict.Predictor.predict` (preprocessing + LSTM + observation +
Q-net argmax) at batch 1, 100 and 1000 on simulator windows, and the raw compiled
LSTM + Q-net forward pass at batch 1024 (``compiled_bound_per_s``: what the model
alone can do, the ceiling the full path is compared with). Each figure is the median
over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from stream.cli import add_settings_flags, settings_from_args

#: Batch sizes timed by default.
BATCHES = (1, 100, 1000)
BOUND_BATCH = 1024


def calls_for(batch: int) -> int:
    """Timed calls per run for ``batch`` (about 0.2-1 s of work): 300 at 1, 100 at 100, 20 at 1000."""
    return max(20, min(300, 10_000 // batch))


def _batches(text: str) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes like 1,100,1000, got {text!r}") from exc
    if not out or out[0] < 1 or out[-1] > 100_000:
        raise argparse.ArgumentTypeError(f"batch sizes must be 1..100000, got {text!r}")
    return out


def register(bsub: argparse._SubParsersAction) -> None:
    """Add ``bwp bench model``."""
    p = bsub.add_parser(
        "model",
        help="Predictor.predict latency/throughput at batch 1/100/1000 and the compiled bound (JSON)",
        description="Benchmark the current model's full predict path. Trains a quick model into a "
        "temporary directory when the registry has none (said on stderr).",
    )
    p.add_argument("--json", action="store_true", help="JSON only (the default output is JSON too, indented)")
    p.add_argument("--repeats", type=int, default=5, help="runs per figure; the median is reported (default 5)")
    p.add_argument("--batches", type=_batches, default=BATCHES, metavar="N,N,...",
                   help="batch sizes to time (default 1,100,1000; batch_1000_vs_bound needs 1000). "
                   "BWP_TF_XLA=0 times the plain graph instead of XLA")  # fmt: skip
    p.add_argument("--version", default=None, help="model version (default current)")
    add_settings_flags(p, "--model-dir")
    p.set_defaults(func=_bench_model)


def _windows(n: int) -> np.ndarray:
    from ml.data import simulator_links, windows_of

    links = simulator_links("mixed", 8, max(40, n // 8 + 20), seed=7)
    w, _, _ = windows_of(links)
    return w[np.random.default_rng(0).permutation(len(w))[:n]]


def _percentiles(times_s: list[float], batch: int) -> dict[str, float]:
    t = np.asarray(times_s)
    return {
        "p50_ms": float(np.percentile(t, 50) * 1e3),
        "p99_ms": float(np.percentile(t, 99) * 1e3),
        "per_s": float(batch / np.median(t)),
    }


def run_bench(predictor: Any, repeats: int = 5, batches: tuple[int, ...] = BATCHES) -> dict[str, Any]:
    """The benchmark figures for a loaded predictor (medians over ``repeats`` runs)."""
    from ml.policy_features import OBS_DIM

    pool = _windows(max(batches) * 2 + BOUND_BATCH)
    out: dict[str, Any] = {}
    for batch in batches:
        calls = calls_for(batch)
        runs = []
        for r in range(repeats):
            times = []
            for i in range(calls):
                start = (i * batch) % (len(pool) - batch)
                w = pool[start : start + batch]
                t0 = time.perf_counter()
                predictor.predict(w)
                times.append(time.perf_counter() - t0)
            runs.append(_percentiles(times, batch))
        out[f"batch_{batch}"] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    x = predictor.preprocessor.transform(pool[:BOUND_BATCH])
    obs = np.random.default_rng(1).random((BOUND_BATCH, OBS_DIM)).astype(np.float32)
    bound = []
    for _ in range(repeats):
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            a, b = predictor.compiled_forward(x, obs)
            a.numpy(), b.numpy()
            times.append(time.perf_counter() - t0)
        bound.append(BOUND_BATCH / float(np.median(times)))
    out["compiled_bound_per_s"] = float(np.median(bound))
    if "batch_1000" in out:
        out["batch_1000_vs_bound"] = out["batch_1000"]["per_s"] / out["compiled_bound_per_s"]
    out["xla"] = predictor.xla
    out["version"] = predictor.version
    out["repeats"] = repeats
    return out


def _bench_model(args: argparse.Namespace) -> int:
    from ml.predict import configure_tf, load_predictor
    from ml.registry import current_version

    configure_tf()
    model_dir = Path(settings_from_args(args).model_dir)
    tmp = None
    if args.version is None and current_version(model_dir) is None:
        from ml.train import TrainConfig, train

        tmp = tempfile.TemporaryDirectory(prefix="bwp-bench-model-")
        model_dir = Path(tmp.name)
        print(f"bwp bench model: no current model in {settings_from_args(args).model_dir}; "
              f"training a quick one into {model_dir}", file=sys.stderr)
        train(TrainConfig(quick=True, model_dir=model_dir))
    try:
        pred = load_predictor(model_dir, args.version)
        res = run_bench(pred, max(1, args.repeats), args.batches)
        res["load_s"] = round(pred.load_seconds, 2)  # verify + load + compile every bucket
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(res, indent=None if args.json else 2))
    return 0
