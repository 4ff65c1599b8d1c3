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

    @classmethod
    def quick(cls) -> LSTMConfig:
        """Seconds, not minutes: for tests and the demo."""
        return cls(
            epochs=3, patience=2, lr_patience=1, max_train_windows=3_000, max_val_windows=1_000, time_budget_s=20
        )


def build_lstm(seed: int | None = None):
    """LSTM 128 -> 64 -> 32 with dropout + batch norm, dense 16 -> 8 -> 1 (uncompiled)."""
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
    x = layers.Dense(16, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(8, activation="relu")(x)
    out = layers.Dense(1, name="next_bw")(x)
    return keras.Model(inp, out, name="bwp_lstm")


def _subsample(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= n:
        return x, y
    idx = np.sort(rng.choice(len(x), size=n, replace=False))
    return x[idx], y[idx]


def train_lstm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: LSTMConfig,
    seed: int,
    progress: Progress | None = None,
):
    """Fit a fresh LSTM on standardised inputs/targets; returns (model, history dict).

    ``x_val``/``y_val`` must come from other links (or another seed) than the training
    windows: they drive EarlyStopping and ReduceLROnPlateau.
    """
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it

    rng = np.random.default_rng(seed)
    x_train, y_train = _subsample(x_train, y_train, config.max_train_windows, rng)
    x_val, y_val = _subsample(x_val, y_val, config.max_val_windows, rng)
    model = build_lstm(seed)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=config.loss, metrics=["mae"])
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
    say(f"lstm: {len(x_train)} training windows, {len(x_val)} validation windows")
    hist = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    h = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    h["epochs_run"] = len(h.get("loss", []))
    h["train_windows"] = int(len(x_train))
    h["val_windows"] = int(len(x_val))
    h["seconds"] = round(time.monotonic() - started, 1)
    if h.get("val_loss"):
        h["best_val_loss"] = min(h["val_loss"])
    return model, h
