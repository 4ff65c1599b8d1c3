"""``bwp evaluate-compression``: the compression hint against every fixed level on real traces.

For every state of every link with a full window behind it and ``horizon`` steps ahead:

* forecast = EWMA (``alpha``, :func:`ml.forecast.baselines.ewma`) of the window's bandwidth:
  a transparent forecaster that needs no training (the served v3 hint reads the model's
  horizon-``h`` p50 instead; ``--alpha`` sets the smoothing);
* hint = :func:`stream.core.compression.choose_levels` of that forecast under the profile;
* realised = the mean bandwidth of the next ``horizon`` steps (what the chunk actually sees);
* time of option ``l`` = the profile's ``t_l(realised)`` (docs/compression.md), for the hint,
  for every fixed option (none and each measured level, the profile's dropped levels included,
  with their measured speed and ratio), and for the oracle (the best option at the realised
  bandwidth).

States whose realised mean is 0 (an outage: every option takes forever) are counted and left
out. Reported per dataset: the mean time of one chunk per option, each option's mean over the
oracle's mean (the expected-time ratio, dominated by the slow states), and the per-state ratio
``t / t_oracle`` averaged over states (every state weighs the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import LinkSeries, trace_links
from ml.forecast.baselines import ewma
from simulator.traces.datasets import DATASETS
from stream.core.compression import CompressionProfile, choose_levels
from stream.core.errors import DataError
from stream.core.progress import Progress
from stream.core.records import BW, WINDOW

DEFAULT_ALPHA = 0.3


def _options(profile: CompressionProfile) -> dict[str, tuple[float, float]]:
    """Every fixed option: name -> (compress MB/s, ratio); none = (inf, 1)."""
    out = {"none": (np.inf, 1.0)}
    measured = [(lv.level, lv.compress_mb_s, lv.ratio) for lv in profile.levels]
    measured += [(int(d["level"]), float(d["compress_mb_s"]), float(d["ratio"])) for d in profile.dropped]
    for level, speed, ratio in sorted(measured):
        out[f"zstd-{level}"] = (speed, ratio)
    return out


def _times(size: int, speed: float, ratio: float, bw_mbps: np.ndarray) -> np.ndarray:
    """The rule's ``max(size / speed, size * ratio / bandwidth)`` in seconds, vectorised."""
    return np.maximum(size / (speed * 1e6), size * ratio * 8 / (bw_mbps * 1e6))


