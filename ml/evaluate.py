"""Forecast accuracy of the LSTM and the naive baselines on held-out data.

Every state whose next step is known is scored: the first 10 states of a link form
its first window, and each later state's bandwidth is the target of the window that
ends just before it.

Metrics (per predictor): MAE and RMSE in Mbit/s, MAPE and sMAPE in %, and
``within_2pct`` / ``within_10pct`` = fraction of forecasts with
``|error| <= 2 % (10 %) of the target``.
MAPE ignores targets below ``max(0.01 Mbit/s, 1 % of the link's median bandwidth)``
(near-zero targets during outages would make it infinite); ``mape_excluded`` counts
them. sMAPE = mean(2|e| / (|y| + |yhat|)) with 0/0 counted as 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from stream.records import Telemetry

from ml.baselines import BASELINES, baseline_forecasters
from ml.data import LinkSeries, windows_of

PREDICTORS = ("lstm",) + BASELINES
METRICS = ("mae", "rmse", "mape", "smape", "within_2pct", "within_10pct")
MAPE_ABS_FLOOR_MBPS = 0.01
MAPE_REL_FLOOR = 0.01


def mape_floor(links: Sequence[LinkSeries], link_idx: np.ndarray) -> np.ndarray:
    """Per-target MAPE floor: max(0.01 Mbit/s, 1 % of the target's link median bandwidth)."""
    med = np.array([np.median(ls.data[:, 1]) if ls.steps else 0.0 for ls in links])
    return np.maximum(MAPE_ABS_FLOOR_MBPS, MAPE_REL_FLOOR * med[link_idx]) if len(link_idx) else np.zeros(0)


def score(y_true: np.ndarray, y_pred: np.ndarray, floor: np.ndarray | float = MAPE_ABS_FLOOR_MBPS) -> dict[str, float]:
    """The metrics of one predictor. ``floor``: targets below it are left out of MAPE only.

    Returns the six :data:`METRICS` plus ``mape_excluded`` (count); NaN metrics when
    there is nothing to score.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {y.shape} and {p.shape}")
    if y.size == 0:
        return {m: float("nan") for m in METRICS} | {"mape_excluded": 0}
    err = np.abs(p - y)
    keep = y >= np.broadcast_to(np.asarray(floor, dtype=np.float64), y.shape)
    denom = np.abs(y) + np.abs(p)
    smape = np.where(denom > 0, 2.0 * err / np.where(denom > 0, denom, 1.0), 0.0)
    return {
        "mae": float(err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mape": float(100.0 * (err[keep] / y[keep]).mean()) if keep.any() else float("nan"),
        "smape": float(100.0 * smape.mean()),
        "within_2pct": float((err <= 0.02 * np.abs(y)).mean()),
        "within_10pct": float((err <= 0.10 * np.abs(y)).mean()),
        "mape_excluded": int((~keep).sum()),
    }


def forecasts_for_links(predictor: Any, links: Sequence[LinkSeries], ewma_alpha: float) -> dict[str, Any]:
    """Run the LSTM (``predictor.forecast`` or a callable) and every baseline on all windows of ``links``."""
    windows, y, idx = windows_of(links)  # (N, 10, 4), (N,), (N,)
    fc = predictor.forecast if hasattr(predictor, "forecast") else predictor
    preds = {"lstm": np.asarray(fc(windows)) if len(y) else np.zeros(0)}
    for name, f in baseline_forecasters(ewma_alpha).items():
        preds[name] = f(windows) if len(y) else np.zeros(0)
    return {
        "y_true": y,
        "y_pred": preds,
        "link_ids": np.array([links[i].link_id for i in idx], dtype=object),
        "profiles": np.array([links[i].profile or "unknown" for i in idx], dtype=object),
        "mape_floor": mape_floor(links, idx),
    }


def collect_forecasts(model_dir: Path | str, version: str | None, records: Iterable[Telemetry] | Sequence[LinkSeries]) -> dict:
    """Per-target forecasts of the LSTM of ``version`` (default current) and of every baseline.

    ``records`` are telemetry records (any order; grouped by link, ordered by seq) or
    already built :class:`LinkSeries`. Returns ``{"version", "y_true" (N,), "y_pred":
    {predictor: (N,)}, "link_ids" (N,), "profiles" (N,), "mape_floor" (N,)}``.
    """
    from ml.data import records_to_links
    from ml.predict import load_predictor

    records = list(records)
    links = records if records and isinstance(records[0], LinkSeries) else records_to_links(records)
    pred = load_predictor(model_dir, version)
    out = forecasts_for_links(pred, links, float(pred.metadata.get("ewma_alpha", 0.5)))
    out["version"] = pred.version
    return out


def report(fc: dict[str, Any]) -> dict[str, Any]:
    """The evaluation JSON of :func:`collect_forecasts` output (overall and by profile)."""
    y, floor, profs = fc["y_true"], fc["mape_floor"], fc["profiles"]

    def block(mask: np.ndarray) -> dict[str, Any]:
        scores = {name: score(y[mask], fc["y_pred"][name][mask], floor[mask]) for name in PREDICTORS}
        excluded = scores["lstm"]["mape_excluded"]
        return {
            "n": int(mask.sum()),
            "mape_excluded": excluded,
            "predictors": {name: {m: s[m] for m in METRICS} for name, s in scores.items()},
        }

    overall = block(np.ones(len(y), dtype=bool))
    overall["by_profile"] = {}
    for p in sorted(set(profs.tolist())):
        b = block(profs == p)
        overall["by_profile"][p] = b
    return overall


def format_table(rep: dict[str, Any], title: str = "") -> str:
    """A readable text table of :func:`report` output."""
    lines = [title] if title else []

    def rows(preds: dict[str, Any], n: int, excl: int, label: str) -> None:
        best = min((v["mae"] for k, v in preds.items() if k != "lstm"), default=float("nan"))
        lines.append(f"{label}: n={n} (MAPE excludes {excl} near-zero targets)")
        lines.append(f"  {'predictor':<16}{'MAE':>12}{'RMSE':>12}{'MAPE %':>9}{'sMAPE %':>9}{'<=2%':>7}{'<=10%':>7}")
        for name in PREDICTORS:
            m = preds[name]
            lines.append(
                f"  {name:<16}{m['mae']:>12.4g}{m['rmse']:>12.4g}{m['mape']:>9.2f}{m['smape']:>9.2f}"
                f"{m['within_2pct']:>7.1%}{m['within_10pct']:>7.1%}"
            )
        if best == best and best > 0:
            lines.append(f"  LSTM MAE / best baseline MAE = {preds['lstm']['mae'] / best:.3f}")

    rows(rep["predictors"], rep["n"], rep["mape_excluded"], "all")
    for p, b in rep.get("by_profile", {}).items():
        rows(b["predictors"], b["n"], b["mape_excluded"], f"profile {p}")
    return "\n".join(lines)


def evaluate_links(model_dir: Path | str, version: str | None, links: Sequence[LinkSeries]) -> dict[str, Any]:
    """Load a model and score it and the baselines on ``links``; returns the report with ``version``."""
    fc = collect_forecasts(model_dir, version, links)
    rep = report(fc)
    rep["version"] = fc["version"]
    return rep


def print_report(rep: dict[str, Any], as_json: bool, title: str = "") -> None:
    """JSON on stdout, or the table."""
    if as_json:
        json.dump(rep, sys.stdout, indent=2, allow_nan=True)
        sys.stdout.write("\n")
    else:
        print(format_table(rep, title))


# --- real traces -----------------------------------------------------------------------

#: Per-dataset LSTM budget of ``bwp evaluate-traces`` (all five datasets in ~10 min on 2 cores).
TRACE_LSTM_SECONDS = 60.0
TRACE_TRAIN_WINDOWS = 30_000


def evaluate_traces(
    datasets: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    root: Path | str | None = None,
    progress: Any = None,
    pooled: bool = False,
) -> dict[str, Any]:
    """Per dataset: train an LSTM on 70 % of the traces, score it and the baselines on the other 30 %.

    The split is by whole trace with ``seed``; 15 % of the training traces (at least
    one) drive early stopping; preprocessing and the EWMA alpha are fitted on the
    training traces only. Returns ``{"datasets": {name: report + split info}, "seed"}``.

    ``pooled`` also trains ONE LSTM on the union of every dataset's training traces
    (validation: the union of their validation traces) and adds its scores on each
    dataset's test traces as ``pooled_lstm`` (same test traces, so directly comparable).
    """
    import time as _time

    from ml.data import split_links, trace_links
    from ml.lstm import LSTMConfig
    from ml.predict import configure_tf
    from ml.train import fit_forecaster, make_forecaster, stderr_progress

    configure_tf()
    from simulator.traces import DATASETS

    say = progress or stderr_progress
    names = list(datasets or DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        from stream.errors import DataError

        raise DataError(f"unknown dataset(s) {unknown}; known: {list(DATASETS)}")
    out: dict[str, Any] = {"seed": seed, "quick": quick, "split": "whole traces 70/30, 15% of train traces for validation",
                           "datasets": {}}
    splits: dict[str, tuple[list, list, list]] = {}
    for name in names:
        t0 = _time.monotonic()
        links = [ls for ls in trace_links(name, root) if ls.steps > 10]
        if len(links) < 3:
            say(f"{name}: only {len(links)} usable traces, skipped")
            continue
        train_val, test = split_links(links, (0.7, 0.3), seed)
        train, val = split_links(train_val, (0.85, 0.15), seed + 1)
        splits[name] = (train, val, test)
        say(f"{name}: {len(train)} train / {len(val)} val / {len(test)} test traces")
        cfg = (LSTMConfig.quick() if quick else
               LSTMConfig(time_budget_s=TRACE_LSTM_SECONDS, max_train_windows=TRACE_TRAIN_WINDOWS, max_val_windows=5_000))
        model, pre, alpha, hist = fit_forecaster(train, val, cfg, seed, say=lambda s, n=name: say(f"{n}: {s}"))
        fc = forecasts_for_links(make_forecaster(model, pre), test, alpha)
        fc["profiles"] = np.full(len(fc["y_true"]), name, dtype=object)
        rep = report(fc)
        del rep["by_profile"]  # one dataset = one profile
        rep.update({
            "traces": {"train": len(train), "val": len(val), "test": len(test)},
            "test_traces": [ls.link_id for ls in test],
            "ewma_alpha": alpha,
            "lstm_epochs": hist["epochs_run"],
            "lstm_train_windows": hist["train_windows"],
            "seconds": round(_time.monotonic() - t0, 1),
        })
        p = rep["predictors"]
        best = min((k for k in p if k != "lstm"), key=lambda k: p[k]["mae"])
        rep["best_baseline"] = best
        rep["lstm_mae_over_best_baseline"] = p["lstm"]["mae"] / p[best]["mae"] if p[best]["mae"] > 0 else None
        say(f"{name}: LSTM MAE {p['lstm']['mae']:.4g} vs {best} {p[best]['mae']:.4g} ({rep['seconds']:.0f} s)")
        out["datasets"][name] = rep
    if pooled and splits:
        t0 = _time.monotonic()
        train = [ls for tr, _, _ in splits.values() for ls in tr]
        val = [ls for _, va, _ in splits.values() for ls in va]
        cfg = (LSTMConfig.quick() if quick else
               LSTMConfig(time_budget_s=2 * TRACE_LSTM_SECONDS, max_train_windows=2 * TRACE_TRAIN_WINDOWS,
                          max_val_windows=8_000))
        model, pre, alpha, hist = fit_forecaster(train, val, cfg, seed, say=lambda s: say(f"pooled: {s}"))
        fc_fn = make_forecaster(model, pre)
        for name, (_, _, test) in splits.items():
            fc = forecasts_for_links(fc_fn, test, alpha)
            sc = score(fc["y_true"], fc["y_pred"]["lstm"], fc["mape_floor"])
            out["datasets"][name]["pooled_lstm"] = {m: sc[m] for m in METRICS}
            best = out["datasets"][name]["best_baseline"]
            ratio = sc["mae"] / out["datasets"][name]["predictors"][best]["mae"]
            out["datasets"][name]["pooled_lstm_mae_over_best_baseline"] = ratio
            say(f"pooled LSTM on {name}: MAE {sc['mae']:.4g} ({ratio:.3f} x {best})")
        out["pooled"] = {"epochs": hist["epochs_run"], "train_windows": hist["train_windows"],
                         "seconds": round(_time.monotonic() - t0, 1)}
    return out


def format_traces(res: dict[str, Any]) -> str:
    """Readable tables of :func:`evaluate_traces` output."""
    parts = []
    for name, rep in res["datasets"].items():
        tr = rep["traces"]
        parts.append(format_table(rep, f"== {name}: train {tr['train']} / val {tr['val']} / test {tr['test']} traces"))
        if "pooled_lstm" in rep:
            m = rep["pooled_lstm"]
            parts[-1] += (f"\n  {'pooled_lstm':<16}{m['mae']:>12.4g}{m['rmse']:>12.4g}{m['mape']:>9.2f}{m['smape']:>9.2f}"
                          f"{m['within_2pct']:>7.1%}{m['within_10pct']:>7.1%}"
                          f"\n  pooled LSTM MAE / best baseline MAE = {rep['pooled_lstm_mae_over_best_baseline']:.3f}")
    return "\n\n".join(parts)
