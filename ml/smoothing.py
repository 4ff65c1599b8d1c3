"""The EWMA as a weight vector: the one implementation the naive forecasters, the EWMA rule and
the serving graphs share (it sits below ``ml.forecast`` and ``ml.policy``, which may not import
each other)."""

from __future__ import annotations

import numpy as np

from stream.core.records import WINDOW


def ewma_weights(alpha: float, n: int = WINDOW) -> np.ndarray:
    """Weights ``w`` (n,) with ``EWMA_alpha(x) = x @ w`` for ``s_t = alpha x_t + (1 - alpha) s_{t-1}, s_0 = x_0``.

    The closed form of the recursion: ``alpha (1 - alpha)^(n-1-i)`` on ``x_i`` and
    ``(1 - alpha)^(n-1)`` on ``x_0``; a vector, so that a grid of alphas is one matrix product.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    w = alpha * (1.0 - alpha) ** np.arange(n - 1, -1, -1, dtype=np.float64)
    w[0] = (1.0 - alpha) ** (n - 1)
    return w
