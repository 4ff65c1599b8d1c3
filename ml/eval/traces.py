"""``bwp evaluate-traces``: per real-trace dataset, train on 70 % of the traces and score on the
other 30 % against the naive baselines.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import split_by_time, split_links, trace_links
from ml.eval.forecast import (
    METRICS,
    best_baseline,
    forecasts_for_links,
    format_table,
    mae_ratio,
    report,
    score,
)
from ml.eval.probabilistic import format_prob, prob_report, quantile_forecasts, summary
from ml.forecast.lstm import LSTMConfig
from ml.forecast.training import fit_forecaster, fit_quantile_forecaster, make_forecaster, make_quantile_model_fn
from ml.serving.runtime import configure_tf
from simulator.traces.datasets import DATASETS, TIME_SPLIT_DATASETS
from stream.core.errors import DataError
from stream.core.progress import stderr_progress

#: Per-dataset LSTM budget of ``bwp evaluate-traces`` (all five datasets in ~10 min on 2 cores).
TRACE_LSTM_SECONDS = 60.0

TRACE_TRAIN_WINDOWS = 30_000
#: Train / validation / test shares of each series, oldest first, for :data:`TIME_SPLIT_DATASETS`.
TIME_FRACTIONS = (0.6, 0.1, 0.3)


def _lstm_config(quick: bool, pooled: bool) -> LSTMConfig:
    """The LSTM budget: ``LSTMConfig.quick()``, else the per-dataset budget (doubled for the pooled model)."""
    if quick:
        return LSTMConfig.quick()
    if pooled:
        return LSTMConfig(
            time_budget_s=2 * TRACE_LSTM_SECONDS, max_train_windows=2 * TRACE_TRAIN_WINDOWS, max_val_windows=8_000
        )
    return LSTMConfig(time_budget_s=TRACE_LSTM_SECONDS, max_train_windows=TRACE_TRAIN_WINDOWS, max_val_windows=5_000)


def _split(name: str, links: list, seed: int) -> tuple[list, list, list]:
    """(train, val, test): by time for :data:`TIME_SPLIT_DATASETS`, else by whole trace."""
    if name in TIME_SPLIT_DATASETS:
        train, val, test = split_by_time(links, TIME_FRACTIONS)
        return train, val, test
    train_val, test = split_links(links, (0.7, 0.3), seed)
    train, val = split_links(train_val, (0.85, 0.15), seed + 1)
    return train, val, test


def _evaluate_dataset(
    name: str, quick: bool, seed: int, root: Path | str | None, say: Any, head: str = "quantile"
) -> tuple[tuple[list, list, list], dict[str, Any]] | None:
    """Split one dataset's traces, train its LSTM and score it against the baselines on the test traces.

    Returns ``((train, val, test), report)``, or None (reported via ``say``) when it has fewer than 3 usable traces.
    """
    t0 = time.monotonic()
    links = [ls for ls in trace_links(name, root) if ls.steps > 10]
    if len(links) < 3 and name not in TIME_SPLIT_DATASETS:
        say(f"{name}: only {len(links)} usable traces, skipped")
        return None
    train, val, test = _split(name, links, seed)
    say(f"{name}: {len(train)} train / {len(val)} val / {len(test)} test traces")
    cfg = _lstm_config(quick, pooled=False)
    log = lambda s, n=name: say(f"{n}: {s}")  # noqa: E731 - a one-line prefixing logger
    prob: dict[str, Any] | None = None
    if head == "point":
        model, pre, alpha, hist = fit_forecaster(train, val, cfg, seed, say=log)
        fc = forecasts_for_links(make_forecaster(model, pre), test, alpha)
    else:
        model, pre, spec, hist = fit_quantile_forecaster(train, val, cfg, seed, say=log)
        qfc = quantile_forecasts(make_quantile_model_fn(model, pre, len(spec.horizons)), spec, test)
        prob = prob_report(qfc)
        alpha = spec.naive.alphas[0]
        mid = len(spec.quantiles) // 2
        fc = forecasts_for_links(lambda w: qfc["q"]["lstm"][:, 0, mid], test, alpha)  # same windows, same order
        fc["y_pred"]["served"] = qfc["q"]["served"][:, 0, mid]
    fc["profiles"] = np.full(len(fc["y_true"]), name, dtype=object)
    rep = report(fc)
    del rep["by_profile"]  # one dataset = one profile
    rep.update(
        {
            "head": head,
            "split": "time" if name in TIME_SPLIT_DATASETS else "traces",
            "traces": {"train": len(train), "val": len(val), "test": len(test)},
            "test_traces": [ls.link_id for ls in test],
            "ewma_alpha": alpha,
            "lstm_epochs": hist["epochs_run"],
            "lstm_train_windows": hist["train_windows"],
        }
    )
    if prob is not None:
        rep["horizons"] = prob["horizons"]
        rep["forecast_sources"] = prob["forecast_sources"]
        rep["quantiles"] = prob["quantiles"]
        rep["summary"] = summary(prob)
    rep["seconds"] = round(time.monotonic() - t0, 1)
    p = rep["predictors"]
    best = best_baseline({k: v for k, v in p.items() if k != "served"})
    rep["best_baseline"] = best
    rep["lstm_mae_over_best_baseline"] = mae_ratio({k: v for k, v in p.items() if k != "served"})
    say(f"{name}: LSTM MAE {p['lstm']['mae']:.4g} vs {best} {p[best]['mae']:.4g} ({rep['seconds']:.0f} s)")
    return (train, val, test), rep


def _evaluate_pooled(
    splits: dict[str, tuple[list, list, list]], out: dict[str, Any], quick: bool, seed: int, say: Any
) -> None:
    """Train one LSTM on every dataset's training traces; add its test scores to each dataset in ``out``."""
    t0 = time.monotonic()
    train = [ls for tr, _, _ in splits.values() for ls in tr]
    val = [ls for _, va, _ in splits.values() for ls in va]
    cfg = _lstm_config(quick, pooled=True)
    model, pre, alpha, hist = fit_forecaster(train, val, cfg, seed, say=lambda s: say(f"pooled: {s}"))
    fc_fn = make_forecaster(model, pre)
    for name, (_, _, test) in splits.items():
        fc = forecasts_for_links(fc_fn, test, alpha)
        sc = score(fc["y_true"], fc["y_pred"]["lstm"], fc["mape_floor"])
        out["datasets"][name]["pooled_lstm"] = {m: sc[m] for m in METRICS}
        best = out["datasets"][name]["best_baseline"]
        ratio = mae_ratio({**out["datasets"][name]["predictors"], "pooled_lstm": sc}, "pooled_lstm", best)
        out["datasets"][name]["pooled_lstm_mae_over_best_baseline"] = ratio
        say(f"pooled LSTM on {name}: MAE {sc['mae']:.4g} ({ratio:.3f} x {best})")
    out["pooled"] = {
        "epochs": hist["epochs_run"],
        "train_windows": hist["train_windows"],
        "seconds": round(time.monotonic() - t0, 1),
    }


