"""The bandwidth-forecast LSTM, exactly the designed architecture, and its training loop.

Input (10, 4) standardised features (see :mod:`ml.forecast.features`); output 1 = the
standardised next-step target. Quick mode uses the same architecture with fewer
windows and epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from stream.core.progress import Progress
from stream.core.records import FEATURES, WINDOW


@dataclass
class LSTMConfig:
    """Training hyper-parameters (architecture is fixed by the design)."""

    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    loss: str = "mae"  # design said MSE; MAE measured better on real traces (docs/models.md)
    patience: int = 6  # EarlyStopping on val_loss, best weights restored
    lr_patience: int = 3  # ReduceLROnPlateau(factor 0.5)
    max_train_windows: int = 60_000
    max_val_windows: int = 10_000
    time_budget_s: float | None = None  # stop after the epoch that crosses it
    #: quantile head: divide each horizon's pinball by its target spread (``masked_pinball``);
    #: off: on two seeds it won h = 1 on seed 0 and lost on seed 1 (docs/models.md)
    scale_loss_by_horizon: bool = False

    @classmethod
    def quick(cls) -> LSTMConfig:
        """Seconds, not minutes: for tests and the demo."""
        return cls(
            epochs=3, patience=2, lr_patience=1, max_train_windows=3_000, max_val_windows=1_000, time_budget_s=20
        )


def build_lstm(seed: int | None = None, quantile_head: QuantileHead | None = None, n_context: int = 0):
    """LSTM 128 -> 64 -> 32 with dropout + batch norm, dense 16 -> 8, then the head (uncompiled).

    The point head (the design's) is one output, the standardised next-step target. The
    quantile head (``quantile_head``) is ``H x Q`` outputs in the ratio space, flattened
    horizon-major: (N, H * Q).

    ``n_context`` > 0 adds a second input ``context`` (N, n_context): the link's long-memory
    features (:mod:`ml.forecast.context`), joined after the trunk into the dense 16 layer and
    again beside the dense 8 output into the head, so the head sees them directly.
    """
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it
    from keras import layers  # Keras (TensorFlow): seconds to import; only model code needs it

    if seed is not None:
        keras.utils.set_random_seed(seed)
    inp = keras.Input(shape=(WINDOW, len(FEATURES)), name="window")
    x = layers.LSTM(128, return_sequences=True, name="lstm_128")(inp)
    x = layers.Dropout(0.2)(x)
    x = layers.BatchNormalization()(x)
    x = layers.LSTM(64, return_sequences=True, name="lstm_64")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.BatchNormalization()(x)
    x = layers.LSTM(32, name="lstm_32")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.BatchNormalization()(x)
    ctx = keras.Input(shape=(n_context,), name="context") if n_context else None
    if ctx is not None:
        x = layers.Concatenate(name="trunk_and_context")([x, ctx])  # (N, 32 + C)
    x = layers.Dense(16, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(8, activation="relu")(x)
    if ctx is not None:
        x = layers.Concatenate(name="dense_and_context")([x, ctx])  # (N, 8 + C)
    inputs = inp if ctx is None else [inp, ctx]
    if quantile_head is None:
        out = layers.Dense(1, name="next_bw")(x)
        return keras.Model(inputs, out, name="bwp_lstm")
    return keras.Model(inputs, quantile_head.build(x), name="bwp_lstm_quantiles")


@dataclass(frozen=True)
class QuantileHead:
    """Non-crossing quantile outputs for ``horizons`` x ``quantiles`` (by construction).

    Per horizon a free median and ``Q - 1`` softplus (>= 0) gaps; a fixed (non-trainable)
    Dense layer adds the gaps outward from the median and scales by the target's
    training spread ``scale[h]`` (> 0) around ``center[h]``, so every output row is
    non-decreasing along Q whatever the weights. Only built-in layers: the model loads
    with ``safe_mode=True``.
    """

    horizons: tuple[int, ...]
    quantiles: tuple[float, ...]
    center: tuple[float, ...]  # per horizon, ratio-space target mean on training windows
    scale: tuple[float, ...]  # per horizon, its standard deviation (> 0)

    def matrix(self) -> np.ndarray:
        """(H + H (Q - 1), H Q): [medians, gaps] -> quantiles, horizon-major."""
        n_h, n_q = len(self.horizons), len(self.quantiles)
        m = n_q // 2
        mat = np.zeros((n_h + n_h * (n_q - 1), n_h * n_q))
        for h in range(n_h):
            gaps = n_h + h * (n_q - 1)  # this horizon's first gap input: (m lower, then m upper)
            for j in range(n_q):
                col = h * n_q + j
                mat[h, col] = self.scale[h]
                for k in range(abs(j - m)):
                    row = gaps + (k if j < m else m + k)
                    mat[row, col] = -self.scale[h] if j < m else self.scale[h]
        return mat

    def build(self, x):
        """The head on trunk features ``x`` (N, 8) -> (N, H * Q)."""
        from keras import layers  # Keras (TensorFlow): seconds to import; only model code needs it

        n_h, n_q = len(self.horizons), len(self.quantiles)
        med = layers.Dense(n_h, name="median")(x)
        gaps = layers.Dense(n_h * (n_q - 1), activation="softplus", name="gaps")(x)
        both = layers.Concatenate(name="median_and_gaps")([med, gaps])
        fixed = layers.Dense(n_h * n_q, name="quantiles", trainable=False)
        out = fixed(both)
        bias = np.repeat(np.asarray(self.center, dtype=np.float32), n_q)
        fixed.set_weights([self.matrix().astype(np.float32), bias])
        return out


def masked_pinball(quantiles: tuple[float, ...], scale: tuple[float, ...] | None = None):
    """Keras loss: per window, the mean pinball of its (H * Q) outputs against its (H,) targets,
    NaN targets (beyond a series' end) left out; (N,), so Keras can apply sample weights.

    ``scale`` (per horizon, > 0) divides each horizon's pinball by that horizon's target spread,
    so every horizon weighs alike: unscaled, the long horizons (spread several times the next
    step's) dominate the gradient. Measured on the six real datasets over two seeds it did not
    win reliably, so it is off by default (``LSTMConfig.scale_loss_by_horizon``, docs/models.md)."""
    from keras import ops  # Keras (TensorFlow): seconds to import; only model code needs it

    taus = np.asarray(quantiles, dtype=np.float32)
    n_q = len(quantiles)
    inv = None if scale is None else (1.0 / np.asarray(scale, dtype=np.float32))[:, None]  # (H, 1)

    def loss(y_true, y_pred):
        mask = ops.cast(ops.isfinite(y_true), "float32")  # (N, H)
        y = ops.where(ops.isfinite(y_true), y_true, 0.0)
        q = ops.reshape(y_pred, (-1, ops.shape(y_true)[1], n_q))  # (N, H, Q)
        d = ops.expand_dims(y, -1) - q
        rho = ops.maximum(taus * d, (taus - 1.0) * d) * ops.expand_dims(mask, -1)
        if inv is not None:
            rho = rho * inv
        return ops.sum(rho, axis=(1, 2)) / ops.maximum(ops.sum(mask, axis=1) * n_q, 1.0)

    return loss


def _subsample(n: int, rng: np.random.Generator, *arrays: np.ndarray | None) -> list:
    """The same random ``n`` rows (in order) of every array (None stays None)."""
    total = len(arrays[0])  # type: ignore[arg-type]
    if total <= n:
        return list(arrays)
    idx = np.sort(rng.choice(total, size=n, replace=False))
    return [None if a is None else a[idx] for a in arrays]


def train_lstm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: LSTMConfig,
    seed: int,
    progress: Progress | None = None,
    quantile_head: QuantileHead | None = None,
    weights: tuple[np.ndarray, np.ndarray] | None = None,
    context: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Fit a fresh LSTM; returns (model, history dict).

    Point head: standardised inputs and targets (N,), ``config.loss``. Quantile head:
    standardised inputs, ratio-space targets (N, H) (NaN beyond a series' end), pinball
    loss. ``x_val``/``y_val`` must come from other links (or another seed) than the
    training windows: they drive EarlyStopping and ReduceLROnPlateau. ``weights``: per-window
    sample weights (training, validation). ``context``: the standardised context features
    (training (N, C), validation) of a model with a second input (:func:`build_lstm`).
    """
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it

    rng = np.random.default_rng(seed)
    w_train, w_val = weights if weights is not None else (None, None)
    c_train, c_val = context if context is not None else (None, None)
    x_train, y_train, w_train, c_train = _subsample(config.max_train_windows, rng, x_train, y_train, w_train, c_train)
    x_val, y_val, w_val, c_val = _subsample(config.max_val_windows, rng, x_val, y_val, w_val, c_val)
    n_context = 0 if c_train is None else int(c_train.shape[1])
    model = build_lstm(seed, quantile_head, n_context)
    if c_train is not None:  # the two named inputs
        x_train, x_val = {"window": x_train, "context": c_train}, {"window": x_val, "context": c_val}
    opt = keras.optimizers.Adam(config.learning_rate)
    if quantile_head is None:
        model.compile(optimizer=opt, loss=config.loss, metrics=["mae"])
    else:
        scale = quantile_head.scale if config.scale_loss_by_horizon else None
        model.compile(optimizer=opt, loss=masked_pinball(quantile_head.quantiles, scale))
    say = progress or (lambda s: None)
    started = time.monotonic()

    class _Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            say(
                f"lstm epoch {epoch + 1}/{config.epochs}: loss {logs.get('loss', float('nan')):.4f} "
                f"val_loss {logs.get('val_loss', float('nan')):.4f} ({time.monotonic() - started:.0f} s)"
            )
            if config.time_budget_s is not None and time.monotonic() - started > config.time_budget_s:
                say(f"lstm: time budget {config.time_budget_s:.0f} s reached, stopping")
                self.model.stop_training = True

    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=config.lr_patience, min_lr=1e-5),
        _Report(),
    ]
    say(
        f"lstm: {len(y_train)} training windows, {len(y_val)} validation windows"
        + (f", {n_context} context features" if n_context else "")
    )
    hist = model.fit(
        x_train,
        y_train,
        sample_weight=w_train,
        validation_data=(x_val, y_val) if w_val is None else (x_val, y_val, w_val),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    h = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    h["epochs_run"] = len(h.get("loss", []))
    h["train_windows"] = int(len(y_train))
    h["val_windows"] = int(len(y_val))
    h["seconds"] = round(time.monotonic() - started, 1)
    if h.get("val_loss"):
        h["best_val_loss"] = min(h["val_loss"])
    return model, h
