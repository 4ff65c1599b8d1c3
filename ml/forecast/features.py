"""The scale-free feature transform shared by training and serving.

Links differ in capacity by four orders of magnitude (10 Mbit/s .. 100 Gbit/s), so
one model must not see absolute bandwidth. The relative modes express every
bandwidth in a window relative to the window's own level: its last sample
(``relative_last``, the shipped default) or its mean (``relative_mean``):

    x_bw   = log((bw + e) / (level + e)),   e = 0.01 * mean(window bw) + 1e-6
    target = log((next_bw + e) / (level + e))

``e`` scales with the window mean, so the transform is exactly scale-free for any
link with a non-zero mean and bounded: a zero sample inside a busy window gives
about log(0.01) = -4.6, not -inf; a window whose *last* sample is zero still has a
level + e of 1 % of the mean, so recovery after an outage can be forecast; an
all-zero window (outage) gives 0, not NaN.
Latency goes through ``log1p`` (it spans 0.05 ms .. seconds), packet loss and
reliability stay as they are. Every channel and the target are then standardised
with mean/std fitted on the training windows only and stored as JSON next to the
model (no pickle).

The alternative ``log_absolute`` mode (bandwidth and target as ``log1p(Mbit/s)``)
is kept for the comparison documented in docs/models.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.errors import ModelError
from stream.core.records import BW, FEATURES, LAT, WINDOW

MODES = ("relative_mean", "relative_last", "log_absolute")
_ABS_EPS = 1e-6
_REL_EPS = 0.01
#: The feature mode ``bwp train`` uses unless told otherwise (docs/models.md).
DEFAULT_FEATURE_MODE = "relative_last"
PREPROCESSING_SCHEMA = 2  # 2: epsilon from the window mean in every relative mode


def window_level(windows: np.ndarray, mode: str = "relative_mean") -> np.ndarray:
    """The per-window bandwidth level that relative modes divide by, shape (N,)."""
    bw = np.asarray(windows, dtype=np.float64)[:, :, BW]
    if mode == "relative_last":
        return bw[:, -1].copy()
    return bw.mean(axis=1)


def _eps(windows: np.ndarray) -> np.ndarray:
    """The per-window epsilon, (N,): 1 % of the window's mean bandwidth (plus 1e-6)."""
    return _REL_EPS * np.maximum(np.asarray(windows, dtype=np.float64)[:, :, BW], 0.0).mean(axis=1) + _ABS_EPS


