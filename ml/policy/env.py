"""Gymnasium environment: allocate bandwidth on one link, one step at a time.

At step ``t`` the agent sees the observation of the link's latest 10-state window
(``ml.policy.observation.observation``, including a forecaster's prediction of the next
bandwidth: (N,) Mbit/s for the 9-column point layout, or the served h = 1 p10 / median /
p90 (N, 3) for the 11-column quantiles layout), picks an action ``a`` in 0..9 = allocate ``(a + 1) * 10`` % of the
window's reference (peak) bandwidth, and is rewarded with
``ml.policy.reward.reward(allocated, next actual bandwidth)``. The action does not change
the link (bandwidth is exogenous), so the problem is a contextual bandit dressed as
an MDP; episodes have a fixed length and end by truncation, never termination.

Episodes come either from a list of series given to the constructor (simulator
output, telemetry files; each (T, 4) in FEATURES order), or from the simulator
(:meth:`LinkAllocationEnv.from_profile`), with every random choice drawn from
``self.np_random`` so that ``reset(seed=s)`` is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from ml.policy.observation import (
    ACTION_SHARES,
    BW,
    FORECAST_COL,
    OBS_HIGH,
    OBS_LOW,
    QUANTILE_OBS_LEVELS,
    last_value_forecast,
    layout_of_width,
    obs_dim,
    observation,
    reference_bandwidth,
)
from ml.policy.reward import reward
from simulator.generator import simulate_series
from stream.core.records import FEATURES, N_ACTIONS, WINDOW

#: windows (N, 10, 4) -> (N,) Mbit/s forecasts, or (N, 3) Mbit/s quantiles at QUANTILE_OBS_LEVELS
Forecaster = Callable[[np.ndarray], np.ndarray]
#: Simulator seeds below this may be used for training; evaluation uses seeds >= it.
TRAIN_SEED_LIMIT = 1_000_000
DEFAULT_EPISODE_LEN = 200


@dataclass
class SeriesData:
    """Everything an agent needs about one series, precomputed once.

    With ``T`` rows there are ``n = T - WINDOW + 1`` windows; window ``i`` ends at row
    ``i + WINDOW - 1``. The last window has no next row, so its ``actual_next`` is NaN
    and its row of ``rewards`` is NaN: it only serves as the final next-observation.
    """

    obs: np.ndarray  # (n, obs_dim(layout)) float32
    reference: np.ndarray  # (n,)
    forecast: np.ndarray  # (n,) the point forecast (the median of a quantile forecaster)
    actual_next: np.ndarray  # (n,), NaN at the end
    rewards: np.ndarray  # (n, N_ACTIONS): reward of every action, NaN row at the end

    @property
    def n_steps(self) -> int:
        """How many decisions the series supports (windows that have a next row)."""
        return self.obs.shape[0] - 1

    @property
    def layout(self) -> str:
        """The observation layout of ``obs`` (``"point"`` or ``"quantiles"``)."""
        return layout_of_width(self.obs.shape[1])


def all_windows(series: np.ndarray) -> np.ndarray:
    """Every full window of ``series`` (T, 4), including the last one: (T - 9, 10, 4)."""
    s = np.asarray(series, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != len(FEATURES):
        raise ValueError(f"series must be (T, {len(FEATURES)}), got {s.shape}")
    if s.shape[0] < WINDOW + 1:
        raise ValueError(f"series needs at least {WINDOW + 1} rows for one decision, got {s.shape[0]}")
    idx = np.arange(WINDOW)[None, :] + np.arange(s.shape[0] - WINDOW + 1)[:, None]
    return s[idx]


def precompute(series: np.ndarray, forecaster: Forecaster, use_forecast: bool = True) -> SeriesData:
    """Observations, forecasts and the reward of every action for every window of ``series``.

    The forecaster's output decides the layout: (n,) forecasts give the point observation,
    (n, 3) quantiles at QUANTILE_OBS_LEVELS the quantiles observation (``forecast`` = their median).
    """
    s = np.asarray(series, dtype=np.float64)
    windows = all_windows(s)  # (n, 10, 4)
    fc = np.asarray(forecaster(windows), dtype=np.float64)
    if not (fc.ndim == 2 and fc.shape[1] == len(QUANTILE_OBS_LEVELS)):
        fc = fc.reshape(-1)  # (n,)
    if fc.shape[0] != windows.shape[0]:
        raise ValueError(f"forecaster returned {fc.shape[0]} values for {windows.shape[0]} windows")
    obs = observation(windows, fc)
    if not use_forecast:
        obs[:, FORECAST_COL:] = 0.0  # the forecast and, in the quantiles layout, q10 and q90
    if fc.ndim == 2:
        fc = fc[:, 1]  # the median
    ref = reference_bandwidth(windows)
    actual = np.full(windows.shape[0], np.nan)
    actual[:-1] = np.maximum(s[WINDOW:, BW], 0.0)
    rewards = np.full((windows.shape[0], N_ACTIONS), np.nan)
    rewards[:-1] = reward(ACTION_SHARES[None, :] * ref[:-1, None], actual[:-1, None])  # (n-1, 10)
    return SeriesData(obs=obs, reference=ref, forecast=fc, actual_next=actual, rewards=rewards)


def precompute_series(
    series: Sequence[np.ndarray], forecaster: Forecaster | Sequence[Forecaster], use_forecast: bool = True
) -> list[SeriesData]:
    """:func:`precompute` of every series with at least one decision, all of one observation layout
    (ValueError otherwise: no such series, or mixed layouts); ``forecaster``: one for all series or one
    per series (e.g. each link's profile's calibration)."""
    fcs = list(forecaster) if isinstance(forecaster, Sequence) else [forecaster] * len(series)
    if len(fcs) != len(series):
        raise ValueError(f"need one forecaster per series ({len(series)}), got {len(fcs)}")
    datas = [d for d in (precompute(s, f, use_forecast) for s, f in zip(series, fcs)) if d.n_steps >= 1]
    if not datas:
        raise ValueError("need at least one series with more than 10 rows")
    if len({d.layout for d in datas}) > 1:
        raise ValueError(f"the forecasters give mixed observation layouts: {sorted({d.layout for d in datas})}")
    return datas


class LinkAllocationEnv(gym.Env):
    """Bandwidth allocation on one link; see the module docstring.

    ``series``: list of (T, 4) arrays to draw episodes from (a random series, then a
    random start). ``forecaster``: batched (N, 10, 4) -> (N,) Mbit/s, called once per
    series (or once per generated episode). ``episode_len``: decisions per episode
    (shorter for a series that has fewer). ``use_forecast=False`` zeroes the forecast
    features (for the ablation in docs/policy.md). ``layout``: the observation layout
    (``"point"`` 9 columns, ``"quantiles"`` 11); None = the series' (series mode, from the
    forecaster's output) or ``"point"`` (profile mode). A forecaster whose output does not
    match it raises ValueError.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        series: Sequence[np.ndarray] | None = None,
        forecaster: Forecaster = last_value_forecast,
        episode_len: int = DEFAULT_EPISODE_LEN,
        use_forecast: bool = True,
        *,
        profile: str | None = None,
        seed_range: tuple[int, int] = (0, TRAIN_SEED_LIMIT),
        link_indices: Sequence[int] = (0,),
        layout: str | None = None,
    ) -> None:
        super().__init__()
        if episode_len < 1:
            raise ValueError(f"episode_len must be >= 1, got {episode_len}")
        if (series is None) == (profile is None):
            raise ValueError("give exactly one of series (a list of (T, 4) arrays) or profile")
        self.forecaster = forecaster
        self.episode_len = int(episode_len)
        self.use_forecast = use_forecast
        self.profile = profile
        self.seed_range = (int(seed_range[0]), int(seed_range[1]))
        self.link_indices = tuple(int(i) for i in link_indices)
        self._data: list[SeriesData] = []
        if series is not None:
            if len(series) == 0:
                raise ValueError("series must not be empty")
            self._data = [precompute(s, forecaster, use_forecast) for s in series]
            layout = layout or self._data[0].layout
        self.layout = layout or "point"
        for d in self._data:
            self._check_layout(d)
        dim = obs_dim(self.layout)
        self.observation_space = gym.spaces.Box(low=OBS_LOW[:dim], high=OBS_HIGH[:dim], shape=(dim,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._ep: SeriesData | None = None
        self._start = 0
        self._len = 0
        self._t = 0
        self.episode_seed: int | None = None  # simulator seed of the current episode (profile mode)

    @classmethod
    def from_profile(
        cls,
        profile: str,
        episode_len: int = DEFAULT_EPISODE_LEN,
        forecaster: Forecaster = last_value_forecast,
        use_forecast: bool = True,
        seed_range: tuple[int, int] = (0, TRAIN_SEED_LIMIT),
        link_indices: Sequence[int] = (0,),
        layout: str = "point",
    ) -> LinkAllocationEnv:
        """An environment whose every episode is a fresh simulator series of ``profile``.

        The simulator seed of each episode is drawn from ``self.np_random`` within
        ``seed_range`` (training seeds by default; evaluation uses seeds >= TRAIN_SEED_LIMIT).
        ``layout`` must match the forecaster's output (``"quantiles"`` for (N, 3) quantiles).
        """
        return cls(
            None,
            forecaster,
            episode_len,
            use_forecast,
            profile=profile,
            seed_range=seed_range,
            link_indices=link_indices,
            layout=layout,
        )

    def _check_layout(self, data: SeriesData) -> SeriesData:
        """``data``, after checking that its observations have this env's layout (ValueError otherwise)."""
        if data.layout != self.layout:
            raise ValueError(
                f"the forecaster gives {data.layout!r} observations ({data.obs.shape[1]} columns), "
                f"this env was made for {self.layout!r} ({obs_dim(self.layout)})"
            )
        return data

    # --- gymnasium API ---------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a new episode (Gymnasium API); returns ``(obs, {})``.

        ``obs`` is the (obs_dim(layout),) float32 observation of the episode's first window. The episode is
        a random window range of a given series, or a fresh simulator series in profile mode
        (seed and link drawn from ``self.np_random``).
        """
        super().reset(seed=seed)
        if self.profile is not None:
            self.episode_seed = int(self.np_random.integers(*self.seed_range))
            link = int(self.link_indices[int(self.np_random.integers(len(self.link_indices)))])
            s = simulate_series(self.profile, self.episode_len + WINDOW, self.episode_seed, link_index=link)
            self._ep = self._check_layout(precompute(s, self.forecaster, self.use_forecast))
            self._start = 0
        else:
            self._ep = self._data[int(self.np_random.integers(len(self._data)))]
            self._start = int(self.np_random.integers(0, max(0, self._ep.n_steps - self.episode_len) + 1))
        self._len = min(self.episode_len, self._ep.n_steps)
        self._t = 0
        return self._ep.obs[self._start].copy(), {}

    def step(self, action):
        """Allocate ``(action + 1) * 10`` % of the window's reference bandwidth (Gymnasium API).

        Returns ``(obs, reward, terminated, truncated, info)``: ``obs`` is the next window's
        observation, ``reward`` in [-1, 1] scores the allocation against the next actual
        bandwidth (``ml.policy.reward``), ``terminated`` is always False, ``truncated`` is True at
        the episode's last step; ``info`` holds the allocated, actual, reference and forecast
        Mbit/s and the oracle action and its reward.
        """
        if self._ep is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self._len:
            raise RuntimeError("episode is over: call reset()")
        a = int(action)
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action must be in 0..{N_ACTIONS - 1}, got {action!r}")
        i = self._start + self._t
        ep = self._ep
        r = float(ep.rewards[i, a])
        oracle = int(np.argmax(ep.rewards[i]))
        info = {
            "allocated_mbps": float(ACTION_SHARES[a] * ep.reference[i]),
            "actual_next_mbps": float(ep.actual_next[i]),
            "reference_mbps": float(ep.reference[i]),
            "forecast_mbps": float(ep.forecast[i]),
            "oracle_action": oracle,
            "oracle_reward": float(ep.rewards[i, oracle]),
        }
        self._t += 1
        truncated = self._t >= self._len
        return ep.obs[i + 1].copy(), r, False, truncated, info
