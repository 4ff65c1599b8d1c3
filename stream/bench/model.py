"""``bwp bench model``: latency and throughput of the full serving path.

Measures :meth:`ml.serving.predictor.Predictor.predict` (preprocessing + LSTM + observation +
Q-net argmax) at batch 1, 100 and 1000 on simulator windows, and the raw compiled
LSTM + Q-net forward pass at batch 1024 (``compiled_bound_per_s``: what the model
alone can do, the ceiling the full path is compared with). Each figure is the median
over ``--repeats`` runs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ml.data import simulator_links, windows_of

#: Batch sizes timed by default.
BATCHES = (1, 100, 1000)
BOUND_BATCH = 1024


def calls_for(batch: int) -> int:
    """Timed calls per run for ``batch`` (about 0.2-1 s of work): 300 at 1, 100 at 100, 20 at 1000."""
    return max(20, min(300, 10_000 // batch))


def _windows(n: int) -> np.ndarray:

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
    pool = _windows(max(batches) * 2 + BOUND_BATCH)
    out: dict[str, Any] = {}
    for batch in batches:
        calls = calls_for(batch)
        runs = []
        for _ in range(repeats):
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
    width = int(predictor.qnet.input_shape[-1])  # the model's observation layout (9 or 11 columns)
    obs = np.random.default_rng(1).random((BOUND_BATCH, width)).astype(np.float32)
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
