"""The serving graph of a quantile model: calibration, fallback and policy choice in one function.

Per window (profile group ``g``, see :class:`ml.forecast.calibration.ForecastSpec`):

1. the quantile LSTM's ratio-space output (N, H, Q), shifted by the split-conformal
   offsets of ``g`` and made non-decreasing along Q (running maximum);
2. the naive probabilistic forecasters (last value, EWMA with one alpha per horizon,
   moving average) with the offsets of ``g`` plus their own split-conformal shifts, also
   made non-decreasing;
3. per horizon the source chosen for ``g`` at training (one-hot, so no branch);
4. back to Mbit/s; the served ``h = 1`` median is ``predicted_bandwidth_mbps`` and the
   DDQN's forecast feature (with the served ``h = 1`` p10 and p90 too, for a Q-network
   trained on the quantiles observation layout);
5. the action of the policy chosen for ``g`` at training: the DDQN, the EWMA rule or the
   quantile rule (:mod:`ml.policy.rules`), all three computed, one selected.

The numpy specification is :meth:`ForecastSpec.served_ratio`, :func:`ml.policy.rules.ewma_rule_actions`,
:func:`ml.policy.rules.quantile_rule_actions` and :func:`ml.policy.observation.observation` (fed by
``ml.forecast.training.served_functions``); tests compare this graph with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ml.forecast.calibration import SOURCES, ForecastSpec
from ml.forecast.context import N_SPANS, VOL_FLOOR, ContextScaler
from ml.forecast.features import _ABS_EPS, _REL_EPS, Preprocessor
from ml.forecast.naive import NAIVE
from ml.forecast.quantiles import Z_CLIP, tau_weights
from ml.policy.observation import QUANTILE_OBS_LEVELS, obs_dim
from ml.serving.graph import graph_parts, snap_tf
from ml.smoothing import ewma_weights
from stream.core.records import N_ACTIONS

#: Policies a quantile model can serve, in the order of the graph's policy index.
POLICIES: tuple[str, ...] = ("ddqn", "ewma_rule", "quantile_rule")


def spec_arrays(spec: ForecastSpec, policies: dict[str, str]) -> dict[str, np.ndarray]:
    """The per-group constants of the graph, indexed like ``spec.groups()``: shifts (G, H, Q),
    naive serving offsets (G, 3, H, Q), source one-hot (G, H, S), EWMA weights per horizon
    (10, H) and the policy index (G,)."""
    groups = spec.groups()
    return {
        "shifts": np.stack([spec.shifts[g] for g in groups]),
        "offsets": np.stack([np.stack([spec.serving_offsets(g, n) for n in NAIVE]) for g in groups]),
        "onehot": np.stack([np.eye(len(SOURCES))[[SOURCES.index(s) for s in spec.sources[g]]] for g in groups]),
        "ew": np.stack([ewma_weights(a) for a in spec.naive.alphas], axis=1),
        "pol": np.array([POLICIES.index(policies.get(g, policies["*"])) for g in groups], dtype=np.int32),
    }


def _z_at(z1: Any, taus: tuple[float, ...], tau: float, exact: bool) -> Any:
    """Quantile ``tau`` of the ratio-space rows z1 (N, Q) at levels ``taus``, in TensorFlow ops:
    ``ml.forecast.quantiles.quantile_column`` (``exact``) or ``interpolate_tau``."""
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    levels = [abs(t - tau) < 1e-9 for t in taus]
    if exact and any(levels):
        return z1[:, levels.index(True)]
    tk, tw = tau_weights(taus, tau)
    z_tau = z1[:, tk] + tw * (z1[:, tk + 1] - z1[:, tk])
    return tf.minimum(z_tau, z1[:, 0]) if tau < taus[0] else z_tau


def _mbps(z: Any, last: Any, eps: Any) -> Any:
    """ml.forecast.quantiles.from_ratio of (N,) ratio-space rows, in TensorFlow ops."""
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    return tf.maximum(tf.exp(tf.clip_by_value(z, -Z_CLIP, Z_CLIP)) * (last + eps) - eps, 0.0)


def _context_input(ctx: ContextScaler) -> Callable[[Any, Any, Any], Any]:
    """``ml.forecast.context.ContextScaler.transform`` in TensorFlow ops: (states (N, 6), last (N,),
    eps (N,)) -> the standardised context features (N, C) float32."""
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    f64 = tf.float64
    c_mean, c_std = tf.constant(ctx.mean, f64), tf.constant(ctx.std, f64)  # (C,)

    def context_input(states: Any, last: Any, eps: Any) -> Any:
        st = tf.cast(states, f64)
        e = eps[:, None]
        ms = tf.maximum(st[:, 2 : 2 + N_SPANS], 0.0)  # the EWMAs (N, 3)
        f = tf.concat([tf.math.log((ms + e) / (last[:, None] + e)),
                       tf.math.log(tf.maximum(st[:, -1:], 0.0) + VOL_FLOOR)], axis=1)  # fmt: skip
        z = (f - c_mean) / c_std
        return tf.cast(tf.where(tf.math.is_finite(z), z, tf.zeros_like(z)), tf.float32)

    return context_input


def quantile_serving_function(
    preprocessor: Preprocessor,
    lstm: Any,
    qnet: Any,
    spec: ForecastSpec,
    policies: dict[str, str],
    ewma_rule: tuple[float, float],
    quantile_tau: float,
    observation: str = "point",
) -> Callable[[Any, Any], tuple[Any, ...]]:
    """``serve(windows (N, 10, 4) float64, group (N,) int32[, states (N, 6) float64])`` -> (forecast
    (N,), action (N,) int32, reference (N,), quantiles Mbit/s (N, H, Q), source index into SOURCES
    (N,) int32, policy index into POLICIES (N,) int32). ``group`` indexes ``spec.groups()``;
    ``policies`` maps a group to its policy (missing groups take the ``"*"`` entry); ``observation``
    is the Q-network's layout (``"point"``: 9 columns, ``"quantiles"``: 11, with the served h = 1
    p10 and p90). A model with long-memory context (``spec.context``) takes each window's link
    state (``stream.core.longmem``) as the third argument; its features are
    ``ml.forecast.context.ContextScaler.transform`` in TensorFlow ops."""
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    f64 = tf.float64
    n_h, n_q = len(spec.horizons), len(spec.quantiles)
    mid = n_q // 2
    c = {k: tf.constant(v, tf.int32 if k == "pol" else f64) for k, v in spec_arrays(spec, policies).items()}
    shifts, offsets, onehot, ew, pol = c["shifts"], c["offsets"], c["onehot"], c["ew"], c["pol"]
    rule_w = tf.constant(ewma_weights(ewma_rule[0]), f64)  # (10,)
    rule_k = float(ewma_rule[1])
    obs_dim(observation)  # ValueError for an unknown layout
    transform, observe = graph_parts(preprocessor)
    ctx = spec.context
    context_input = _context_input(ctx) if ctx is not None else None

    def running_max(v: Any) -> Any:
        """np.maximum.accumulate along the last (quantile) axis: calibrated quantiles never cross."""
        cols = [v[..., 0]]
        for j in range(1, n_q):
            cols.append(tf.maximum(cols[-1], v[..., j]))
        return tf.stack(cols, axis=-1)

    def serve(w: Any, group: Any, states: Any = None) -> tuple[Any, ...]:
        w, bw, x, x_lat, _, _ = transform(w)
        last = bw[:, -1]  # (N,): the ratio space is relative to the last sample
        eps = _REL_EPS * tf.reduce_mean(bw, axis=1) + _ABS_EPS
        # --- 1. calibrated model, (N, H, Q) ratio space
        inputs = x if context_input is None else {"window": x, "context": context_input(states, last, eps)}
        z = tf.reshape(tf.cast(lstm(inputs, training=False), f64), [-1, n_h, n_q]) + tf.gather(shifts, group)
        z_lstm = running_max(z)
        # --- 2. naive forecasters: points (N, 3, H) -> ratio quantiles (N, 3, H, Q)
        lv = tf.repeat(last[:, None], n_h, axis=1)
        ma = tf.repeat(tf.reduce_mean(bw, axis=1)[:, None], n_h, axis=1)
        points = tf.stack([lv, tf.matmul(bw, ew), ma], axis=1)
        e3 = eps[:, None, None]
        z_points = tf.math.log((tf.maximum(points, 0.0) + e3) / (last[:, None, None] + e3))
        z_naive = running_max(z_points[:, :, :, None] + tf.gather(offsets, group))
        # --- 3. per-horizon source, (N, H, Q)
        cands = tf.concat([z_lstm[:, None], z_naive], axis=1)  # (N, S, H, Q)
        sel = tf.gather(onehot, group)  # (N, H, S)
        z_served = tf.einsum("nshq,nhs->nhq", cands, sel)
        # --- 4. Mbit/s
        e4 = eps[:, None, None]
        q = tf.maximum(tf.exp(tf.clip_by_value(z_served, -Z_CLIP, Z_CLIP)) * (last[:, None, None] + e4) - e4, 0.0)
        forecast = q[:, 0, mid]
        # --- 5. the three policies, one chosen per group
        z1 = z_served[:, 0]
        tails: list[Any] = []  # the quantiles layout's p10 and p90 (ml.forecast.training.served_functions)
        if observation == "quantiles":
            tails = [
                _mbps(_z_at(z1, spec.quantiles, t, True), last, eps)
                for t in (QUANTILE_OBS_LEVELS[0], QUANTILE_OBS_LEVELS[-1])
            ]
        obs, ref = observe(w, bw, x_lat, forecast, *tails)
        a_ddqn = tf.clip_by_value(tf.argmax(qnet(obs, training=False), axis=1, output_type=tf.int32), 0, N_ACTIONS - 1)
        a_ewma = snap_tf(rule_k * tf.linalg.matvec(bw, rule_w), ref)
        a_quant = snap_tf(_mbps(_z_at(z1, spec.quantiles, quantile_tau, False), last, eps), ref)
        p = tf.gather(pol, group)
        action = tf.where(p == 0, a_ddqn, tf.where(p == 1, a_ewma, a_quant))
        source = tf.argmax(sel[:, 0], axis=1, output_type=tf.int32)
        return forecast, action, ref, q, source, p

    return serve
