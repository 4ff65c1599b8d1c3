"""The Double-DQN Q-network: observation (OBS_DIM,) -> one Q-value per allocation level.

Dense 128 -> 64 -> 32 (ReLU) -> N_ACTIONS (linear). Variant ``"bn"`` is the design's
network with BatchNormalization and Dropout after each hidden layer; ``"mlp"`` is the
same stack without them. Only stock Keras layers, so the model saves to ``.keras``
and loads with ``safe_mode=True``. docs/policy.md compares the two variants.
"""

from __future__ import annotations

from stream.core.records import N_ACTIONS

VARIANTS = ("mlp", "bn")
HIDDEN = (128, 64, 32)


def build_qnetwork(
    obs_dim: int, n_actions: int = N_ACTIONS, variant: str = "mlp", dropout: float = 0.2, seed: int | None = None
):
    """A fresh, uncompiled Q-network ``(None, obs_dim) -> (None, n_actions)``.

    ``seed`` makes the initial weights (and dropout masks) reproducible.
    """
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if obs_dim < 1 or n_actions < 1:
        raise ValueError(f"obs_dim and n_actions must be >= 1, got {obs_dim}, {n_actions}")
    init = lambda i: keras.initializers.GlorotUniform(seed=None if seed is None else seed + i)  # noqa: E731
    inp = keras.Input(shape=(obs_dim,), name="observation")
    x = inp
    for i, units in enumerate(HIDDEN):
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=init(i), name=f"dense_{units}")(x)
        if variant == "bn":
            x = keras.layers.BatchNormalization(name=f"bn_{units}")(x)
            x = keras.layers.Dropout(dropout, seed=None if seed is None else seed + 100 + i, name=f"dropout_{units}")(x)
    out = keras.layers.Dense(n_actions, activation="linear", kernel_initializer=init(len(HIDDEN)), name="q_values")(x)
    return keras.Model(inp, out, name=f"qnet_{variant}")
