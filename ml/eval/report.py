"""``bwp report``: one HTML page with PNG plots about a registered model version.

Contents, all on held-out simulator links (seed from ``ml.policy_eval.heldout_seed``):

* forecast vs actual bandwidth for a few sample links (LSTM and last value);
* CDF of the absolute relative forecast error per predictor and profile;
* forecast metrics per profile (``ml.evaluate.report``);
* for a quantile model: fan charts, reliability diagrams and the per-horizon scores
  (:mod:`ml.eval.report_quantiles`);
* the DDQN training curve (from the version's ``metadata["ddqn"]`` history) against
  the baseline levels on its validation episodes (fixed 50 %, predict-then-allocate, oracle);
* the policy evaluation per profile (``ml.policy_eval``: mean reward of the DDQN and
  the baselines on the held-out links).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import LinkSeries, simulator_links
from ml.eval.forecast import METRICS, PREDICTORS, forecasts_for_links
from ml.eval.forecast import report as forecast_report
from ml.eval.report_quantiles import quantile_section
from ml.serving.predictor import load_predictor
from stream.core.records import PROFILES

#: Lines per predictor in the plots (the LSTM stands out).
_STYLE = {"lstm": {"lw": 1.6, "color": "C3"}, "last_value": {"lw": 1.0, "color": "C0", "alpha": 0.8}}


def _plt():
    import matplotlib  # matplotlib: only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: only the report draws

    return plt


def plot_forecasts(path: Path, samples: Sequence[tuple[str, np.ndarray, dict[str, np.ndarray]]]) -> None:
    """Actual vs forecast bandwidth, one panel per (title, y_true, {predictor: y_pred})."""
    plt = _plt()
    n = max(1, len(samples))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    for ax, (title, y, preds) in zip(axes[:, 0], samples):
        t = np.arange(len(y))
        ax.plot(t, y, color="black", lw=1.2, label="actual")
        for name, p in preds.items():
            ax.plot(t, p, label=name, **_STYLE.get(name, {"lw": 1.0}))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("Mbit/s")
        ax.legend(fontsize=8, loc="lower left")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_error_cdf(path: Path, y_true: np.ndarray, y_pred: dict[str, np.ndarray], profiles: np.ndarray) -> None:
    """CDF of |forecast - actual| / actual (targets of 0 left out), one panel per profile."""
    plt = _plt()
    names = sorted(set(profiles.tolist())) or ["all"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, prof in zip(axes[0], names):
        m = (profiles == prof) & (y_true > 0)
        for name, p in y_pred.items():
            e = np.sort(np.abs(p[m] - y_true[m]) / y_true[m])
            if e.size:
                ax.plot(e, np.arange(1, e.size + 1) / e.size, label=name, **_STYLE.get(name, {"lw": 1.0}))
        ax.set_xscale("log")
        ax.set_xlim(1e-4, 10)
        ax.set_xlabel("absolute relative error")
        ax.set_ylabel("fraction of forecasts")
        ax.set_title(f"profile {prof}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_ddqn_training(path: Path, hist: dict[str, Any]) -> None:
    """Training reward per episode (smoothed), greedy validation reward, baseline levels."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    ep = np.asarray(hist.get("episode_reward", []), dtype=np.float64)
    if ep.size:
        k = max(1, min(16, ep.size // 8))
        smooth = np.convolve(ep, np.ones(k) / k, mode="valid")
        ax.plot(
            np.arange(k, ep.size + 1),
            smooth,
            color="C0",
            lw=1.0,
            label=f"training episodes (epsilon-greedy, mean of {k})",
        )
    ge = hist.get("greedy_eval", [])
    if ge:
        ax.plot(
            [r["episode"] for r in ge],
            [r["mean_reward"] for r in ge],
            "o-",
            color="C3",
            lw=1.6,
            label="greedy policy, eval episodes from the training links",
        )
    colours = {"fixed_50": "C7", "best_fixed": "C2", "predict_then_allocate": "C1", "oracle": "black"}
    for name, value in (hist.get("baselines") or {}).items():
        if name in colours and value is not None:
            ax.axhline(value, ls="--", lw=1.0, color=colours[name], label=f"{name} {value:.3f}")
    ax.set_xlabel("episodes finished")
    ax.set_ylabel("mean reward per step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_policy_scores(path: Path, results: dict[str, dict[str, Any]]) -> None:
    """Grouped bars: mean reward of each policy per profile."""
    plt = _plt()
    keys = ("ddqn", "fixed_50", "best_fixed", "predict_then_allocate", "oracle")
    profs = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 2.8 * len(profs)), 3.8))
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        vals = [results[p]["mean_reward"][k] or 0.0 for p in profs]
        ax.bar(np.arange(len(profs)) + i * width, vals, width, label=k)
    ax.set_xticks(np.arange(len(profs)) + 0.4 - width / 2, profs)
    ax.set_ylabel("mean reward per step")
    ax.axhline(0, color="black", lw=0.6)
    lo = min(0.0, min((results[p]["mean_reward"][k] or 0.0) for p in profs for k in keys))
    ax.set_ylim(lo, 1.25)  # headroom for the legend above the bars
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _forecast_samples(
    profiles: Sequence[str], by_profile: dict[str, list[LinkSeries]], fc: dict[str, Any]
) -> list[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """Forecast vs actual panels: the first link of each profile, last 120 steps (LSTM and last value)."""
    samples = []
    for p in profiles:
        ls = by_profile[p][0]
        m = fc["link_ids"] == ls.link_id
        sl = slice(-120, None)
        samples.append(
            (
                f"{ls.link_id} ({ls.profile})",
                fc["y_true"][m][sl],
                {k: fc["y_pred"][k][m][sl] for k in ("last_value", "lstm")},
            )
        )
    return samples


def _html_head(version: str, links: int, steps: int, sim_seed: int) -> list[str]:
    """The page head, the held-out data line and the forecast plots, as HTML fragments."""
    return [
        "<!doctype html><html><head><meta charset='utf-8'><title>bwp report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}</style>",
        f"</head><body><h1>bwp model {html.escape(version)}</h1>",
        f"<p>Held-out simulator links: {links} per profile, {steps} steps, simulator seed {sim_seed} "
        "(never used for training). Rewards: docs/policy.md.</p>",
        "<h2>Forecast vs actual</h2><img src='forecast_vs_actual.png' alt='forecast vs actual'>",
        "<h2>Forecast error CDF</h2><img src='error_cdf.png' alt='error CDF'>",
    ]


def _forecast_html(rep: dict[str, Any]) -> list[str]:
    """One forecast-metrics table per profile, as HTML fragments."""
    parts = ["<h2>Forecast metrics</h2>"]
    for prof, block in rep.get("by_profile", {}).items():
        parts.append(f"<h3>profile {html.escape(prof)} (n = {block['n']})</h3>")
        parts.append(
            _table(["predictor", *METRICS], [[k, *(block["predictors"][k][m] for m in METRICS)] for k in PREDICTORS])
        )
    return parts


def _policy_html(policy_res: dict[str, dict[str, Any]]) -> list[str]:
    """The policy-score plot and the per-profile mean-reward table, as HTML fragments."""
    keys = ("ddqn", "fixed_50", "best_fixed", "predict_then_allocate", "oracle")
    return [
        "<h2>Allocation policy</h2><img src='policy_scores.png' alt='policy scores'>",
        _table(
            ["profile", "decisions", *keys, "normalized_score"],
            [
                [p, r["decisions"], *(r["mean_reward"][k] for k in keys), r["normalized_score"]]
                for p, r in policy_res.items()
            ],
        ),
    ]


def _ddqn_html(hist: dict[str, Any], has_hist: bool, timings: dict[str, Any] | None) -> list[str]:
    """The DDQN training curve and config (or a note that there is none), then the timings, as HTML fragments."""
    parts = ["<h2>DDQN training</h2>"]
    if has_hist:
        parts.append("<img src='ddqn_training.png' alt='DDQN training curve'>")
        cfg = hist.get("config", {})
        parts.append(f"<pre>{html.escape(json.dumps({k: cfg.get(k) for k in sorted(cfg)}, indent=1))}</pre>")
    else:
        parts.append("<p>This version's metadata has no DDQN training history.</p>")
    if timings:
        parts.append("<h2>Timings</h2>" + _table(list(timings), [list(timings.values())]))
    return parts


def write_html_report(
    out_dir: Path | str,
    model_dir: Path | str,
    version: str | None = None,
    profiles: Sequence[str] = PROFILES,
    links: int = 8,
    steps: int = 300,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/index.html`` and its PNGs for ``version`` (default current); returns the HTML path."""
    from ml.policy.evaluation import (  # gymnasium (through ml.policy.env): only policy evaluation needs it
        evaluate_series,
        heldout_seed,
        predictor_policy,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = load_predictor(model_dir, version)
    meta = pred.metadata
    sim_seed = heldout_seed(seed)

    by_profile: dict[str, list[LinkSeries]] = {p: simulator_links(p, links, steps, sim_seed) for p in profiles}
    all_links = [ls for p in profiles for ls in by_profile[p]]
    # the report's own profile label: "mixed" links keep their base profile in LinkSeries.profile
    fc = forecasts_for_links(pred, all_links, float(meta.get("ewma_alpha", 0.5)))
    rep = forecast_report(fc)

    plot_forecasts(out / "forecast_vs_actual.png", _forecast_samples(profiles, by_profile, fc))
    plot_error_cdf(out / "error_cdf.png", fc["y_true"], fc["y_pred"], fc["profiles"])

    forecaster, policy = predictor_policy(pred)
    policy_res = {p: evaluate_series([ls.data for ls in by_profile[p]], forecaster, policy) for p in profiles}
    plot_policy_scores(out / "policy_scores.png", policy_res)

    hist = meta.get("ddqn") or {}
    has_hist = bool(hist.get("episode_reward") or hist.get("greedy_eval"))
    if has_hist:
        plot_ddqn_training(out / "ddqn_training.png", hist)

    quantile_html, quantile_rep = quantile_section(out, pred, all_links, _plt())
    parts = [
        *_html_head(pred.version, links, steps, sim_seed),
        *_forecast_html(rep),
        *quantile_html,
        *_policy_html(policy_res),
        *_ddqn_html(hist, has_hist, meta.get("timings")),
        "</body></html>",
    ]
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    (out / "report.json").write_text(
        json.dumps(
            {"version": pred.version, "forecast": rep, "forecast_quantiles": quantile_rep, "policy": policy_res},
            indent=1,
            default=float,
        ),
        encoding="utf-8",
    )
    return index
