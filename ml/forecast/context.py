"""Per-link long-memory context: the state's history along a link, and the scale-free features
the forecaster reads from it (``bwp evaluate-traces --context long``).

The state itself (what a worker keeps per link, O(1), updated causally with each new state) is
defined in :mod:`stream.core.longmem`, shared with the Redis window script and its twin::

    n, prev, m_10, m_60, m_360 (EWMAs of bandwidth), vol (EWMA of squared log-returns)

Context features of a window (N, 10, 4) whose last row is state ``s`` (:func:`context_features`),
all scale-free like :mod:`ml.forecast.features`, with the window's ``e``::

    log((m_s + e) / (last + e))  for each span,   log(vol + 1e-6)

The EWMAs are of bandwidth, not of log bandwidth: the reference measurement behind this
(``../shared/tools/context_probe.py``: gradient-boosted trees, h = 60 MAE 0.71-0.94 of the best
naive forecaster with these features, against 0.99-1.06 without) used them so, and an EWMA of
bandwidth needs no floor for zero samples. The count ``n`` is kept (a decision can say how much
history its context holds) but is no model input: it hurt on time-split data in that measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml.forecast.features import _eps
from stream.core.longmem import SPANS, STATE, VOL_SPAN, initial_state, update_state
from stream.core.records import BW

#: Columns of the context features (model input).
CONTEXT_FEATURES: tuple[str, ...] = tuple(f"log_m{s}_over_last" for s in SPANS) + ("log_vol",)
CONTEXT_MODES: tuple[str, ...] = ("none", "long")
VOL_FLOOR = 1e-6
#: The EWMAs in a state row (columns 2 .. 2 + N_SPANS).
N_SPANS = len(SPANS)


def long_memory_states(bw: Sequence[float] | np.ndarray, start: list[float] | None = None) -> np.ndarray:
    """The state after every step of one link's bandwidth series: (T, len(STATE)) float64."""
    s = list(start) if start is not None else initial_state()
    out = np.empty((len(bw), len(STATE)))
    for t, b in enumerate(np.asarray(bw, dtype=np.float64).tolist()):
        s = update_state(s, b)
        out[t] = s
    return out


def series_states(series: np.ndarray) -> np.ndarray:
    """:func:`long_memory_states` of a link's (T, 4) FEATURES-order series."""
    return long_memory_states(np.asarray(series, dtype=np.float64)[:, BW])


def context_features(windows: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Scale-free context features (N, len(CONTEXT_FEATURES)) of windows (N, 10, 4) and the state
    (N, len(STATE)) after each window's last step."""
    w = np.asarray(windows, dtype=np.float64)
    st = np.asarray(states, dtype=np.float64).reshape(len(w), len(STATE))
    last = np.maximum(w[:, -1, BW], 0.0)
    e = _eps(w)
    cols = [np.log((np.maximum(st[:, 2 + k], 0.0) + e) / (last + e)) for k in range(len(SPANS))]
    cols.append(np.log(np.maximum(st[:, -1], 0.0) + VOL_FLOOR))
    return np.stack(cols, axis=1) if len(w) else np.zeros((0, len(CONTEXT_FEATURES)))


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`CONTEXT_MODES`; else ValueError."""
    if mode not in CONTEXT_MODES:
        raise ValueError(f"context must be one of {CONTEXT_MODES}, got {mode!r}")
    return mode


class ContextScaler:
    """Standardisation of the context features, fitted on training windows only (mean/std per
    column), stored in the model's forecast spec (``ForecastSpec.context``)."""

    def __init__(self, mode: str, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray) -> None:
        self.mode = check_mode(mode)
        self.mean = np.asarray(mean, dtype=np.float64).reshape(len(CONTEXT_FEATURES))
        self.std = np.asarray(std, dtype=np.float64).reshape(len(CONTEXT_FEATURES))

    @classmethod
    def fit(cls, mode: str, windows: np.ndarray, states: np.ndarray) -> ContextScaler:
        """Fitted on training windows (N, 10, 4) and their states (N, len(STATE))."""
        f = context_features(windows, states)
        if len(f) == 0:
            raise ValueError("cannot fit the context scaler on zero windows")
        std = f.std(axis=0)
        return cls(mode, f.mean(axis=0), np.where(std > 1e-6, std, 1.0))

    def transform(self, windows: np.ndarray, states: np.ndarray) -> np.ndarray:
        """Standardised model input (N, len(CONTEXT_FEATURES)) float32, finite."""
        z = (context_features(windows, states) - self.mean) / self.std
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def to_json(self) -> dict:
        """Plain JSON (under ``context`` in the forecast spec)."""
        return {
            "mode": self.mode,
            "features": list(CONTEXT_FEATURES),
            "state": list(STATE),
            "spans": list(SPANS),
            "vol_span": VOL_SPAN,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> ContextScaler:
        """Inverse of :meth:`to_json`; ValueError when it was written for other features or spans."""
        if tuple(d.get("features", ())) != CONTEXT_FEATURES or tuple(d.get("spans", ())) != SPANS:
            raise ValueError(
                f"context features/spans must be {list(CONTEXT_FEATURES)}/{list(SPANS)}, "
                f"got {d.get('features')}/{d.get('spans')}"
            )
        return cls(str(d["mode"]), d["mean"], d["std"])
