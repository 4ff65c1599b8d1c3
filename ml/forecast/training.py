"""Fitting the LSTM forecaster on link series and wrapping a trained model as a raw-units
forecaster (used by ``bwp train`` and ``bwp evaluate-traces``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ml.data import (
    LinkSeries,
    make_windows,
    windows_of,
)
from ml.forecast.baselines import fit_ewma_alpha
from ml.forecast.calibration import ForecastSpec, fit_spec
from ml.forecast.context import CONTEXT_FEATURES, STATE, ContextScaler, check_mode
from ml.forecast.features import DEFAULT_FEATURE_MODE, Preprocessor
from ml.forecast.lstm import LSTMConfig, QuantileHead, train_lstm
from ml.forecast.naive import NaiveQuantiles
from ml.forecast.quantiles import (
    HORIZONS,
    QUANTILES,
    check_grid,
    from_ratio,
    horizon_targets,
    interpolate_tau,
    level_eps,
    quantile_column,
    to_ratio,
)
from stream.core.errors import DataError
from stream.core.progress import Progress
from stream.core.records import BW, FEATURES, WINDOW


def _forward(
    model: Any, pre: Preprocessor, chunk: int, context: ContextScaler | None = None
) -> Callable[..., np.ndarray]:
    """The model's compiled inference on raw windows (N, 10, 4) Mbit/s (and, for a context model,
    the links' states (N, len(STATE)) after each window), in chunks: (N, outputs) float64."""
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    n_out = int(model.output_shape[-1])
    win_spec = tf.TensorSpec([None, WINDOW, len(FEATURES)], tf.float32)
    if context is None:

        @tf.function(input_signature=[win_spec])
        def fwd(x):
            return model(x, training=False)

    else:

        @tf.function(input_signature=[win_spec, tf.TensorSpec([None, len(CONTEXT_FEATURES)], tf.float32)])
        def fwd_ctx(x, c):
            return model({"window": x, "context": c}, training=False)

    def run(windows: np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        if len(windows) == 0:
            return np.zeros((0, n_out))
        x = pre.transform(windows)  # (N, 10, 4)
        if context is None:
            parts = [fwd(x[i : i + chunk]).numpy() for i in range(0, len(x), chunk)]
        else:
            if states is None:
                raise DataError("this model reads per-link context: pass the links' long-memory states")
            c = context.transform(windows, states)  # (N, C)
            parts = [fwd_ctx(x[i : i + chunk], c[i : i + chunk]).numpy() for i in range(0, len(x), chunk)]
        return np.concatenate(parts).astype(np.float64)

    return run


def make_forecaster(model: Any, pre: Preprocessor, chunk: int = 8192) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled raw-units forecaster: windows (N, 10, 4) Mbit/s -> (N,) Mbit/s."""
    run = _forward(model, pre, chunk)

    def forecast(windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, dtype=np.float64)
        return pre.inverse_target(run(w).reshape(-1), w) if len(w) else np.zeros((0,))

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


def make_quantile_model_fn(
    model: Any, pre: Preprocessor, n_horizons: int, chunk: int = 8192, context: ContextScaler | None = None
) -> Callable[..., np.ndarray]:
    """The quantile model's raw (uncalibrated) forecasts: windows (N, 10, 4) Mbit/s [, states
    (N, len(STATE)) for a context model] -> (N, H, Q) ratio space."""
    run = _forward(model, pre, chunk, context)
    n_q = int(model.output_shape[-1]) // n_horizons

    def forecast(windows: np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        w = np.asarray(windows, dtype=np.float64)
        return run(w, states).reshape(len(w), n_horizons, n_q)

    return forecast


#: Bounds of a window's sample weight relative to the mean (``level_weights``).
WEIGHT_CLIP = (0.05, 20.0)


def level_weights(windows: np.ndarray) -> np.ndarray:
    """Per-window sample weights (N,) proportional to the window's last bandwidth (+ eps), mean 1.

    The pinball loss in the ratio space counts a 10 Mbit/s and a 10 Gbit/s window alike; the
    scores that matter (pinball, MAE in Mbit/s on a link mix) weight errors by the link's level,
    so the loss is weighted the same way, clipped so a few huge links cannot take over.
    Off by default: on the six real datasets it moved the h = 1 pinball ratio from
    0.68-1.00 to 0.79-1.00 (worse on four) while helping the MAE on two (docs/models.md).
    """
    level, e = level_eps(windows)
    w = level + e
    w = w / w.mean() if len(w) and w.mean() > 0 else np.ones(len(w))
    w = np.clip(w, *WEIGHT_CLIP)
    return (w / w.mean()).astype(np.float32) if len(w) else w


def fit_quantile_forecaster(
    train: Sequence[LinkSeries],
    val: Sequence[LinkSeries],
    lstm_cfg: LSTMConfig,
    seed: int,
    horizons: Sequence[int] = HORIZONS,
    quantiles: Sequence[float] = QUANTILES,
    feature_mode: str = DEFAULT_FEATURE_MODE,
    say: Progress = lambda s: None,
    weight_by_level: bool = False,
    context: str = "none",
) -> tuple[Any, Preprocessor, ForecastSpec, dict]:
    """Fit preprocessing, the naive probabilistic forecasters and the quantile LSTM on
    ``train``; calibrate it and choose the served source per profile and horizon on ``val``.
    ``context="long"`` gives the LSTM the links' long-memory features as a second input
    (the links need ``states``; :func:`ml.forecast.context.series_states`); the spec then
    carries the fitted :class:`~ml.forecast.context.ContextScaler`.

    Returns (keras model, preprocessor, forecast spec, LSTM history).
    """
    horizons, quantiles = check_grid(horizons, quantiles)
    wt, yt, pt, _ = horizon_windows_of(train, horizons)  # (N, 10, 4), (N, H), (N,)
    wv, yv, pv, lv = horizon_windows_of(val, horizons)
    if len(yt) == 0 or len(yv) == 0:
        raise DataError(f"need training and validation windows, got {len(yt)} and {len(yv)}")
    pre = Preprocessor(feature_mode).fit(wt, yt[:, 0])
    naive = NaiveQuantiles.fit(wt, yt, pt, horizons, quantiles)
    zt = to_ratio(wt, yt)  # (N, H); NaN targets stay NaN
    zv = to_ratio(wv, yv)
    scale = np.nanstd(zt, axis=0)
    head = QuantileHead(
        horizons,
        quantiles,
        center=tuple(float(v) for v in np.nanmean(zt, axis=0)),
        scale=tuple(float(v) if v > 1e-3 else 1.0 for v in scale),
    )
    say(f"quantile head: horizons {list(horizons)}, quantiles {list(quantiles)}; EWMA alphas {naive.alphas}")
    weights = (level_weights(wt), level_weights(wv)) if weight_by_level else None
    scaler, st, sv, ctx = None, None, None, None
    if check_mode(context) != "none":
        st, sv = horizon_states_of(train), horizon_states_of(val)  # (N, len(STATE)), aligned with the windows
        scaler = ContextScaler.fit(context, wt, st)
        ctx = (scaler.transform(wt, st), scaler.transform(wv, sv))
    model, hist = train_lstm(pre.transform(wt), zt, pre.transform(wv), zv, lstm_cfg, seed, say, head, weights, ctx)
    z_val = make_quantile_model_fn(model, pre, len(horizons), context=scaler)(wv, sv)  # (N, H, Q)
    spec = fit_spec(wv, yv, pv, z_val, naive, links=lv, train=(wt, yt, pt))
    spec.context = scaler
    say(f"served sources (cross-fitted validation pinball): {spec.sources}")
    return model, pre, spec, hist


def served_functions(
    model_fn: Callable[[np.ndarray], np.ndarray],
    spec: ForecastSpec,
    profile: str | None = None,
    tails: tuple[float, float] = (0.1, 0.9),
) -> tuple[
    Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, float], np.ndarray], Callable[[np.ndarray], np.ndarray]
]:
    """The numpy twins of the serving graph's forecast, for training and evaluation, with the
    calibration and fallback choices of ``profile``'s group (None or unknown: ``"*"``), all Mbit/s:

    * ``forecast(windows)`` -> the served h = 1 median (N,);
    * ``quantile_fn(windows, tau)`` -> the served h = 1 ``tau``-quantile (N,);
    * ``policy_forecast(windows)`` -> the served h = 1 ``tails[0]``-quantile, median and
      ``tails[1]``-quantile (N, 3) (:func:`~ml.forecast.quantiles.quantile_column`): what the serving
      graph feeds the quantiles observation (``ml.policy.observation.QUANTILE_OBS_LEVELS``).
    """
    mid = len(spec.quantiles) // 2

    def served_z(windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, dtype=np.float64)
        return spec.served_ratio(w, [profile] * len(w), model_fn(w))[0][:, 0]  # (N, Q)

    def forecast(windows: np.ndarray) -> np.ndarray:
        return from_ratio(windows, served_z(windows)[:, mid])

    def quantile_fn(windows: np.ndarray, tau: float) -> np.ndarray:
        return from_ratio(windows, interpolate_tau(served_z(windows), spec.quantiles, tau))

    def policy_forecast(windows: np.ndarray) -> np.ndarray:
        z = served_z(windows)
        lo, hi = (quantile_column(z, spec.quantiles, t) for t in tails)
        return from_ratio(windows, np.stack([lo, z[:, mid], hi], axis=1))

    return forecast, quantile_fn, policy_forecast


def horizon_states_of(links: Sequence[LinkSeries]) -> np.ndarray:
    """The long-memory state after the last step of every window of :func:`horizon_windows_of`,
    in the same order: (N, len(STATE)); every link needs ``states``."""
    out = []
    for ls in links:
        if ls.steps > WINDOW:
            if ls.states is None or len(ls.states) != ls.steps:
                raise DataError(f"link {ls.link_id} has no long-memory states (ml.forecast.context.series_states)")
            out.append(ls.states[WINDOW - 1 : ls.steps - 1])  # window i ends on row i + WINDOW - 1
    return np.concatenate(out) if out else np.zeros((0, len(STATE)))


def horizon_windows_of(
    links: Sequence[LinkSeries], horizons: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All windows of all links with their horizon targets: windows (N, 10, 4), targets
    (N, H) Mbit/s (NaN beyond a link's end), profiles (N,) object, link index (N,)."""
    ws, ys, ps, idx = [], [], [], []
    for i, ls in enumerate(links):
        w, _ = make_windows(ls.data, WINDOW)
        if len(w):
            ws.append(w)
            ys.append(horizon_targets(ls.data[:, BW], horizons))
            ps.append(np.full(len(w), ls.profile or "unknown", dtype=object))
            idx.append(np.full(len(w), i, dtype=np.int64))
    if not ws:
        return (np.zeros((0, WINDOW, 4)), np.zeros((0, len(horizons))), np.zeros(0, object), np.zeros(0, np.int64))
    return np.concatenate(ws), np.concatenate(ys), np.concatenate(ps), np.concatenate(idx)
