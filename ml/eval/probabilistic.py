"""Scores of probabilistic multi-horizon forecasts: the model, the served forecast and the naive ones.

Per horizon ``h`` and predictor: MAE of the median, mean pinball loss over the
quantiles, weighted interval score and coverage (all in Mbit/s, definitions in
:mod:`ml.forecast.quantiles`), on every state of the scored links whose next ``h``
steps are known. Predictors:

* ``lstm``: the quantile LSTM, calibrated (split-conformal shifts fitted on validation);
* ``served``: what the worker publishes: per profile and horizon the forecaster chosen
  on validation (the ``lstm`` or a naive fallback);
* ``last_value``, ``ewma``, ``moving_average``: the naive probabilistic forecasters,
  widened by their training-split log-ratio quantiles.

JSON shape: ``{"horizons": {"1": {"n", "predictors": {name: {"mae", "pinball", "wis",
"coverage": {"0.1", "0.5", "0.9", "interval"}}}}, ...}, "by_profile": {p: {"horizons": ...}},
"forecast_sources": {h: {source: share}}}``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ml.data import LinkSeries
from ml.forecast.calibration import ForecastSpec
from ml.forecast.naive import NAIVE
from ml.forecast.quantiles import coverage, from_ratio, pinball, wis
from ml.forecast.training import horizon_states_of, horizon_windows_of

PROB_PREDICTORS: tuple[str, ...] = ("lstm", "served") + NAIVE


def quantile_forecasts(
    model_fn: Callable[[np.ndarray], np.ndarray], spec: ForecastSpec, links: Sequence[LinkSeries]
) -> dict[str, Any]:
    """Every predictor's quantile forecasts (N, H, Q) Mbit/s on all windows of ``links``,
    with targets (N, H), profiles (N,), link index (N,) and each row's served sources (H, N)."""
    w, y, prof, idx = horizon_windows_of(links, spec.horizons)  # (N, 10, 4), (N, H)
    z = model_fn(w) if spec.context is None else model_fn(w, horizon_states_of(links))  # (N, H, Q)
    served, cands = spec.served_ratio(w, prof, z)
    q = {name: from_ratio(w, c) for name, c in cands.items()}
    q["served"] = from_ratio(w, served)
    return {
        "y": y,
        "q": q,
        "profiles": prof,
        "link_idx": idx,
        "sources": [spec.source_of(prof, k) for k in range(len(spec.horizons))],
        "horizons": spec.horizons,
        "quantiles": spec.quantiles,
        "windows": w,
    }


def score_quantiles(y: np.ndarray, q: np.ndarray, quantiles: Sequence[float]) -> dict[str, Any]:
    """The four scores of one predictor at one horizon: y (N,), q (N, Q)."""
    m = len(quantiles) // 2
    return {
        "mae": float(np.abs(q[:, m] - y).mean()) if len(y) else float("nan"),
        "pinball": pinball(y, q, quantiles),
        "wis": wis(y, q, quantiles),
        "coverage": coverage(y, q, quantiles),
    }


def _horizons_block(fc: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    out = {}
    for k, h in enumerate(fc["horizons"]):
        ok = rows & np.isfinite(fc["y"][:, k])
        out[str(h)] = {
            "n": int(ok.sum()),
            "predictors": {  # PROB_PREDICTORS first, then any extra (e.g. "ewma@dataset")
                name: score_quantiles(fc["y"][ok, k], fc["q"][name][ok, k], fc["quantiles"])
                for name in list(PROB_PREDICTORS) + [n for n in fc["q"] if n not in PROB_PREDICTORS]
            },
        }
    return out


def prob_report(fc: dict[str, Any]) -> dict[str, Any]:
    """The probabilistic evaluation JSON of :func:`quantile_forecasts` output."""
    n = len(fc["y"])
    prof = fc["profiles"]
    shares = {}
    for k, h in enumerate(fc["horizons"]):
        c = Counter(fc["sources"][k].tolist())
        shares[str(h)] = {s: round(v / n, 4) for s, v in sorted(c.items())} if n else {}
    return {
        "horizons": _horizons_block(fc, np.ones(n, dtype=bool)),
        "by_profile": {p: {"horizons": _horizons_block(fc, prof == p)} for p in sorted(set(prof.tolist()))},
        "forecast_sources": shares,
        "quantiles": list(fc["quantiles"]),
    }


def best_naive(predictors: dict[str, Any], metric: str) -> str | None:
    """The naive forecaster with the lowest ``metric`` (None when none is finite); a naive one fitted
    elsewhere (``"ewma@dataset"``: on the scored dataset's own training split) counts too."""
    ok = [k for k in predictors if k.split("@")[0] in NAIVE and np.isfinite(predictors[k][metric])]
    return min(ok, key=lambda k: predictors[k][metric]) if ok else None


def ratio_to_naive(predictors: dict[str, Any], metric: str, model: str = "served") -> float | None:
    """``model``'s ``metric`` over the best naive forecaster's; None when undefined."""
    ref = best_naive(predictors, metric)
    if ref is None or not predictors[ref][metric] > 0:
        return None
    return float(predictors[model][metric] / predictors[ref][metric])


def summary(rep: dict[str, Any]) -> dict[str, Any]:
    """Per horizon: served and lstm MAE and pinball ratios to the best naive, and the served coverage."""
    out = {}
    for h, b in rep["horizons"].items():
        p = b["predictors"]
        out[h] = {
            "n": b["n"],
            "served_mae_ratio": ratio_to_naive(p, "mae"),
            "served_pinball_ratio": ratio_to_naive(p, "pinball"),
            "lstm_mae_ratio": ratio_to_naive(p, "mae", "lstm"),
            "lstm_pinball_ratio": ratio_to_naive(p, "pinball", "lstm"),
            "served_coverage": p["served"]["coverage"],
            "best_naive_pinball": best_naive(p, "pinball"),
        }
    return out


def format_prob(rep: dict[str, Any], title: str = "") -> str:
    """A readable table of :func:`prob_report` output (overall only)."""
    qs = rep["quantiles"]
    lines = [title] if title else []
    for h, b in rep["horizons"].items():
        lines.append(f"h={h}: n={b['n']}  sources {rep['forecast_sources'].get(h, {})}")
        cov = "  ".join(f"cov{q}" for q in qs)
        lines.append(f"  {'predictor':<16}{'MAE':>12}{'pinball':>12}{'WIS':>12}  {cov}  interval")
        for name, m in b["predictors"].items():
            c = m["coverage"]
            covs = "  ".join(f"{c[str(q)]:>{len(str(q)) + 3}.3f}" for q in qs)
            lines.append(
                f"  {name:<16}{m['mae']:>12.4g}{m['pinball']:>12.4g}{m['wis']:>12.4g}  {covs}  {c['interval']:>8.3f}"
            )
        r = ratio_to_naive(b["predictors"], "pinball")
        if r is not None:
            lines.append(
                f"  served pinball / best naive = {r:.3f}; MAE ratio {ratio_to_naive(b['predictors'], 'mae'):.3f}"
            )
    return "\n".join(lines)