@dataclass
class Preprocessor:
    """Window -> standardised model input, and model output -> Mbit/s.

    Use :meth:`fit` on training windows only; :meth:`transform` then applies the
    stored statistics to any window (validation, test, serving).
    """

    mode: str = "relative_last"
    x_mean: list[float] = field(default_factory=lambda: [0.0] * len(FEATURES))
    x_std: list[float] = field(default_factory=lambda: [1.0] * len(FEATURES))
    y_mean: float = 0.0
    y_std: float = 1.0
    fitted: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    # --- raw (unstandardised) transforms -------------------------------------------
    def _raw_x(self, windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, dtype=np.float64)
        if w.ndim != 3 or w.shape[1:] != (WINDOW, len(FEATURES)):
            raise ValueError(f"windows must be (N, {WINDOW}, {len(FEATURES)}), got {w.shape}")
        x = w.copy()  # (N, 10, 4)
        bw = np.maximum(w[:, :, BW], 0.0)
        if self.mode == "log_absolute":
            x[:, :, BW] = np.log1p(bw)
        else:
            level = np.maximum(window_level(w, self.mode), 0.0)
            e = _eps(w)[:, None]
            x[:, :, BW] = np.log((bw + e) / (level[:, None] + e))
        x[:, :, LAT] = np.log1p(np.maximum(w[:, :, LAT], 0.0))
        return x

    def _raw_y(self, windows: np.ndarray, next_bw: np.ndarray) -> np.ndarray:
        nb = np.maximum(np.asarray(next_bw, dtype=np.float64), 0.0)
        if self.mode == "log_absolute":
            return np.log1p(nb)
        level = np.maximum(window_level(windows, self.mode), 0.0)
        e = _eps(windows)
        return np.log((nb + e) / (level + e))

    # --- public API ------------------------------------------------------------------
    def fit(self, windows: np.ndarray, next_bw: np.ndarray) -> Preprocessor:
        """Fit the per-channel and target mean/std on (training) windows; returns self."""
        x = self._raw_x(windows).reshape(-1, len(FEATURES))
        y = self._raw_y(windows, next_bw)
        if x.shape[0] == 0:
            raise ValueError("cannot fit preprocessing on zero windows")
        std = x.std(axis=0)
        # a constant channel (e.g. loss always 0 in a dataset without loss) must not divide by 0
        self.x_mean = [float(v) for v in x.mean(axis=0)]
        self.x_std = [float(v) if v > 1e-6 else 1.0 for v in std]
        self.y_mean = float(y.mean())
        ys = float(y.std())
        self.y_std = ys if ys > 1e-6 else 1.0
        self.fitted = True
        return self

    def transform(self, windows: np.ndarray) -> np.ndarray:
        """Standardised model input, (N, 10, 4) float32, finite for any non-negative input."""
        x = self._raw_x(windows)
        x = (x - np.asarray(self.x_mean)) / np.asarray(self.x_std)
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def transform_target(self, windows: np.ndarray, next_bw: np.ndarray) -> np.ndarray:
        """Standardised regression target, (N,) float32."""
        y = (self._raw_y(windows, next_bw) - self.y_mean) / self.y_std
        return y.astype(np.float32)

    def inverse_target(self, pred: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Model output (standardised) -> forecast bandwidth in Mbit/s, (N,) >= 0."""
        z = np.asarray(pred, dtype=np.float64).reshape(-1) * self.y_std + self.y_mean
        # the LSTM has never seen a ratio beyond e^±20; clipping keeps exp finite on garbage input
        z = np.clip(z, -20.0, 20.0)
        if self.mode == "log_absolute":
            out = np.expm1(z)
        else:
            level = np.maximum(window_level(windows, self.mode), 0.0)
            e = _eps(windows)
            out = np.exp(z) * (level + e) - e
        return np.maximum(out, 0.0)

    def to_json(self) -> str:
        """JSON text (what ``preprocessing.json`` holds)."""
        return json.dumps(
            {
                "schema": PREPROCESSING_SCHEMA,
                "mode": self.mode,
                "features": list(FEATURES),
                "window": WINDOW,
                "x_mean": self.x_mean,
                "x_std": self.x_std,
                "y_mean": self.y_mean,
                "y_std": self.y_std,
                "fitted": self.fitted,
                "rel_eps": _REL_EPS,
                "abs_eps": _ABS_EPS,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        """Inverse of :meth:`to_json`; raises :class:`ModelError` on a malformed file."""
        try:
            d: dict[str, Any] = json.loads(text)
            if d.get("schema") != PREPROCESSING_SCHEMA:
                raise ValueError(f"schema must be {PREPROCESSING_SCHEMA}, got {d.get('schema')!r}")
            if tuple(d["features"]) != FEATURES or d["window"] != WINDOW:
                raise ValueError(f"features/window must be {FEATURES}/{WINDOW}, got {d['features']}/{d['window']}")
            p = cls(
                mode=d["mode"],
                x_mean=[float(v) for v in d["x_mean"]],
                x_std=[float(v) for v in d["x_std"]],
                y_mean=float(d["y_mean"]),
                y_std=float(d["y_std"]),
                fitted=bool(d["fitted"]),
            )
            if len(p.x_mean) != len(FEATURES) or len(p.x_std) != len(FEATURES):
                raise ValueError(f"x_mean/x_std must have {len(FEATURES)} entries")
            return p
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"preprocessing.json is not valid: {exc}") from exc
