"""The whole serving path as one TensorFlow function: window in, forecast and action out.

:meth:`ml.serving.predictor.Predictor.predict` used to run numpy preprocessing, the LSTM, numpy
post-processing and the policy observation, then the Q-net: two compiled calls with
numpy in between. At batch 1000 that numpy work and the second hand-over to
TensorFlow's thread pool cost about a fifth of the time (`bwp bench model`:
``batch_1000_vs_bound`` 0.78). Here the same arithmetic is written in TensorFlow ops,
so the serving path is one graph (XLA-compiled for large batches).

The numpy functions stay the specification, shared with training:
:meth:`ml.forecast.features.Preprocessor.transform` / :meth:`~ml.forecast.features.Preprocessor.inverse_target`
and :func:`ml.policy.observation.observation` / :func:`~ml.policy.observation.reference_bandwidth`.
Tests check this graph against them on random and edge-case windows. The arithmetic
runs in float64, as in numpy; only the two networks run in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ml.forecast.features import _ABS_EPS, _REL_EPS, BW, LAT, Preprocessor
from ml.policy.observation import FORECAST_CLIP, LOSS, OBS_HIGH, OBS_LOW, REL
from ml.smoothing import ewma_weights
from stream.core.records import N_ACTIONS


def graph_parts(preprocessor: Preprocessor) -> tuple[Callable[[Any], tuple], Callable[[Any, Any, Any, Any], tuple]]:
    """The two pieces every serving graph shares, in TensorFlow ops (not compiled):

    * ``transform(w)``: raw windows (N, 10, 4) -> (w float64, bw (N, 10) >= 0, x (N, 10, 4)
      float32 model input, log1p latency (N, 10), level (N,), eps (N,)) as
      :meth:`Preprocessor.transform` computes them;
    * ``observe(w, bw, x_lat, forecast, q10=None, q90=None)`` -> (observation (N, 9) float32, or
      (N, 11) with the served h = 1 p10 and p90 (N,) Mbit/s given (the quantiles layout), reference (N,))
      as :func:`ml.policy.observation.observation` / ``reference_bandwidth``.
    """
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    f64 = tf.float64
    mode = preprocessor.mode
    x_mean = tf.constant(preprocessor.x_mean, f64)  # (4,)
    x_std = tf.constant(preprocessor.x_std, f64)  # (4,)
    n_feat = len(preprocessor.x_mean)
    # one-hot column masks: rebuilding the window from per-channel columns without scatter
    bw_col = tf.one_hot(BW, n_feat, dtype=f64)  # (4,)
    lat_col = tf.one_hot(LAT, n_feat, dtype=f64)
    keep = 1.0 - bw_col - lat_col

    def finite_or_zero(v: Any) -> Any:
        return tf.where(tf.math.is_finite(v), v, tf.zeros_like(v))

    def transform(w: Any) -> tuple:
        w = tf.cast(w, f64)  # (N, 10, 4)
        w_bw = w[:, :, BW]  # (N, 10), raw
        bw = tf.maximum(w_bw, 0.0)
        # ml.forecast.features.window_level (clipped at 0) and ml.forecast.features._eps, each (N,)
        level = w_bw[:, -1] if mode == "relative_last" else tf.reduce_mean(w_bw, axis=1)
        level = tf.maximum(level, 0.0)
        eps = _REL_EPS * tf.reduce_mean(bw, axis=1) + _ABS_EPS
        if mode == "log_absolute":
            x_bw = tf.math.log1p(bw)
        else:
            x_bw = tf.math.log((bw + eps[:, None]) / (level[:, None] + eps[:, None]))
        x_lat = tf.math.log1p(tf.maximum(w[:, :, LAT], 0.0))
        x = w * keep + x_bw[:, :, None] * bw_col + x_lat[:, :, None] * lat_col
        x = tf.cast(finite_or_zero((x - x_mean) / x_std), tf.float32)
        return w, bw, x, x_lat, level, eps

    def observe(w: Any, bw: Any, x_lat: Any, forecast: Any, q10: Any = None, q90: Any = None) -> tuple:
        ref = tf.reduce_max(bw, axis=1)  # (N,): max of the clipped = max(max of the raw, 0)
        inv = tf.where(ref > 0, 1.0 / tf.where(ref > 0, ref, tf.ones_like(ref)), tf.zeros_like(ref))
        rel = bw * inv[:, None]  # (N, 10)

        def scaled(mbps: Any) -> Any:  # ml.policy.observation._scaled
            v = tf.maximum(mbps, 0.0) * inv
            return tf.clip_by_value(tf.where(tf.math.is_nan(v), tf.zeros_like(v), v), 0.0, FORECAST_CLIP)

        extra = [] if q10 is None else [scaled(q10), scaled(q90)]
        obs = tf.stack(
            [
                rel[:, -1],
                tf.reduce_mean(rel, axis=1),
                tf.reduce_min(rel, axis=1),
                tf.math.reduce_std(rel, axis=1),
                rel[:, -1] - rel[:, -2],
                tf.clip_by_value(x_lat[:, -1] - tf.reduce_mean(x_lat, axis=1), float(OBS_LOW[5]), float(OBS_HIGH[5])),
                tf.clip_by_value(w[:, -1, LOSS], 0.0, 1.0),
                tf.clip_by_value(w[:, -1, REL], 0.0, 1.0),
                scaled(forecast),
                *extra,
            ],
            axis=1,
        )
        return tf.cast(obs, tf.float32), ref

    return transform, observe


def snap_tf(alloc: Any, ref: Any) -> Any:
    """:func:`ml.policy.observation.snap_down` in TensorFlow ops: the largest action whose
    allocation does not exceed ``alloc`` (N,) on links with reference ``ref`` (N,)."""
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    share = tf.where(ref > 0, alloc / tf.where(ref > 0, ref, tf.ones_like(ref)), tf.ones_like(ref))
    a = tf.cast(tf.floor(share * N_ACTIONS + 1e-9), tf.int32) - 1
    return tf.clip_by_value(a, 0, N_ACTIONS - 1)


def serving_function(
    preprocessor: Preprocessor,
    lstm: Any,
    qnet: Any,
    policies: Sequence[int] = (0,),
    ewma_rule: tuple[float, float] = (0.5, 0.8),
) -> Callable[[Any, Any], tuple[Any, Any, Any, Any]]:
    """``serve(windows, group)``: (N, 10, 4) float64 raw windows and (N,) int32 profile groups ->
    (forecast Mbit/s (N,) float64, action (N,) int32 in 0..9, reference Mbit/s (N,) float64,
    policy index (N,) int32: 0 the DDQN, 1 the EWMA rule).

    The point head (v1 artefacts and ``bwp train --head point``). ``policies[g]`` is the policy
    chosen at training for group ``g``; ``ewma_rule`` its (alpha, k). Not wrapped in
    ``tf.function``; the caller compiles it (plain or XLA).
    """
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    f64 = tf.float64
    mode = preprocessor.mode
    y_mean = tf.constant(preprocessor.y_mean, f64)
    y_std = tf.constant(preprocessor.y_std, f64)
    pol = tf.constant(list(policies), tf.int32)  # (G,)
    rule_w = tf.constant(ewma_weights(ewma_rule[0]), f64)  # (10,)
    rule_k = float(ewma_rule[1])
    transform, observe = graph_parts(preprocessor)

    def serve(w: Any, group: Any) -> tuple[Any, Any, Any, Any]:
        w, bw, x, x_lat, level, eps = transform(w)
        # --- LSTM, then Preprocessor.inverse_target -> (N,) Mbit/s
        z = tf.cast(tf.reshape(lstm(x, training=False), [-1]), f64) * y_std + y_mean
        z = tf.clip_by_value(z, -20.0, 20.0)
        if mode == "log_absolute":
            forecast = tf.math.expm1(z)
        else:
            forecast = tf.exp(z) * (level + eps) - eps
        forecast = tf.maximum(forecast, 0.0)
        obs, ref = observe(w, bw, x_lat, forecast)  # (N, 9), (N,)
        q = qnet(obs, training=False)
        a_ddqn = tf.clip_by_value(tf.argmax(q, axis=1, output_type=tf.int32), 0, N_ACTIONS - 1)
        a_ewma = snap_tf(rule_k * tf.linalg.matvec(bw, rule_w), ref)  # ml.policy.rules.ewma_rule_actions
        p = tf.gather(pol, group)
        return forecast, tf.where(p == 1, a_ewma, a_ddqn), ref, p

    return serve
