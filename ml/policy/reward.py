"""The allocation reward: how well ``allocated_mbps`` matched the bandwidth that came.

Let ``a`` = allocated Mbit/s and ``b`` = the next step's actual bandwidth::

    a <= b, b > 0 :  r = a / b                          (utilisation: idle capacity is lost)
    a >  b        :  r = max(-1, 1 - K * (a - b) / a)   (K = 4; (a - b) / a is the share of
                                                        the allocated traffic that does not fit,
                                                        i.e. is queued, then lost)
    a == b == 0   :  r = 0                              (outage and nothing allocated)

Properties: ``r`` is in [-1, 1], equals 1 only at ``a == b``, rises linearly up to
``b`` and falls four times as steeply beyond it (over-allocation congests the link:
every lost packet costs a retransmission, so it is worse than leaving the same
amount idle); it reaches 0 at ``a = 4/3 b`` and the floor -1 at ``a = 2 b``. An
outage (``b == 0``) with anything allocated loses everything: ``r = -1``. The
reward depends only on the ratio ``a / b``, so it is the same for a 10 Mbit/s and a
100 Gbit/s link. See docs/policy.md for a table.
"""

from __future__ import annotations

import numpy as np

#: Steepness of the over-allocation penalty (reward 0 at a = b / (1 - 1/K)).
OVER_K = 4.0


def reward(allocated_mbps: float | np.ndarray, actual_next_mbps: float | np.ndarray) -> float | np.ndarray:
    """Reward of allocating ``allocated_mbps`` when ``actual_next_mbps`` turns out available.

    Vectorised (broadcasts like numpy); returns a float for scalar inputs. Negative
    inputs are treated as 0 (a bandwidth cannot be negative). Always in [-1, 1].
    """
    a = np.maximum(np.asarray(allocated_mbps, dtype=np.float64), 0.0)
    b = np.maximum(np.asarray(actual_next_mbps, dtype=np.float64), 0.0)
    a, b = np.broadcast_arrays(a, b)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        under = np.where(b > 0, a / b, 0.0)
        lost_share = np.clip(np.where(a > 0, (a - b) / a, 0.0), 0.0, 1.0)  # only used where a > b
    over = np.maximum(-1.0, 1.0 - OVER_K * lost_share)
    r = np.where(a <= b, under, over)
    r = np.clip(r, -1.0, 1.0)  # guards float rounding at the edges
    if r.ndim == 0:
        return float(r)
    return r
