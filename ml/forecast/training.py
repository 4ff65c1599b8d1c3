"""Fitting the LSTM forecaster on link series and wrapping a trained model as a raw-units
forecaster (used by ``bwp train`` and ``bwp evaluate-traces``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ml.data import (
    LinkSeries,
    windows_of,
)
from ml.forecast.baselines import fit_ewma_alpha
from ml.forecast.features import DEFAULT_FEATURE_MODE, Preprocessor
from ml.forecast.lstm import LSTMConfig, train_lstm
from stream.core.errors import DataError
from stream.core.progress import Progress
from stream.core.records import FEATURES, WINDOW


def make_forecaster(model: Any, pre: Preprocessor, chunk: int = 8192) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled raw-units forecaster: windows (N, 10, 4) Mbit/s -> (N,) Mbit/s."""
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    @tf.function(input_signature=[tf.TensorSpec([None, WINDOW, len(FEATURES)], tf.float32)])
    def fwd(x):
        return tf.reshape(model(x, training=False), [-1])

    def forecast(windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, dtype=np.float64)
        if w.shape[0] == 0:
            return np.zeros((0,))
        x = pre.transform(w)  # (N, 10, 4)
        z = np.concatenate([fwd(x[i : i + chunk]).numpy() for i in range(0, len(x), chunk)])
        return pre.inverse_target(z, w)

    return forecast


def fit_forecaster(
    train: Sequence[LinkSeries],
    val: Sequence[LinkSeries],
    lstm_cfg: LSTMConfig,
    seed: int,
    feature_mode: str = DEFAULT_FEATURE_MODE,
    say: Progress = lambda s: None,
) -> tuple[Any, Preprocessor, float, dict]:
    """Fit preprocessing, EWMA alpha and the LSTM on ``train`` (``val`` for early stopping).

    Returns (keras model, preprocessor, ewma alpha, LSTM history).
    """
    wt, yt, _ = windows_of(train)  # (N, 10, 4), (N,)
    wv, yv, _ = windows_of(val)
    if len(yt) == 0 or len(yv) == 0:
        raise DataError(f"need training and validation windows, got {len(yt)} and {len(yv)}")
    pre = Preprocessor(feature_mode).fit(wt, yt)
    alpha = fit_ewma_alpha(wt, yt)
    say(f"preprocessing ({feature_mode}) fitted on {len(yt)} training windows; EWMA alpha = {alpha}")
    model, hist = train_lstm(
        pre.transform(wt),
        pre.transform_target(wt, yt),
        pre.transform(wv),
        pre.transform_target(wv, yv),
        lstm_cfg,
        seed,
        progress=say,
    )
    return model, pre, alpha, hist