def evaluate_traces(
    datasets: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    root: Path | str | None = None,
    progress: Any = None,
    pooled: bool = False,
    head: str = "quantile",
) -> dict[str, Any]:
    """Per dataset: train an LSTM on 70 % of the traces, score it and the baselines on the other 30 %.

    The split is by whole trace with ``seed``; 15 % of the training traces (at least
    one) drive early stopping; preprocessing and the EWMA alpha are fitted on the
    training traces only. Returns ``{"datasets": {name: report + split info}, "seed"}``.

    ``pooled`` also trains ONE LSTM on the union of every dataset's training traces
    (validation: the union of their validation traces) and adds its scores on each
    dataset's test traces as ``pooled_lstm`` (same test traces, so directly comparable).
    """
    configure_tf()

    say = progress or stderr_progress
    names = list(datasets or DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise DataError(f"unknown dataset(s) {unknown}; known: {list(DATASETS)}")
    out: dict[str, Any] = {
        "seed": seed,
        "quick": quick,
        "split": "whole traces 70/30, 15% of train traces for validation; by time 60/10/30 for "
        + ", ".join(sorted(TIME_SPLIT_DATASETS)),
        "head": head,
        "datasets": {},
    }
    splits: dict[str, tuple[list, list, list]] = {}
    for name in names:
        done = _evaluate_dataset(name, quick, seed, root, say, head)
        if done is not None:
            splits[name], out["datasets"][name] = done
    if pooled and splits:
        _evaluate_pooled(splits, out, quick, seed, say)
    return out


def format_traces(res: dict[str, Any]) -> str:
    """Readable tables of :func:`evaluate_traces` output."""
    parts = []
    for name, rep in res["datasets"].items():
        tr = rep["traces"]
        parts.append(format_table(rep, f"== {name}: train {tr['train']} / val {tr['val']} / test {tr['test']} traces"))
        if "horizons" in rep:
            parts[-1] += "\n" + format_prob(rep)
        if "pooled_lstm" in rep:
            m = rep["pooled_lstm"]
            parts[-1] += (
                f"\n  {'pooled_lstm':<16}{m['mae']:>12.4g}{m['rmse']:>12.4g}{m['mape']:>9.2f}{m['smape']:>9.2f}"
                f"{m['within_2pct']:>7.1%}{m['within_10pct']:>7.1%}"
                f"\n  pooled LSTM MAE / best baseline MAE = {rep['pooled_lstm_mae_over_best_baseline']:.3f}"
            )
    return "\n\n".join(parts)
