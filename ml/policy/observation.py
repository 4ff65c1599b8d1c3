"""The Double-DQN policy's observation, shared by training and serving (numpy only).

The policy sees one link's latest 10-state window plus the LSTM's forecast of the
next bandwidth (and, for a quantile model, its served p10 and p90). Every feature is scale-free (bandwidths are divided by the window's
reference bandwidth, latency enters as a log-ratio), so one policy serves a
10 Mbit/s and a 100 Gbit/s link. The action ``a`` in 0..9 allocates
``(a + 1) / 10`` of the reference bandwidth = the window's peak bandwidth.

Observation columns, all computed from the window ``w`` (10, 4) and the forecast ``f``,
with ``ref = max(w.bandwidth)``; the ``"point"`` layout (point models, every artefact
before the layout was recorded: ``OBS_DIM`` = 9) has columns 0-8, the ``"quantiles"``
layout (quantile models) all 11:

====  ======================  ==============================================
col   name                    value
====  ======================  ==============================================
0     ``bw_last``             last bandwidth / ref                (0..1)
1     ``bw_mean``             window mean bandwidth / ref         (0..1)
2     ``bw_min``              window minimum bandwidth / ref      (0..1)
3     ``bw_std``              window bandwidth std / ref  (volatility)
4     ``bw_trend``            (last - previous bandwidth) / ref  (-1..1)
5     ``latency_rel``         log1p(last latency) - mean(log1p(latency))
6     ``packet_loss``         last packet loss                    (0..1)
7     ``reliability``         last reliability                    (0..1)
8     ``forecast``            forecast (median) / ref, clipped to [0, 4]
9     ``q10``                 served h = 1 p10 / ref, clipped to [0, 4]
10    ``q90``                 served h = 1 p90 / ref, clipped to [0, 4]
====  ======================  ==============================================

The forecaster behind the observation returns (N,) Mbit/s (point layout) or (N, 3) Mbit/s,
the served h = 1 quantiles at ``QUANTILE_OBS_LEVELS`` = (0.1, 0.5, 0.9) (quantiles layout);
:func:`observation` builds the matching width from either.

A window whose bandwidth is all zero (outage) has ``ref = 0``: its bandwidth
columns are 0 and every action allocates 0 Mbit/s.
"""

from __future__ import annotations

import numpy as np

from stream.core.records import BW, FEATURES, LAT, LOSS, N_ACTIONS, REL, WINDOW

OBS_NAMES: tuple[str, ...] = (
    "bw_last",
    "bw_mean",
    "bw_min",
    "bw_std",
    "bw_trend",
    "latency_rel",
    "packet_loss",
    "reliability",
    "forecast",
    "q10",
    "q90",
)
#: Observation layouts (``metadata["policy"]["observation"]``; absent = ``"point"``) and their widths.
OBS_DIMS: dict[str, int] = {"point": 9, "quantiles": 11}
#: Width of the point layout (point models and every artefact that records no layout).
OBS_DIM = OBS_DIMS["point"]
#: Levels of the (N, 3) forecaster output of the quantiles layout (p10, median, p90).
QUANTILE_OBS_LEVELS = (0.1, 0.5, 0.9)
#: First forecast column: columns FORECAST_COL.. (forecast, q10, q90) are zeroed by the "without forecast" ablation.
FORECAST_COL = OBS_NAMES.index("forecast")
FORECAST_CLIP = 4.0
#: Bounds of every observation column (latency_rel: log1p of at most one hour in ms is < 16); a
#: layout uses the first ``obs_dim(layout)`` of them.
OBS_LOW = np.array([0, 0, 0, 0, -1, -16, 0, 0, 0, 0, 0], dtype=np.float32)
OBS_HIGH = np.array([1, 1, 1, 1, 1, 16, 1, 1, FORECAST_CLIP, FORECAST_CLIP, FORECAST_CLIP], dtype=np.float32)
#: Allocation share of each action: 0.1, 0.2, ..., 1.0.
ACTION_SHARES = (np.arange(N_ACTIONS, dtype=np.float64) + 1.0) / N_ACTIONS


def _check(windows: np.ndarray) -> np.ndarray:
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 3 or w.shape[1:] != (WINDOW, len(FEATURES)):
        raise ValueError(f"windows must be (N, {WINDOW}, {len(FEATURES)}), got {w.shape}")
    return w


def obs_dim(layout: str) -> int:
    """Width of an observation layout (``"point"`` 9, ``"quantiles"`` 11); ValueError for another name."""
    if layout not in OBS_DIMS:
        raise ValueError(f"unknown observation layout {layout!r} (known: {', '.join(OBS_DIMS)})")
    return OBS_DIMS[layout]


def layout_of_width(width: int) -> str:
    """The layout whose observations have ``width`` columns; ValueError for another width."""
    for name, dim in OBS_DIMS.items():
        if dim == width:
            return name
    raise ValueError(f"no observation layout has {width} columns (known: {OBS_DIMS})")


