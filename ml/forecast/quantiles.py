"""Multi-horizon targets, the scale-free quantile space, and the probabilistic scores.

A probabilistic forecast of a window is a ``(H, Q)`` array: for each horizon ``h``
(steps) the quantiles ``Q`` of the *mean* bandwidth over the next ``h`` steps. The
defaults are ``H = (1, 10, 60)`` and ``Q = (0.1, 0.5, 0.9)``; both are saved in a
model's metadata.

Models and naive forecasters work in the scale-free space of
:mod:`ml.forecast.features` (``relative_last``)::

    z = log((y + e) / (last + e)),    e = 0.01 * mean(window bw) + 1e-6

which maps back to Mbit/s with :func:`from_ratio`. The map is increasing, so
quantiles in ``z`` are quantiles in Mbit/s, and ordered quantiles stay ordered.

Scores (lower is better, except coverage):

* pinball loss ``rho_tau(y, q) = max(tau (y - q), (tau - 1)(y - q))``, averaged over
  ``Q`` and the scored states;
* weighted interval score (Bracher et al., 2021) of the median and the central
  intervals the quantiles form: ``WIS = (|y - m| / 2 + sum_k alpha_k / 2 * IS_k) / (K + 1/2)``
  with ``IS = (u - l) + 2/alpha (l - y)+ + 2/alpha (y - u)+``;
* coverage: the share of states with ``y <= q_tau`` (nominal ``tau``) and with
  ``q_lo <= y <= q_hi`` (nominal ``hi - lo``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml.forecast.features import _eps, window_level
from stream.core.records import WINDOW

HORIZONS: tuple[int, ...] = (1, 10, 60)
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
#: z is clipped here when mapped back: e^20 times the level is never a real forecast.
Z_CLIP = 20.0


def check_grid(horizons: Sequence[int], quantiles: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Validated, as tuples: horizons strictly increasing ints >= 1; quantiles strictly
    increasing in (0, 1), odd in number and symmetric around a median of 0.5."""
    h = tuple(int(x) for x in horizons)
    q = tuple(float(x) for x in quantiles)
    if not h or h[0] < 1 or any(b <= a for a, b in zip(h, h[1:])):
        raise ValueError(f"horizons must be strictly increasing integers >= 1, got {list(horizons)}")
    if len(q) % 2 != 1 or any(b <= a for a, b in zip(q, q[1:])) or not 0 < q[0] < q[-1] < 1:
        raise ValueError(f"quantiles must be an odd number of increasing values in (0, 1), got {list(quantiles)}")
    if abs(q[len(q) // 2] - 0.5) > 1e-9 or any(abs(a + b - 1) > 1e-9 for a, b in zip(q, reversed(q))):
        raise ValueError(f"quantiles must be symmetric around 0.5 (their median), got {list(quantiles)}")
    return h, q


def horizon_targets(series_bw: np.ndarray, horizons: Sequence[int], window: int = WINDOW) -> np.ndarray:
    """Mean bandwidth over the next ``h`` steps after every full window: (T - window, H).

    Window i covers rows i..i+window-1 (as :func:`ml.data.make_windows`); its target for
    ``h`` is ``mean(bw[i+window : i+window+h])``, NaN where the series ends earlier.
    """
    b = np.maximum(np.asarray(series_bw, dtype=np.float64).reshape(-1), 0.0)
    n = b.shape[0] - window
    if n <= 0:
        return np.zeros((0, len(horizons)))
    c = np.concatenate([[0.0], np.cumsum(b)])  # c[j] = sum(b[:j])
    out = np.full((n, len(horizons)), np.nan)
    start = np.arange(n) + window
    for k, h in enumerate(horizons):
        ok = start + h <= b.shape[0]
        s = start[ok]
        out[ok, k] = (c[s + h] - c[s]) / h
    return out


def level_eps(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(last bandwidth, epsilon) of each window, (N,) each, as ``relative_last`` uses them."""
    return np.maximum(window_level(windows, "relative_last"), 0.0), _eps(windows)


def to_ratio(windows: np.ndarray, values_mbps: np.ndarray) -> np.ndarray:
    """Mbit/s -> the ratio space z; ``values_mbps`` is (N,) or (N, ...) with the window on axis 0."""
    level, e = level_eps(windows)
    v = np.maximum(np.asarray(values_mbps, dtype=np.float64), 0.0)
    shape = (-1,) + (1,) * (v.ndim - 1)
    return np.log((v + e.reshape(shape)) / (level.reshape(shape) + e.reshape(shape)))


def from_ratio(windows: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Ratio space -> Mbit/s (>= 0), the inverse of :func:`to_ratio`; ``z`` is (N,) or (N, ...)."""
    level, e = level_eps(windows)
    zz = np.clip(np.asarray(z, dtype=np.float64), -Z_CLIP, Z_CLIP)
    shape = (-1,) + (1,) * (zz.ndim - 1)
    return np.maximum(np.exp(zz) * (level.reshape(shape) + e.reshape(shape)) - e.reshape(shape), 0.0)


def pinball(y: np.ndarray, q: np.ndarray, taus: Sequence[float]) -> float:
    """Mean pinball loss of quantile forecasts ``q`` (N, Q) for outcomes ``y`` (N,); NaN when N = 0."""
    yy = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    if yy.shape[0] == 0:
        return float("nan")
    qq = np.asarray(q, dtype=np.float64).reshape(yy.shape[0], -1)
    t = np.asarray(taus, dtype=np.float64)[None, :]
    d = yy - qq
    return float(np.maximum(t * d, (t - 1.0) * d).mean())


def interval_score(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, alpha: float) -> np.ndarray:
    """Interval score of the central ``1 - alpha`` interval ``[lo, hi]``, per state (N,)."""
    yy, lo, hi = (np.asarray(a, dtype=np.float64) for a in (y, lo, hi))
    return (hi - lo) + (2.0 / alpha) * np.maximum(lo - yy, 0.0) + (2.0 / alpha) * np.maximum(yy - hi, 0.0)


def wis(y: np.ndarray, q: np.ndarray, taus: Sequence[float]) -> float:
    """Mean weighted interval score of quantile forecasts (N, Q) with symmetric ``taus``; NaN when N = 0."""
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    if yy.shape[0] == 0:
        return float("nan")
    qq = np.asarray(q, dtype=np.float64).reshape(yy.shape[0], -1)
    m = len(taus) // 2
    total = 0.5 * np.abs(yy - qq[:, m])
    for k in range(m):
        alpha = 2.0 * taus[k]
        total = total + alpha / 2.0 * interval_score(yy, qq[:, k], qq[:, -1 - k], alpha)
    return float((total / (m + 0.5)).mean())


def coverage(y: np.ndarray, q: np.ndarray, taus: Sequence[float]) -> dict[str, float]:
    """Observed share of ``y <= q_tau`` per quantile (keys ``str(tau)``) and of the outer
    interval ``[q_first, q_last]`` (key ``interval``); NaN when N = 0."""
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    if yy.shape[0] == 0:
        return {**{str(t): float("nan") for t in taus}, "interval": float("nan")}
    qq = np.asarray(q, dtype=np.float64).reshape(yy.shape[0], -1)
    out = {str(t): float((yy <= qq[:, k]).mean()) for k, t in enumerate(taus)}
    out["interval"] = float(((qq[:, 0] <= yy) & (yy <= qq[:, -1])).mean())
    return out


def tau_weights(taus: Sequence[float], tau: float) -> tuple[int, float]:
    """(k, w): quantile ``tau`` = z_k + w (z_{k+1} - z_k) between the forecast quantiles ``taus``
    (w < 0 or > 1: extrapolated along the nearest segment)."""
    t = np.asarray(taus, dtype=np.float64)
    k = int(np.clip(np.searchsorted(t, tau) - 1, 0, len(t) - 2))
    return k, float((tau - t[k]) / (t[k + 1] - t[k]))


def interpolate_tau(z: np.ndarray, taus: Sequence[float], tau: float) -> np.ndarray:
    """Quantile ``tau`` of forecasts ``z`` (N, Q) in the ratio space, linear between the
    given quantiles and extrapolated with the nearest segment's slope outside them."""
    zz = np.asarray(z, dtype=np.float64)
    k, w = tau_weights(taus, tau)
    out = zz[:, k] + w * (zz[:, k + 1] - zz[:, k])
    if tau < taus[0]:
        out = np.minimum(out, zz[:, 0])  # the extrapolated slope is >= 0, keep it from crossing
    return out


def quantile_column(z: np.ndarray, taus: Sequence[float], tau: float) -> np.ndarray:
    """Quantile ``tau`` of forecasts ``z`` (N, Q): the column itself when ``tau`` is one of ``taus``
    (the served quantile, exactly), else :func:`interpolate_tau`."""
    for j, t in enumerate(taus):
        if abs(t - tau) < 1e-9:
            return np.asarray(z, dtype=np.float64)[:, j]
    return interpolate_tau(z, taus, tau)


def quantile_at(windows: np.ndarray, q_mbps: np.ndarray, taus: Sequence[float], tau: float) -> np.ndarray:
    """Quantile ``tau`` (N,) Mbit/s of quantile forecasts ``q_mbps`` (N, Q) at levels ``taus``,
    interpolated in the ratio space (:func:`interpolate_tau`)."""
    return from_ratio(windows, interpolate_tau(to_ratio(windows, q_mbps), taus, tau))
