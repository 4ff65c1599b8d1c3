"""The per-link long-memory state: its definition, shared by the Redis window script (Lua),
its in-process twin and training (``ml.forecast.context``).

State after a link's step ``t`` (bandwidth ``b_t``, negative counted as 0), :data:`STATE` order::

    n      states seen (0: nothing known; a new link, or one whose Redis data was lost)
    prev   b_t
    m_s    EWMA of bandwidth with span s (alpha = 2 / (s + 1)), s in SPANS = (10, 60, 360)
    vol    EWMA (span VOL_SPAN) of squared log-returns r_t = log((b_t + e) / (b_{t-1} + e)),
           e = 0.01 * m_60 (before the update) + 1e-6, so r is scale-free

The first state sets every ``m_s`` to ``b_0`` and ``vol`` to 0. The update is a scalar function
in float64 with ``math.log`` (C's ``log``): the Lua script (``stream.pipeline.redis_window``)
does the same operations in the same order, so the two agree bit for bit (a property test
checks it against a real server). Stored as 6 little-endian float64 (:data:`STATE_STRUCT`).
"""

from __future__ import annotations

import math
import struct

SPANS: tuple[int, ...] = (10, 60, 360)
VOL_SPAN = 60
STATE: tuple[str, ...] = ("n", "prev") + tuple(f"m{s}" for s in SPANS) + ("vol",)
#: How a state is stored in Redis (appended to each window entry, and the link's latest in its meta hash).
STATE_STRUCT = struct.Struct("<" + "d" * len(STATE))
EPS_SHARE = 0.01
EPS_ABS = 1e-6
_M60 = 2 + SPANS.index(60)


def initial_state() -> list[float]:
    """The state of a link never seen: nothing counted."""
    return [0.0] * len(STATE)


def update_state(state: list[float], bw: float) -> list[float]:
    """The state after one more step of bandwidth ``bw``; a new list."""
    b = bw if bw > 0.0 else 0.0
    n, prev = state[0], state[1]
    if n == 0.0:
        return [1.0, b] + [b] * len(SPANS) + [0.0]
    out = [n + 1.0, b]
    e = EPS_SHARE * state[_M60] + EPS_ABS
    r = math.log((b + e) / (prev + e))
    for k, s in enumerate(SPANS):
        a = 2.0 / (s + 1.0)
        out.append((1.0 - a) * state[2 + k] + a * b)
    av = 2.0 / (VOL_SPAN + 1.0)
    out.append((1.0 - av) * state[-1] + av * (r * r))
    return out
