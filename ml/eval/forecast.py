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
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import LinkSeries, records_to_links, windows_of
from ml.eval.probabilistic import prob_report, quantile_forecasts, summary
from ml.forecast.baselines import BASELINES, baseline_forecasters
from ml.forecast.training import make_quantile_model_fn
from ml.serving.predictor import Predictor, load_predictor
from stream.core.records import Telemetry

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


def collect_forecasts(
    model_dir: Path | str, version: str | None, records: Iterable[Telemetry] | Sequence[LinkSeries]
) -> dict:
    """Per-target forecasts of the LSTM of ``version`` (default current) and of every baseline.

    ``records`` are telemetry records (any order; grouped by link, ordered by seq) or
    already built :class:`LinkSeries`. Returns ``{"version", "y_true" (N,), "y_pred":
    {predictor: (N,)}, "link_ids" (N,), "profiles" (N,), "mape_floor" (N,)}``.
    """
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
        names = list(PREDICTORS) + [k for k in fc["y_pred"] if k not in PREDICTORS]  # e.g. "served"
        scores = {name: score(y[mask], fc["y_pred"][name][mask], floor[mask]) for name in names}
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


def best_baseline(predictors: dict[str, Any], model: str = "lstm") -> str | None:
    """The name of the predictor other than ``model`` with the lowest MAE (None when there is none)."""
    rivals = [k for k, v in predictors.items() if k != model and math.isfinite(v["mae"])]
    return min(rivals, key=lambda k: predictors[k]["mae"]) if rivals else None


def mae_ratio(predictors: dict[str, Any], model: str = "lstm", against: str | None = None) -> float | None:
    """``model``'s MAE over the best baseline's (or ``against``'s): below 1 the model wins.

    None when there is no baseline or its MAE is 0 (a ratio would say nothing).
    """
    ref = against or best_baseline(predictors, model)
    if ref is None or not predictors[ref]["mae"] > 0:
        return None
    return float(predictors[model]["mae"] / predictors[ref]["mae"])


def format_table(rep: dict[str, Any], title: str = "") -> str:
    """A readable text table of :func:`report` output."""
    lines = [title] if title else []

    def rows(preds: dict[str, Any], n: int, excl: int, label: str) -> None:
        ratio = mae_ratio(preds)
        lines.append(f"{label}: n={n} (MAPE excludes {excl} near-zero targets)")
        lines.append(f"  {'predictor':<16}{'MAE':>12}{'RMSE':>12}{'MAPE %':>9}{'sMAPE %':>9}{'<=2%':>7}{'<=10%':>7}")
        for name in PREDICTORS:
            m = preds[name]
            lines.append(
                f"  {name:<16}{m['mae']:>12.4g}{m['rmse']:>12.4g}{m['mape']:>9.2f}{m['smape']:>9.2f}"
                f"{m['within_2pct']:>7.1%}{m['within_10pct']:>7.1%}"
            )
        if ratio is not None:
            lines.append(f"  LSTM MAE / best baseline MAE = {ratio:.3f}")

    rows(rep["predictors"], rep["n"], rep["mape_excluded"], "all")
    for p, b in rep.get("by_profile", {}).items():
        rows(b["predictors"], b["n"], b["mape_excluded"], f"profile {p}")
    return "\n".join(lines)


def evaluate_links(model_dir: Path | str, version: str | None, links: Sequence[LinkSeries]) -> dict[str, Any]:
    """Load a model and score it and the baselines on ``links``; returns the report with ``version``.

    For a quantile model the report also has the per-horizon probabilistic scores
    (``horizons``, ``forecast_sources``, ``quantile_summary``; :mod:`ml.eval.probabilistic`).
    """
    return evaluate_predictor(load_predictor(model_dir, version), links)


def evaluate_predictor(pred: Predictor, links: Sequence[LinkSeries]) -> dict[str, Any]:
    """:func:`evaluate_links` of an already loaded predictor (callers that score it more ways)."""
    rep = report(forecasts_for_links(pred, links, float(pred.metadata.get("ewma_alpha", 0.5))))
    rep["version"] = pred.version
    if pred.spec is not None:
        model_fn = make_quantile_model_fn(pred.lstm, pred.preprocessor, len(pred.spec.horizons))
        prob = prob_report(quantile_forecasts(model_fn, pred.spec, links))
        rep["horizons"] = prob["horizons"]
        rep["forecast_sources"] = prob["forecast_sources"]
        rep["quantile_summary"] = summary(prob)
    return rep


def print_report(rep: dict[str, Any], as_json: bool, title: str = "") -> None:
    """JSON on stdout, or the table."""
    if as_json:
        json.dump(rep, sys.stdout, indent=2, allow_nan=True)
        sys.stdout.write("\n")
    else:
        print(format_table(rep, title))


# --- real traces -----------------------------------------------------------------------
