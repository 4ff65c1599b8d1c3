"""Naive one-step bandwidth forecasters, vectorised over windows (N, 10, 4) -> (N,).

They are what the LSTM must beat: last value, EWMA (alpha fitted on training data),
harmonic mean of the last 5 samples (robustMPC's estimator) and the moving average
of the whole 10-sample window.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ml.forecast.features import BW
from ml.smoothing import ewma_weights

BASELINES = ("last_value", "ewma", "harmonic_mean", "moving_average")
ALPHA_GRID = tuple(round(a, 2) for a in np.arange(0.05, 1.0001, 0.05))


def _bw(windows: np.ndarray) -> np.ndarray:
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 3:
        raise ValueError(f"windows must be (N, 10, 4), got {w.shape}")
    return np.maximum(w[:, :, BW], 0.0)  # (N, 10)


def last_value(windows: np.ndarray) -> np.ndarray:
    """Forecast = the newest bandwidth sample."""
    return _bw(windows)[:, -1]


def moving_average(windows: np.ndarray, k: int = 10) -> np.ndarray:
    """Forecast = arithmetic mean of the last ``k`` samples."""
    return _bw(windows)[:, -k:].mean(axis=1)


def harmonic_mean(windows: np.ndarray, k: int = 5) -> np.ndarray:
    """Forecast = harmonic mean of the last ``k`` samples (robustMPC).

    A zero sample makes the harmonic mean 0 (that is its definition's limit), so an
    outage in the last ``k`` steps forecasts 0.
    """
    b = _bw(windows)[:, -k:]
    out = np.zeros(b.shape[0])
    ok = (b > 0).all(axis=1)
    out[ok] = k / (1.0 / b[ok]).sum(axis=1)
    return out


def ewma(windows: np.ndarray, alpha: float) -> np.ndarray:
    """Forecast = exponentially weighted mean, s_t = alpha * x_t + (1 - alpha) * s_{t-1}, s_0 = x_0."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    b = _bw(windows)
    return b @ ewma_weights(alpha, b.shape[1])


def fit_ewma_alpha(windows: np.ndarray, next_bw: np.ndarray, grid: tuple[float, ...] = ALPHA_GRID) -> float:
    """The alpha of ``grid`` with the lowest MAE on (training) windows."""
    y = np.asarray(next_bw, dtype=np.float64)
    if y.size == 0:
        return 0.5
    maes = [float(np.abs(ewma(windows, a) - y).mean()) for a in grid]
    return float(grid[int(np.argmin(maes))])


def baseline_forecasters(ewma_alpha: float) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Name -> forecaster for every baseline, EWMA bound to ``ewma_alpha``."""
    return {
        "last_value": last_value,
        "ewma": lambda w: ewma(w, ewma_alpha),
        "harmonic_mean": harmonic_mean,
        "moving_average": moving_average,
    }