def states_of(links: Sequence[LinkSeries], horizon: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(forecast, realised)`` Mbit/s per state: the window's EWMA and the next ``horizon`` steps' mean."""
    fc, real = [], []
    for ls in links:
        bw = np.maximum(np.asarray(ls.data[:, BW], dtype=np.float64), 0.0)
        n = len(bw) - WINDOW - horizon + 1  # windows rows i..i+9, future rows i+10..i+9+horizon
        if n <= 0:
            continue
        idx = np.arange(n)[:, None] + np.arange(WINDOW)[None, :]
        windows = np.zeros((n, WINDOW, 4))
        windows[:, :, BW] = bw[idx]
        c = np.concatenate([[0.0], np.cumsum(bw)])
        start = np.arange(n) + WINDOW
        fc.append(ewma(windows, alpha))
        real.append((c[start + horizon] - c[start]) / horizon)
    if not fc:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(fc), np.concatenate(real)


def _mean_ratio(t: np.ndarray, oracle: np.ndarray) -> float | None:
    return float((t / oracle).mean()) if len(t) else None


def evaluate_states(forecast: np.ndarray, realised: np.ndarray, profile: CompressionProfile) -> dict[str, Any]:
    """Mean chunk time of the hint, the oracle and every fixed option over the given states."""
    ok = realised > 0
    fc, bw = forecast[ok], realised[ok]
    size = profile.chunk_bytes
    options = _options(profile)
    table = np.stack([_times(size, s, r, bw) for s, r in options.values()], axis=1)  # (N, options)
    names = list(options)
    hint = choose_levels(fc, profile)
    col = np.array([names.index("none" if lv == 0 else f"zstd-{lv}") for lv in hint.tolist()], dtype=np.int64)
    t_hint = table[np.arange(len(bw)), col] if len(bw) else np.zeros(0)
    t_oracle = table.min(axis=1) if len(bw) else np.zeros(0)
    mean = {"hint": float(t_hint.mean()) if len(bw) else None, "oracle": float(t_oracle.mean()) if len(bw) else None}
    mean.update({n: float(table[:, i].mean()) if len(bw) else None for i, n in enumerate(names)})
    oracle = mean["oracle"] or 0.0
    fixed = {n: v for n, v in mean.items() if n not in ("hint", "oracle") and v is not None}
    best = min(fixed, key=lambda n: fixed[n]) if fixed else None
    levels, counts = np.unique(hint, return_counts=True)
    return {
        "states": int(len(bw)),
        "outage_states_left_out": int((~ok).sum()),
        "chunk_bytes": size,
        "mean_s": mean,
        "over_oracle": {n: (v / oracle if oracle > 0 and v is not None else None) for n, v in mean.items()},
        # Per state, t / t_oracle, averaged: not dominated by the slowest states as the mean time is.
        "state_over_oracle": {"hint": _mean_ratio(t_hint, t_oracle), "oracle": _mean_ratio(t_oracle, t_oracle)}
        | {n: _mean_ratio(table[:, i], t_oracle) for i, n in enumerate(names)},
        "best_fixed": best,
        "hint_over_best_fixed": (mean["hint"] / fixed[best]) if best and mean["hint"] is not None else None,
        "hint_levels": {("none" if lv == 0 else f"zstd-{lv}"): int(c) for lv, c in zip(levels.tolist(), counts)},
    }


def evaluate_compression(
    profile: CompressionProfile,
    datasets: Sequence[str] | None = None,
    root: Path | None = None,
    horizon: int = 10,
    alpha: float = DEFAULT_ALPHA,
    max_links: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate the hint on each dataset (default: every one found under ``root``)."""
    names = list(datasets) if datasets else sorted(DATASETS)
    out: dict[str, Any] = {"horizon": horizon, "alpha": alpha, "profile": dict(profile.measured_on), "datasets": {}}
    for name in names:
        try:
            links = trace_links(name, root)
        except DataError as exc:
            if datasets:  # asked for by name: say so
                raise
            if progress:
                progress(f"{name}: skipped ({exc})")
            continue
        links = links[:max_links] if max_links else links
        fc, real = states_of(links, horizon, alpha)
        out["datasets"][name] = {"links": len(links), **evaluate_states(fc, real, profile)}
        if progress:
            progress(f"{name}: {len(links)} links, {out['datasets'][name]['states']} states")
    return out


def format_compression(res: dict[str, Any]) -> str:
    """A readable table: per dataset, the mean chunk time of the hint, the oracle, none and each level."""
    lines = [f"mean time to move one chunk (ms); horizon {res['horizon']} steps, EWMA alpha {res['alpha']}"]
    for name, d in res["datasets"].items():
        m, r = d["mean_s"], d["over_oracle"]
        lines.append(f"\n{name}: {d['links']} links, {d['states']} states ({d['outage_states_left_out']} outage "
                     f"states left out); best fixed {d['best_fixed']}, hint / best fixed = "
                     f"{d['hint_over_best_fixed']:.3f}" if d["states"] else f"\n{name}: no states")  # fmt: skip
        if not d["states"]:
            continue
        so = d["state_over_oracle"]
        lines.append(f"  {'option':<9} {'mean ms':>12} {'/ oracle':>9} {'per-state / oracle':>19}")
        for opt in m:
            lines.append(f"  {opt:<9} {m[opt] * 1e3:12.2f} {r[opt]:9.3f} {so[opt]:19.3f}")
    return "\n".join(lines)
