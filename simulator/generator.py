"""Synthetic per-link telemetry, vectorised across a fleet of links.

The generative model (equations in ``docs/simulator.md``), per link and step t:

* background utilisation ``u_base = sigmoid(mu + A sin(2 pi (t/P + phi)) + z_t)`` with an
  AR(1) (discretised OU) component ``z_t``;
* bursts ``b_t = b_{t-1} exp(-1/tau_b) + J_t`` (compound Poisson, exponential sizes), so the
  free fraction is ``(1 - u_base) exp(-b_t)``;
* capacity ``C = class * path_factor * degradation``; regime shifts redraw the path
  (route change) or cut the capacity for a while (degradation);
* latency = propagation + M/M/1-like queueing ``s * rho / (1 - rho)``; loss rises above a
  knee near saturation; reliability = EWMA of probe successes.

Every link owns its random streams, derived from ``SeedSequence(seed, spawn_key=(link_index,))``,
so link k's series is the same whatever the fleet size, offset or block size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from simulator.profiles import PROFILE_NAMES, LinkProfile, profile_for_link
from stream.core.errors import ConfigError
from stream.core.records import FEATURES, Telemetry

#: Uniform draws per link and step (layout below); probes use the last MAX_PROBES.
_U_ROUTE, _U_PATH, _U_PROP, _U_DEG, _U_DUR, _U_DFAC, _U_BURST, _U_BSIZE, _U_PROBE = range(9)
MAX_PROBES = 8
_NU = _U_PROBE + MAX_PROBES
#: Normal draws per link and step.
_Z_LOAD, _Z_BW, _Z_LAT, _Z_LOSS = range(4)
_NZ = 4
#: Bytes of pre-drawn noise kept per fleet (bounds block size for very large fleets).
_BLOCK_BYTES = 64 * 2**20
_MAX_BLOCK = 256
#: Highest utilisation used in the queueing formula (the buffer cap binds before it).
_RHO_MAX = 0.999

__all__ = ["FleetSimulator", "simulate_series", "generate_records", "link_id_for", "FEATURES"]


def link_id_for(profile: str, link_index: int) -> str:
    """The link id of link ``link_index`` under ``profile``: ``dc-000042`` / ``in-000043``.

    The seed is not part of the id: one simulator never repeats an id; run parallel
    simulators with disjoint ``link_offset`` ranges to keep their ids apart.
    """
    return f"{profile_for_link(profile, link_index).id_prefix}-{link_index:06d}"


def _per_link(profiles: list[LinkProfile], attr: str) -> np.ndarray:
    return np.array([getattr(p, attr) for p in profiles], dtype=np.float64)


def _check_args(profile: str, links: int, seed: int, step_ms: int, link_offset: int) -> None:
    """Raise :class:`ConfigError` for an unknown profile or an out-of-range fleet argument."""
    if profile not in PROFILE_NAMES:
        raise ConfigError(f"profile must be one of {PROFILE_NAMES}, got {profile!r}")
    if links < 1:
        raise ConfigError(f"links must be >= 1, got {links}")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if step_ms < 1:
        raise ConfigError(f"step_ms must be >= 1, got {step_ms}")
    if link_offset < 0 or link_offset + links > 1_000_000:
        raise ConfigError(f"link indices must lie in 0..999999, got {link_offset}..{link_offset + links - 1}")


class FleetSimulator:
    """Synthetic telemetry for ``links`` links, one vectorised step at a time.

    ``step()`` returns the next (links, 4) state array in :data:`FEATURES` order;
    ``records()`` the same step as :class:`Telemetry`; ``payloads()`` as Kafka
    (key, value) bytes. Timestamps are ``start_ms + step * step_ms`` (``start_ms``
    defaults to the wall clock at construction, so pass it for reproducible files).
    ``link_offset`` numbers links from ``link_offset`` on (for sharding a fleet over
    processes); link k is identical whatever the offset it is reached from.
    ``route_groups`` K > 0 puts link k into route group ``rg-<k mod K>`` (round robin).
    """

    def __init__(
        self,
        profile: str,
        links: int,
        seed: int,
        step_ms: int = 1000,
        start_ms: int | None = None,
        *,
        link_offset: int = 0,
        route_groups: int = 0,
    ) -> None:
        _check_args(profile, links, seed, step_ms, link_offset)
        if route_groups < 0:
            raise ConfigError(f"route_groups must be >= 0, got {route_groups}")
        self.profile = profile
        self.n = links
        self.seed = seed
        self.step_ms = step_ms
        self.start_ms = int(time.time() * 1000) if start_ms is None else int(start_ms)
        self.step_index = 0
        indices = range(link_offset, link_offset + links)
        profs = [profile_for_link(profile, k) for k in indices]
        for p in profs:
            if not 1 <= p.probes_per_step <= MAX_PROBES:
                raise ConfigError(f"profile {p.name}: probes_per_step must be 1..{MAX_PROBES}")
        #: Link ids, in column order.
        self.link_ids: list[str] = [f"{p.id_prefix}-{k:06d}" for p, k in zip(profs, indices)]
        #: Base profile name of every link (``datacenter`` / ``internet``).
        self.profiles: list[str] = [p.name for p in profs]
        #: Route group of every link: ``rg-<index mod route_groups>`` (round robin), or None for 0 groups.
        self.route_groups: list[str | None] = [f"rg-{k % route_groups}" if route_groups else None for k in indices]

        self._init_parameters(profs)
        static_u, static_z = self._init_streams(seed, indices)
        self._init_state(profs, static_u, static_z)
        self._init_buffers()

    def _init_parameters(self, profs: list[LinkProfile]) -> None:
        """Per-link parameter vectors (links,) from the profiles: mixed fleets need per-link values."""
        g = lambda attr: _per_link(profs, attr)  # noqa: E731
        self._path_lo, self._path_hi = (np.array([p.path_factor_range[i] for p in profs]) for i in (0, 1))
        self._lprop_lo, self._lprop_hi = (np.log(np.array([p.prop_latency_ms_range[i] for p in profs])) for i in (0, 1))
        self._dfac_lo, self._dfac_hi = (np.array([p.degradation_factor_range[i] for p in profs]) for i in (0, 1))
        self._qscale = g("queue_scale_ms")
        self._qcap = g("queue_cap_ms")
        self._lat_sigma = g("latency_jitter_sigma")
        self._amp = g("daily_amplitude")
        self._period = g("daily_period_steps")
        self._ar = np.exp(-1.0 / g("load_tau_steps"))
        self._ar_innov = g("load_sigma") * np.sqrt(1.0 - self._ar**2)
        self._burst_rate = g("burst_rate")
        self._burst_size = g("burst_mean_size")
        self._burst_decay = np.exp(-1.0 / g("burst_tau_steps"))
        self._bw_sigma = g("bandwidth_noise_sigma")
        self._loss_sigma = g("loss_noise_sigma")
        self._loss_sat = g("loss_sat")
        self._loss_knee = g("loss_knee")
        self._loss_power = g("loss_power")
        self._probe_packets = g("probe_packets")
        self._alpha = g("reliability_alpha")
        self._route_rate = g("route_change_rate")
        self._deg_rate = g("degradation_rate")
        self._deg_mean = g("degradation_mean_steps")
        self._deg_loss = g("degradation_loss")
        # (MAX_PROBES, links): 1 where a probe slot is used by the link's profile.
        k = np.array([p.probes_per_step for p in profs])
        self._probe_mask = (np.arange(MAX_PROBES)[:, None] < k[None, :]).astype(np.float64)
        self._probe_count = k.astype(np.float64)

    def _init_streams(self, seed: int, indices: range) -> tuple[np.ndarray, np.ndarray]:
        """Per-link random streams; returns the static draws, uniform (links, 6) and normal (links, 2)."""
        # Per link, SeedSequence(seed, spawn_key=(k,)) -> static / uniform / normal.
        self._u_rngs: list[np.random.Generator] = []
        self._z_rngs: list[np.random.Generator] = []
        static_u = np.empty((self.n, 6))
        static_z = np.empty((self.n, 2))
        for i, k_ in enumerate(indices):
            s_static, s_u, s_z = np.random.SeedSequence(seed, spawn_key=(k_,)).spawn(3)
            r = np.random.default_rng(s_static)
            static_u[i] = r.random(6)
            static_z[i] = r.standard_normal(2)
            self._u_rngs.append(np.random.default_rng(s_u))
            self._z_rngs.append(np.random.default_rng(s_z))
        return static_u, static_z

    def _init_state(self, profs: list[LinkProfile], static_u: np.ndarray, static_z: np.ndarray) -> None:
        """Static per-link state (capacity class, path, RTT, load mean, loss floor) and the initial dynamic state."""
        g = lambda attr: _per_link(profs, attr)  # noqa: E731
        n_classes = np.array([len(p.capacity_classes_mbps) for p in profs])
        cls_idx = np.minimum((static_u[:, 0] * n_classes).astype(int), n_classes - 1)
        self.class_capacity_mbps = np.array([p.capacity_classes_mbps[c] for p, c in zip(profs, cls_idx)])
        self._path = self._path_lo + (self._path_hi - self._path_lo) * static_u[:, 1]
        self._prop = np.exp(self._lprop_lo + (self._lprop_hi - self._lprop_lo) * static_u[:, 2])
        mean = g("load_mean")
        self._mu = np.log(mean / (1 - mean)) + g("load_mean_sigma") * static_z[:, 0]
        self._phase = static_u[:, 3]
        lf_lo, lf_hi = (np.log(np.array([p.loss_floor_range[i] for p in profs])) for i in (0, 1))
        self._loss_floor = np.exp(lf_lo + (lf_hi - lf_lo) * static_u[:, 4])
        # Dynamic state; z starts in its stationary distribution so there is no warm-up transient.
        self._z = g("load_sigma") * static_z[:, 1]
        self._b = np.zeros(self.n)
        self._deg_left = np.zeros(self.n, dtype=np.int64)
        self._deg_factor = np.ones(self.n)
        self._rel: np.ndarray | None = None

    def _init_buffers(self) -> None:
        """Empty pre-drawn noise blocks and the JSON payload templates."""
        links = self.n
        # Pre-drawn noise blocks: (B, _NU, links) and (B, _NZ, links).
        self._block = int(max(1, min(_MAX_BLOCK, _BLOCK_BYTES // (8 * (_NU + _NZ) * links))))
        self._bpos = self._block
        self._U = np.empty((self._block, _NU, links))
        self._Z = np.empty((self._block, _NZ, links))

        # JSON payload templates (same bytes as Telemetry.to_bytes(), see payloads()).
        self._json_head = [f'{{"link_id":"{lid}","seq":' for lid in self.link_ids]
        self._json_tail = [
            f',"profile":"{p}"' + (f',"route_group":"{g}"}}' if g else "}")
            for p, g in zip(self.profiles, self.route_groups)
        ]
        self._keys = [lid.encode() for lid in self.link_ids]

    # --------------------------------------------------------------------------------
    @property
    def links(self) -> int:
        """Number of links in the fleet."""
        return self.n

    def capacity_mbps(self) -> np.ndarray:
        """Current effective capacity per link (class x path factor x degradation), (links,)."""
        return self.class_capacity_mbps * self._path * np.where(self._deg_left > 0, self._deg_factor, 1.0)

    def _refill(self) -> None:
        b = self._block
        for i, (ru, rz) in enumerate(zip(self._u_rngs, self._z_rngs)):
            self._U[:, :, i] = ru.random((b, _NU))
            self._Z[:, :, i] = rz.standard_normal((b, _NZ))
        self._bpos = 0

    def step(self) -> np.ndarray:
        """Advance one step; the new states, (links, 4) float64 in FEATURES order."""
        if self._bpos >= self._block:
            self._refill()
        U = self._U[self._bpos]  # (_NU, links)
        Z = self._Z[self._bpos]  # (_NZ, links)
        self._bpos += 1
        t = self.step_index
        self.step_index += 1

        # Regime shifts: route change redraws path factor and propagation RTT.
        route = U[_U_ROUTE] < self._route_rate
        if route.any():
            self._path = np.where(route, self._path_lo + (self._path_hi - self._path_lo) * U[_U_PATH], self._path)
            new_prop = np.exp(self._lprop_lo + (self._lprop_hi - self._lprop_lo) * U[_U_PROP])
            self._prop = np.where(route, new_prop, self._prop)
        start = (self._deg_left == 0) & (U[_U_DEG] < self._deg_rate)
        if start.any():
            dur = np.ceil(-np.log1p(-U[_U_DUR]) * self._deg_mean).astype(np.int64)
            self._deg_left = np.where(start, np.maximum(dur, 1), self._deg_left)
            new_fac = self._dfac_lo + (self._dfac_hi - self._dfac_lo) * U[_U_DFAC]
            self._deg_factor = np.where(start, new_fac, self._deg_factor)
        degraded = self._deg_left > 0
        self._deg_left -= degraded

        # Background load in logit space: mean + daily cycle + AR(1).
        self._z = self._ar * self._z + self._ar_innov * Z[_Z_LOAD]
        x = self._mu + self._amp * np.sin(2 * np.pi * (t / self._period + self._phase)) + self._z
        free_base = 1.0 / (1.0 + np.exp(x))  # 1 - sigmoid(x)
        # Bursts: exponential decay plus a jump with probability burst_rate.
        jump = (U[_U_BURST] < self._burst_rate) * (-np.log1p(-U[_U_BSIZE])) * self._burst_size
        self._b = self._b * self._burst_decay + jump
        free = free_base * np.exp(-self._b)
        util = 1.0 - free

        cap = self.class_capacity_mbps * self._path * np.where(degraded, self._deg_factor, 1.0)
        # Probe estimate of the free capacity, never above the capacity itself.
        bw = np.minimum(cap * free * np.exp(self._bw_sigma * Z[_Z_BW]), cap)

        rho = np.minimum(util, _RHO_MAX)
        queue = np.minimum(self._qscale * rho / (1.0 - rho), self._qcap)
        lat = (self._prop + queue) * np.exp(self._lat_sigma * Z[_Z_LAT])

        over = np.maximum(util - self._loss_knee, 0.0) / (1.0 - self._loss_knee)
        loss_true = np.minimum(
            self._loss_floor + self._loss_sat * over**self._loss_power + degraded * self._deg_loss, 1.0
        )
        loss = np.minimum(loss_true * np.exp(self._loss_sigma * Z[_Z_LOSS]), 1.0)

        # Reliability: EWMA of the share of probes (of probe_packets packets each) that got through.
        fail = 1.0 - (1.0 - loss_true) ** self._probe_packets
        ok = ((U[_U_PROBE:] >= fail) * self._probe_mask).sum(axis=0) / self._probe_count
        if self._rel is None:
            self._rel = 1.0 - fail  # start at the expected value: no warm-up transient
        self._rel = (1.0 - self._alpha) * self._rel + self._alpha * ok

        out = np.empty((self.n, 4))  # (links, 4)
        # Rounded to probe precision (0.1 us, 1 kbit/s, 1e-7): shorter records, same information.
        out[:, 0] = np.round(lat, 4)
        out[:, 1] = np.round(bw, 3)
        out[:, 2] = np.round(loss, 7)
        out[:, 3] = np.round(np.clip(self._rel, 0.0, 1.0), 7)
        return out

    def _ts(self, t: int) -> int:
        return self.start_ms + t * self.step_ms

    def records(self) -> list[Telemetry]:
        """Advance one step; the new states as :class:`Telemetry`, in link order."""
        t = self.step_index
        arr = self.step()
        ts = self._ts(t)
        return [
            Telemetry(lid, t, ts, lat, bw, loss, rel, prof, route_group=g)
            for lid, prof, g, (lat, bw, loss, rel) in zip(self.link_ids, self.profiles, self.route_groups, arr.tolist())
        ]

    def payloads(self) -> list[tuple[bytes, bytes]]:
        """Advance one step; (key, value) pairs for Kafka, value == ``Telemetry.to_bytes()``.

        Formats the JSON directly (about 5x faster than building records), so publishing
        is not bound by serialisation.
        """
        t = self.step_index
        arr = self.step()
        mid = f',"ts_ms":{self._ts(t)},"latency_ms":'
        return [
            (
                key,
                f'{head}{t}{mid}{lat!r},"bandwidth_mbps":{bw!r},"packet_loss":{loss!r},'
                f'"reliability":{rel!r}{tail}'.encode(),
            )
            for key, head, tail, (lat, bw, loss, rel) in zip(self._keys, self._json_head, self._json_tail, arr.tolist())
        ]


def simulate_series(profile: str, steps: int, seed: int, link_index: int = 0) -> np.ndarray:
    """One link's series, (steps, 4) in FEATURES order; equal to that link's column of any
    :class:`FleetSimulator` with the same profile and seed."""
    sim = FleetSimulator(profile, 1, seed, start_ms=0, link_offset=link_index)
    out = np.empty((steps, 4))
    for i in range(steps):
        out[i] = sim.step()[0]
    return out


def generate_records(
    profile: str,
    links: int,
    steps: int,
    seed: int,
    step_ms: int = 1000,
    start_ms: int | None = None,
) -> Iterator[Telemetry]:
    """Records of ``steps`` steps, step-major (all links of step 0, then step 1, ...)."""
    sim = FleetSimulator(profile, links, seed, step_ms=step_ms, start_ms=start_ms)
    for _ in range(steps):
        yield from sim.records()
