"""``bwp evaluate-traces``: score forecasts on each real-trace dataset's held-out 30 % against the
naive baselines, with the model trained per dataset, pooled over all, or on all others (leave-one-out).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import split_by_time, split_links, trace_links
from ml.eval.forecast import (
    best_baseline,
    forecasts_for_links,
    format_table,
    mae_ratio,
    report,
)
from ml.eval.probabilistic import format_prob, prob_report, quantile_forecasts, summary
from ml.forecast.context import check_mode, series_states
from ml.forecast.lstm import LSTMConfig
from ml.forecast.naive import NaiveQuantiles
from ml.forecast.quantiles import from_ratio
from ml.forecast.training import (
    fit_forecaster,
    fit_quantile_forecaster,
    horizon_windows_of,
    make_forecaster,
    make_quantile_model_fn,
)
from ml.serving.runtime import configure_tf
from simulator.traces.datasets import DATASETS, TIME_SPLIT_DATASETS
from stream.core.errors import DataError
from stream.core.progress import stderr_progress

#: Per-dataset LSTM budget of ``bwp evaluate-traces`` (all five datasets in ~10 min on 2 cores).
TRACE_LSTM_SECONDS = 60.0

TRACE_TRAIN_WINDOWS = 30_000
#: Train / validation / test shares of each series, oldest first, for :data:`TIME_SPLIT_DATASETS`.
TIME_FRACTIONS = (0.6, 0.1, 0.3)
#: How the model scored on a dataset is trained (:func:`training_sets`).
EVAL_MODES = ("per-dataset", "pooled", "leave-one-out")


def _lstm_config(quick: bool, pooled: bool, seconds: float | None = None) -> LSTMConfig:
    """The LSTM budget: ``LSTMConfig.quick()``, else the per-dataset budget (doubled, with twice the
    windows, for a model trained on several datasets); ``seconds`` overrides the time budget."""
    if quick:
        cfg = LSTMConfig.quick()
    elif pooled:
        cfg = LSTMConfig(
            time_budget_s=2 * TRACE_LSTM_SECONDS, max_train_windows=2 * TRACE_TRAIN_WINDOWS, max_val_windows=8_000
        )
    else:
        cfg = LSTMConfig(time_budget_s=TRACE_LSTM_SECONDS, max_train_windows=TRACE_TRAIN_WINDOWS, max_val_windows=5_000)
    if seconds is not None:
        cfg.time_budget_s = seconds
    return cfg


def _split(name: str, links: list, seed: int) -> tuple[list, list, list]:
    """(train, val, test): by time for :data:`TIME_SPLIT_DATASETS`, else by whole trace."""
    if name in TIME_SPLIT_DATASETS:
        train, val, test = split_by_time(links, TIME_FRACTIONS)
        return train, val, test
    train_val, test = split_links(links, (0.7, 0.3), seed)
    train, val = split_links(train_val, (0.85, 0.15), seed + 1)
    return train, val, test


def training_sets(mode: str, names: Sequence[str]) -> dict[str, list[str]]:
    """Which datasets' training splits the model scored on each dataset is trained on:
    per-dataset its own, pooled all of them, leave-one-out all but itself (never itself)."""
    if mode not in EVAL_MODES:
        raise DataError(f"mode must be one of {EVAL_MODES}, got {mode!r}")
    names = list(names)
    if mode == "per-dataset":
        return {n: [n] for n in names}
    if mode == "pooled":
        return {n: list(names) for n in names}
    if len(names) < 2:
        raise DataError(f"leave-one-out needs at least two datasets, got {names}")
    return {n: [m for m in names if m != n] for n in names}


def _load_splits(
    names: Sequence[str], seed: int, root: Path | str | None, say: Any, context: str
) -> dict[str, tuple[list, list, list]]:
    """Each usable dataset's (train, val, test) links; with a context, every link's long-memory
    states are computed over its whole series first (a time split's test part continues them)."""
    splits = {}
    for name in names:
        links = [ls for ls in trace_links(name, root) if ls.steps > 10]
        if len(links) < 3 and name not in TIME_SPLIT_DATASETS:
            say(f"{name}: only {len(links)} usable traces, skipped")
            continue
        if context != "none":
            for ls in links:
                ls.states = series_states(ls.data)
        splits[name] = _split(name, links, seed)
        tr, va, te = splits[name]
        say(f"{name}: {len(tr)} train / {len(va)} val / {len(te)} test traces")
    return splits


def _own_naive(train: list, spec: Any) -> dict[str, Any]:
    """Naive forecasters fitted on one dataset's own training split (pooled and leave-one-out
    modes score the served forecast against these too: the strictest naive reference)."""
    wt, yt, pt, _ = horizon_windows_of(train, spec.horizons)
    return {"naive": NaiveQuantiles.fit(wt, yt, pt, spec.horizons, spec.quantiles)} if len(yt) else {}


def _score(
    name: str, fit: tuple, split: tuple[list, list, list], trained_on: list[str], own: dict[str, Any]
) -> dict[str, Any]:
    """Score one fitted quantile model on one dataset's test split: the JSON of a dataset."""
    model, pre, spec, hist = fit
    test = split[2]
    qfc = quantile_forecasts(make_quantile_model_fn(model, pre, len(spec.horizons), context=spec.context), spec, test)
    if own:  # the dataset's own naive forecasters, as extra predictors "<name>@dataset"
        z = own["naive"].predict_ratio(qfc["windows"], qfc["profiles"])
        qfc["q"].update({f"{k}@dataset": from_ratio(qfc["windows"], v) for k, v in z.items()})
    prob = prob_report(qfc)
    alpha = spec.naive.alphas[0]
    mid = len(spec.quantiles) // 2
    fc = forecasts_for_links(lambda w: qfc["q"]["lstm"][:, 0, mid], test, alpha)  # same windows, same order
    fc["y_pred"]["served"] = qfc["q"]["served"][:, 0, mid]
    rep = _dataset_report(name, fc, split, "quantile", trained_on, alpha, hist)
    rep.update(
        {
            "horizons": prob["horizons"],
            "forecast_sources": prob["forecast_sources"],
            "quantiles": prob["quantiles"],
            "summary": summary(prob),
        }
    )
    return rep


def _point_dataset(name: str, split: tuple[list, list, list], cfg: LSTMConfig, seed: int, say: Any) -> dict:
    """The design's point LSTM on one dataset (``--head point``, per-dataset mode only)."""
    train, val, test = split
    model, pre, alpha, hist = fit_forecaster(train, val, cfg, seed, say=say)
    fc = forecasts_for_links(make_forecaster(model, pre), test, alpha)
    return _dataset_report(name, fc, split, "point", [name], alpha, hist)


def _dataset_report(
    name: str,
    fc: dict[str, Any],
    split: tuple[list, list, list],
    head: str,
    trained_on: list[str],
    alpha: float,
    hist: dict[str, Any],
) -> dict[str, Any]:
    """The h = 1 point report of one dataset's forecasts ``fc`` and what every head's JSON says of
    its split and its model."""
    train, val, test = split
    fc["profiles"] = np.full(len(fc["y_true"]), name, dtype=object)
    rep = report(fc)
    del rep["by_profile"]  # one dataset = one profile
    rep.update({"head": head, "trained_on": trained_on, "split": "time" if name in TIME_SPLIT_DATASETS else "traces",
                "traces": {"train": len(train), "val": len(val), "test": len(test)},
                "test_traces": [ls.link_id for ls in test], "ewma_alpha": alpha,
                "lstm_epochs": hist["epochs_run"], "lstm_train_windows": hist["train_windows"]})  # fmt: skip
    return rep


def _finish(rep: dict[str, Any], name: str, seconds: float, say: Any) -> None:
    rep["seconds"] = round(seconds, 1)
    p = {k: v for k, v in rep["predictors"].items() if k != "served"}
    best = best_baseline(p)
    rep["best_baseline"] = best
    rep["lstm_mae_over_best_baseline"] = mae_ratio(p)
    line = f"{name}: LSTM MAE {p['lstm']['mae']:.4g} vs {best} {p[best]['mae']:.4g}"
    if "summary" in rep:
        line += "; served pinball / best naive " + ", ".join(
            f"h={h} {v['served_pinball_ratio']:.3f}" for h, v in rep["summary"].items()
            if v["served_pinball_ratio"] is not None
        )  # fmt: skip
    say(line)


def evaluate_traces(
    datasets: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    root: Path | str | None = None,
    progress: Any = None,
    mode: str = "per-dataset",
    head: str = "quantile",
    context: str = "none",
    lstm_seconds: float | None = None,
) -> dict[str, Any]:
    """Score forecasts on each real-trace dataset's test split, the model trained as ``mode`` says.

    The split is by whole trace with ``seed`` (time-split datasets: 60/10/30 of every series);
    15 % of the training traces (at least one) drive early stopping, calibration and the
    fallback choice; preprocessing and the naive forecasters are fitted on training traces only.

    * ``per-dataset``: one model per dataset, trained on its own training split;
    * ``pooled``: ONE model trained on the training splits of all datasets (validation: the
      union of their validation splits), as one fleet deployment would run it;
    * ``leave-one-out``: per dataset, a model trained on the other datasets only: links of a
      kind it has never seen, as a new deployment meets them.

    In the pooled modes each dataset's report also scores the naive forecasters fitted on that
    dataset's own training split (``<name>@dataset``); the summary ratios are over the best of
    all naive forecasters. ``context`` ("none", "long") is the LSTM's long-memory input
    (:mod:`ml.forecast.context`). Returns ``{"mode", "datasets": {name: report}, "models", ...}``.
    """
    configure_tf()
    check_mode(context)
    say = progress or stderr_progress
    names = list(datasets or DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise DataError(f"unknown dataset(s) {unknown}; known: {list(DATASETS)}")
    if head == "point" and (mode != "per-dataset" or context != "none"):
        raise DataError("--head point is evaluated per dataset without context only")
    splits = _load_splits(names, seed, root, say, context)
    plan = training_sets(mode, list(splits))
    out: dict[str, Any] = {
        "seed": seed,
        "quick": quick,
        "mode": mode,
        "context": context,
        "split": "whole traces 70/30, 15% of train traces for validation; by time 60/10/30 for "
        + ", ".join(sorted(TIME_SPLIT_DATASETS)),
        "head": head,
        "datasets": {},
        "models": {},
    }
    fits: dict[tuple[str, ...], tuple] = {}
    for name, trained_on in plan.items():
        t0 = time.monotonic()
        key = tuple(trained_on)
        tag = {"per-dataset": name, "pooled": "pooled"}.get(mode, f"all but {name}")
        log = lambda s, n=tag: say(f"{n}: {s}")  # noqa: E731 - a one-line prefixing logger
        cfg = _lstm_config(quick, pooled=len(key) > 1, seconds=lstm_seconds)
        if head == "point":
            rep = _point_dataset(name, splits[name], cfg, seed, log)
            _finish(rep, name, time.monotonic() - t0, say)
            out["datasets"][name] = rep
            continue
        if key not in fits:
            train = [ls for n in key for ls in splits[n][0]]
            val = [ls for n in key for ls in splits[n][1]]
            fits[key] = fit_quantile_forecaster(train, val, cfg, seed, say=log, context=context)
            hist = fits[key][3]
            out["models"][tag] = {"trained_on": list(key), "epochs": hist["epochs_run"],
                                  "train_windows": hist["train_windows"], "seconds": hist["seconds"],
                                  "sources": fits[key][2].sources}  # fmt: skip
        own = _own_naive(splits[name][0], fits[key][2]) if key != (name,) else {}
        rep = _score(name, fits[key], splits[name], list(key), own)
        _finish(rep, name, time.monotonic() - t0, say)
        out["datasets"][name] = rep
    return out


def format_traces(res: dict[str, Any]) -> str:
    """Readable tables of :func:`evaluate_traces` output."""
    parts = []
    for name, rep in res["datasets"].items():
        tr = rep["traces"]
        on = ", ".join(rep.get("trained_on", [name]))
        title = f"== {name}: train {tr['train']} / val {tr['val']} / test {tr['test']} traces; model trained on {on}"
        parts.append(format_table(rep, title))
        if "horizons" in rep:
            parts[-1] += "\n" + format_prob(rep)
    return "\n\n".join(parts)