def observation_layout(metadata: dict | None) -> str:
    """The layout a model's Q-network was trained on: ``metadata["policy"]["observation"]``,
    ``"point"`` when absent (every artefact from before the layout was recorded)."""
    pol = (metadata or {}).get("policy")
    layout = pol.get("observation") if isinstance(pol, dict) else None
    return "point" if layout is None else str(layout)


def reference_bandwidth(windows: np.ndarray) -> np.ndarray:
    """The reference bandwidth of each window = its peak bandwidth, shape (N,)."""
    return np.maximum(_check(windows)[:, :, BW].max(axis=1), 0.0)


def observation(windows: np.ndarray, forecast_mbps: np.ndarray) -> np.ndarray:
    """The policy input of each window and forecast, float32: (N, 10, 4) with (N,) forecasts ->
    (N, 9) (point layout), or with (N, 3) quantiles at QUANTILE_OBS_LEVELS -> (N, 11) (quantiles
    layout: the median fills ``forecast``, p10 and p90 fill ``q10`` and ``q90``)."""
    w = _check(windows)
    fq = np.asarray(forecast_mbps, dtype=np.float64)
    quantiles = fq.ndim == 2
    if quantiles and fq.shape[1] != len(QUANTILE_OBS_LEVELS):
        raise ValueError(f"forecast quantiles must be (N, {len(QUANTILE_OBS_LEVELS)}), got {fq.shape}")
    f = fq[:, 1] if quantiles else fq.reshape(-1)
    if f.shape[0] != w.shape[0]:
        raise ValueError(f"forecast_mbps must have one value per window ({w.shape[0]}), got {f.shape[0]}")
    bw = np.maximum(w[:, :, BW], 0.0)  # (N, 10)
    ref = bw.max(axis=1)  # (N,)
    inv = np.where(ref > 0, 1.0 / np.where(ref > 0, ref, 1.0), 0.0)[:, None]  # (N, 1); 0 for an outage window
    rel = bw * inv  # (N, 10) in [0, 1]
    llat = np.log1p(np.maximum(w[:, :, LAT], 0.0))  # (N, 10)
    obs = np.empty((w.shape[0], OBS_DIMS["quantiles" if quantiles else "point"]), dtype=np.float64)
    obs[:, 0] = rel[:, -1]
    obs[:, 1] = rel.mean(axis=1)
    obs[:, 2] = rel.min(axis=1)
    obs[:, 3] = rel.std(axis=1)
    obs[:, 4] = rel[:, -1] - rel[:, -2]
    obs[:, 5] = np.clip(llat[:, -1] - llat.mean(axis=1), OBS_LOW[5], OBS_HIGH[5])
    obs[:, 6] = np.clip(w[:, -1, LOSS], 0.0, 1.0)
    obs[:, 7] = np.clip(w[:, -1, REL], 0.0, 1.0)
    obs[:, 8] = _scaled(f, inv[:, 0])
    if quantiles:
        obs[:, 9] = _scaled(fq[:, 0], inv[:, 0])
        obs[:, 10] = _scaled(fq[:, 2], inv[:, 0])
    return obs.astype(np.float32)


def _scaled(mbps: np.ndarray, inv_ref: np.ndarray) -> np.ndarray:
    """A forecast column: Mbit/s / ref, clipped to [0, FORECAST_CLIP], NaN -> 0."""
    return np.clip(np.nan_to_num(np.maximum(mbps, 0.0) * inv_ref, nan=0.0), 0.0, FORECAST_CLIP)


def allocated_mbps(actions: np.ndarray | int, reference_mbps: np.ndarray | float) -> np.ndarray:
    """Mbit/s that ``actions`` (0..9) allocate on links with ``reference_mbps``."""
    return ACTION_SHARES[np.asarray(actions, dtype=np.int64)] * np.asarray(reference_mbps, dtype=np.float64)


def snap_down(alloc_mbps: np.ndarray, reference_mbps: np.ndarray) -> np.ndarray:
    """The largest action whose allocation does not exceed ``alloc_mbps`` (at least action 0)."""
    ref = np.asarray(reference_mbps, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(ref > 0, np.asarray(alloc_mbps, dtype=np.float64) / np.where(ref > 0, ref, 1.0), 1.0)
    # 1e-9 so that an allocation exactly on a grid level maps to that level despite rounding
    a = np.floor(np.nan_to_num(share, nan=0.0) * N_ACTIONS + 1e-9).astype(np.int64) - 1
    return np.clip(a, 0, N_ACTIONS - 1)


def last_value_forecast(windows: np.ndarray) -> np.ndarray:
    """The naive forecaster (next bandwidth = last bandwidth), (N, 10, 4) -> (N,)."""
    return np.maximum(_check(windows)[:, -1, BW], 0.0)
