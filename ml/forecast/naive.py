"""Naive probabilistic forecasters: the baselines and the fallbacks of the quantile model.

For each horizon ``h`` a point forecast ``b`` of the mean bandwidth over the next ``h``
steps (last value, EWMA, moving average of the window), widened into quantiles by the
empirical quantiles of the log-ratio ``log((y_h + e) / (b + e))`` on the *training*
split (``e`` as in :mod:`ml.forecast.quantiles`)::

    q_tau = (b + e) * exp(offset_tau) - e

The EWMA's alpha is fitted per horizon (lowest MAE against the horizon's target on
the training windows). Offsets are fitted per profile (a profile with at least
:data:`MIN_GROUP` training targets) and over all windows (group ``"*"``, used for
profiles not seen in training).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.forecast.baselines import ALPHA_GRID, ewma, last_value, moving_average
from ml.forecast.quantiles import to_ratio

NAIVE: tuple[str, ...] = ("last_value", "ewma", "moving_average")
ALL_GROUPS = "*"
#: Fewest finite training targets of a profile (per horizon) that get their own offsets.
MIN_GROUP = 200


def naive_points(windows: np.ndarray, alphas: Sequence[float]) -> dict[str, np.ndarray]:
    """Point forecasts (N, H) of every naive forecaster; EWMA uses ``alphas[k]`` for horizon k."""
    lv = last_value(windows)  # (N,)
    ma = moving_average(windows)
    n_h = len(alphas)
    return {
        "last_value": np.repeat(lv[:, None], n_h, axis=1),
        "ewma": np.stack([ewma(windows, a) for a in alphas], axis=1) if len(windows) else np.zeros((0, n_h)),
        "moving_average": np.repeat(ma[:, None], n_h, axis=1),
    }


def group_of(profiles: Sequence[Any] | np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Each row's offset group: its profile when it has one, else ``"*"`` (object array (N,))."""
    known = set(groups)
    return np.array([p if p in known else ALL_GROUPS for p in profiles], dtype=object)


def fit_groups(profiles: Sequence[Any] | np.ndarray, targets: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The groups statistics are fitted for, with their row masks: ``"*"`` (every row) and each
    profile with at least :data:`MIN_GROUP` finite first-horizon targets."""
    prof = np.asarray(list(profiles), dtype=object)
    out = [(ALL_GROUPS, np.ones(len(prof), bool))]
    for g in sorted({str(p) for p in prof.tolist() if p is not None}):
        rows = prof == g
        if np.isfinite(targets[rows, 0]).sum() >= MIN_GROUP:
            out.append((g, rows))
    return out


@dataclass
class NaiveQuantiles:
    """Fitted naive probabilistic forecasters (JSON-able through :meth:`to_json`)."""

    horizons: tuple[int, ...]
    quantiles: tuple[float, ...]
    alphas: list[float]  # EWMA alpha per horizon
    #: group -> forecaster -> (H, Q) log-ratio offsets
    offsets: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        windows: np.ndarray,
        targets: np.ndarray,
        profiles: Sequence[Any] | np.ndarray,
        horizons: Sequence[int],
        quantiles: Sequence[float],
    ) -> NaiveQuantiles:
        """Fit alphas and offsets on training windows (N, 10, 4) and targets (N, H) (NaN = beyond the series)."""
        y = np.asarray(targets, dtype=np.float64)
        alphas = []
        for k in range(len(horizons)):
            ok = np.isfinite(y[:, k])
            maes = [float(np.abs(ewma(windows[ok], a) - y[ok, k]).mean()) if ok.any() else 0.0 for a in ALPHA_GRID]
            alphas.append(float(ALPHA_GRID[int(np.argmin(maes))]))
        out = cls(tuple(horizons), tuple(quantiles), alphas)
        zy = to_ratio(windows, y)  # (N, H); NaN targets stay NaN
        zb = {name: to_ratio(windows, p) for name, p in naive_points(windows, alphas).items()}
        for g, rows in fit_groups(profiles, y):
            out.offsets[g] = {name: _offsets(zy[rows] - zb[name][rows], out.quantiles) for name in NAIVE}
        return out

    def predict_ratio(self, windows: np.ndarray, profiles: Sequence[Any] | np.ndarray) -> dict[str, np.ndarray]:
        """Quantile forecasts (N, H, Q) in the ratio space, per naive forecaster."""
        zb = {name: to_ratio(windows, p) for name, p in naive_points(windows, self.alphas).items()}
        g = group_of(profiles, list(self.offsets))
        out = {}
        for name in NAIVE:
            off = np.stack([self.offsets[str(x)][name] for x in g]) if len(g) else np.zeros((0,) + self.shape)
            out[name] = zb[name][:, :, None] + off  # (N, H, 1) + (N, H, Q)
        return out

    @property
    def shape(self) -> tuple[int, int]:
        """(H, Q)."""
        return (len(self.horizons), len(self.quantiles))

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON dict (stored in model metadata)."""
        return {
            "horizons": list(self.horizons),
            "quantiles": list(self.quantiles),
            "alphas": list(self.alphas),
            "offsets": {g: {n: o.tolist() for n, o in d.items()} for g, d in self.offsets.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NaiveQuantiles:
        """Inverse of :meth:`to_json`; raises ValueError/KeyError on a malformed dict."""
        out = cls(tuple(int(h) for h in d["horizons"]), tuple(float(q) for q in d["quantiles"]), list(d["alphas"]))
        for g, per in d["offsets"].items():
            out.offsets[g] = {n: np.asarray(per[n], dtype=np.float64).reshape(out.shape) for n in NAIVE}
        if ALL_GROUPS not in out.offsets or len(out.alphas) != len(out.horizons):
            raise ValueError("naive quantiles need the '*' group and one alpha per horizon")
        return out


def _offsets(residual: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """(H, Q) empirical quantiles of each horizon's finite residuals (0 where none)."""
    out = np.zeros((residual.shape[1], len(quantiles)))
    for k in range(residual.shape[1]):
        r = residual[:, k]
        r = r[np.isfinite(r)]
        if r.size:
            out[k] = np.quantile(r, quantiles)
    return out
