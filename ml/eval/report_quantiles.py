"""The probabilistic part of ``bwp report``: fan charts and reliability diagrams.

* fan charts: for a few sample links, the served forecast's p10..p90 band and median of
  the mean bandwidth over the next ``h`` steps, over what came (one panel per horizon);
* reliability diagrams: nominal quantile level against the observed share of outcomes
  below the forecast, per horizon, for the served forecast and each naive forecaster (a
  calibrated forecaster lies on the diagonal).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import LinkSeries
from ml.eval.probabilistic import prob_report, quantile_forecasts
from ml.forecast.training import make_quantile_model_fn

#: Steps shown per fan chart.
FAN_STEPS = 150


def plot_fans(path: Path, fc: dict[str, Any], links: Sequence[LinkSeries], plt: Any) -> None:
    """One row per sample link, one column per horizon: served p10..p90 band, median and actual."""
    hs = fc["horizons"]
    mid = len(fc["quantiles"]) // 2
    fig, axes = plt.subplots(len(links), len(hs), figsize=(4.2 * len(hs), 2.6 * len(links)), squeeze=False)
    for row, ls in enumerate(links):
        rows = np.flatnonzero(fc["link_idx"] == row)[-FAN_STEPS:]
        t = np.arange(len(rows))
        for col, h in enumerate(hs):
            ax = axes[row, col]
            q = fc["q"]["served"][rows, col]  # (n, Q)
            ax.fill_between(t, q[:, 0], q[:, -1], color="C0", alpha=0.25, label=f"p{fc['quantiles'][0]*100:.0f}"
                            f"..p{fc['quantiles'][-1]*100:.0f}")  # fmt: skip
            ax.plot(t, q[:, mid], color="C0", lw=1.2, label="median")
            ax.plot(t, fc["y"][rows, col], color="black", lw=0.9, label="actual")
            ax.set_title(f"{ls.link_id} ({ls.profile}), mean of next {h}", fontsize=9)
            if col == 0:
                ax.set_ylabel("Mbit/s")
        axes[row, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_reliability(path: Path, rep: dict[str, Any], plt: Any) -> None:
    """Nominal vs observed coverage per horizon (served and naive forecasters)."""
    qs = rep["quantiles"]
    hs = list(rep["horizons"])
    fig, axes = plt.subplots(1, len(hs), figsize=(4 * len(hs), 3.6), squeeze=False)
    for ax, h in zip(axes[0], hs):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for name, m in rep["horizons"][h]["predictors"].items():
            obs = [m["coverage"][str(q)] for q in qs]
            ax.plot(qs, obs, marker="o", lw=1.6 if name == "served" else 0.9, label=name)
        ax.set_title(f"h = {h} (n = {rep['horizons'][h]['n']})", fontsize=10)
        ax.set_xlabel("nominal quantile")
        ax.set_ylabel("observed share below")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def quantile_section(out: Path, pred: Any, links: Sequence[LinkSeries], plt: Any) -> tuple[list[str], dict | None]:
    """The HTML fragments (and the JSON report) of the probabilistic forecast; none for a point model."""
    if getattr(pred, "spec", None) is None:
        return ["<h2>Probabilistic forecast</h2><p>This version is a point model (no quantiles).</p>"], None
    spec = pred.spec
    fc = quantile_forecasts(make_quantile_model_fn(pred.lstm, pred.preprocessor, len(spec.horizons)), spec, links)
    rep = prob_report(fc)
    sample_idx = sorted({int(np.flatnonzero(fc["profiles"] == p)[0]) for p in set(fc["profiles"].tolist())})
    samples = [links[int(fc["link_idx"][i])] for i in sample_idx]
    sub = {**fc, "link_idx": np.array([{int(fc["link_idx"][i]): k for k, i in enumerate(sample_idx)}.get(int(j), -1)
                                       for j in fc["link_idx"]])}  # fmt: skip
    plot_fans(out / "fan_charts.png", sub, samples, plt)
    plot_reliability(out / "reliability.png", rep, plt)
    rows = []
    for h, b in rep["horizons"].items():
        for name, m in b["predictors"].items():
            c = m["coverage"]
            rows.append(f"<tr><td>{h}</td><td>{html.escape(name)}</td><td>{m['mae']:.4g}</td><td>{m['pinball']:.4g}"
                        f"</td><td>{m['wis']:.4g}</td>" + "".join(f"<td>{c[k]:.3f}</td>" for k in c) + "</tr>")  # fmt: skip
    cov_head = "".join(f"<th>cov {html.escape(k)}</th>" for k in next(iter(rep["horizons"].values()))["predictors"]
                       ["served"]["coverage"])  # fmt: skip
    return [
        "<h2>Probabilistic forecast</h2>",
        f"<p>Served sources per horizon: {html.escape(str(rep['forecast_sources']))}</p>",
        "<h3>Fan charts (served forecast)</h3><img src='fan_charts.png' alt='fan charts'>",
        "<h3>Reliability</h3><img src='reliability.png' alt='reliability diagrams'>",
        "<table><tr><th>h</th><th>predictor</th><th>MAE</th><th>pinball</th><th>WIS</th>"
        + cov_head
        + "</tr>"
        + "".join(rows)
        + "</table>",
    ], rep
