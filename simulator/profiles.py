"""Link profiles of the synthetic telemetry generator.

One frozen dataclass instance per profile holds every parameter of the generative
model described in ``docs/simulator.md``. All time constants are in *steps*
(one step = ``step_ms`` of simulated time, 1 s by default), so changing ``step_ms``
changes timestamps only, never the dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """Every parameter of one link class. Units: Mbit/s, ms, steps, probabilities."""

    name: str
    #: Short link-id prefix, e.g. ``dc`` -> ``dc-000042``.
    id_prefix: str

    # --- capacity -----------------------------------------------------------------
    #: Nominal interface rates (Mbit/s); each link draws one uniformly.
    capacity_classes_mbps: tuple[float, ...]
    #: The route's bottleneck fraction of the nominal rate, U(lo, hi); redrawn on a route change.
    path_factor_range: tuple[float, float]

    # --- latency ------------------------------------------------------------------
    #: Base propagation RTT (ms), log-uniform; redrawn on a route change.
    prop_latency_ms_range: tuple[float, float]
    #: Queueing delay scale (ms): delay = scale * rho / (1 - rho) (M/M/1 shape).
    queue_scale_ms: float
    #: Buffer size as the largest queueing delay (ms).
    queue_cap_ms: float
    #: Multiplicative log-normal jitter of the measured latency.
    latency_jitter_sigma: float

    # --- load (background utilisation, logit space) ---------------------------------
    #: Mean utilisation per link: logit(mean) ~ N(logit(load_mean), load_mean_sigma^2).
    load_mean: float
    load_mean_sigma: float
    #: Amplitude (logit units) of the daily cycle.
    daily_amplitude: float
    #: Length of one "day" in steps (3600: one simulated hour per cycle, visible in short runs).
    daily_period_steps: int
    #: Mean-reversion time (steps) of the AR(1)/OU load component: rho = exp(-1/tau).
    load_tau_steps: float
    #: Stationary standard deviation (logit units) of the AR(1) load component.
    load_sigma: float

    # --- bursts (compound Poisson cross-traffic with exponential decay) ---------------
    #: Burst arrival probability per step (Bernoulli approximation of a Poisson process).
    burst_rate: float
    #: Mean burst size (units of -log of the free fraction; Exp distributed).
    burst_mean_size: float
    #: Decay time of a burst (steps).
    burst_tau_steps: float

    # --- measurement ----------------------------------------------------------------
    #: Log-normal noise of the bandwidth probe.
    bandwidth_noise_sigma: float
    #: Log-normal noise of the measured loss ratio.
    loss_noise_sigma: float

    # --- loss -----------------------------------------------------------------------
    #: Floor loss ratio, log-uniform per link.
    loss_floor_range: tuple[float, float]
    #: Loss added at full saturation: loss_sat * ((u - knee)/(1 - knee))^loss_power above the knee.
    loss_sat: float
    loss_knee: float
    loss_power: float

    # --- reliability (EWMA of probe successes) ----------------------------------------
    #: Probes sent per step; each of ``probe_packets`` packets, failing if any is lost.
    probes_per_step: int
    probe_packets: int
    #: EWMA weight of the newest step's success ratio (about a 1/alpha-step window).
    reliability_alpha: float

    # --- regime shifts ----------------------------------------------------------------
    #: Route change probability per step (new path factor and propagation RTT).
    route_change_rate: float
    #: Degradation onset probability per step.
    degradation_rate: float
    #: Mean degradation length (steps, geometric).
    degradation_mean_steps: float
    #: Capacity multiplier while degraded, U(lo, hi).
    degradation_factor_range: tuple[float, float]
    #: Extra loss ratio while degraded.
    degradation_loss: float


DATACENTER = LinkProfile(
    name="datacenter",
    id_prefix="dc",
    capacity_classes_mbps=(10_000.0, 25_000.0, 40_000.0, 100_000.0),
    path_factor_range=(0.9, 1.0),
    prop_latency_ms_range=(0.05, 0.5),
    queue_scale_ms=0.01,
    queue_cap_ms=2.0,
    latency_jitter_sigma=0.05,
    load_mean=0.35,
    load_mean_sigma=0.5,
    daily_amplitude=0.6,
    daily_period_steps=3600,
    load_tau_steps=600.0,
    load_sigma=0.5,
    burst_rate=0.02,
    burst_mean_size=0.2,
    burst_tau_steps=6.0,
    bandwidth_noise_sigma=0.03,
    loss_noise_sigma=0.2,
    loss_floor_range=(1e-7, 1e-5),
    loss_sat=0.02,
    loss_knee=0.85,
    loss_power=3.0,
    probes_per_step=4,
    probe_packets=5,
    reliability_alpha=0.05,
    route_change_rate=1 / 20_000,
    degradation_rate=1 / 10_000,
    degradation_mean_steps=120.0,
    degradation_factor_range=(0.3, 0.7),
    degradation_loss=0.002,
)

INTERNET = LinkProfile(
    name="internet",
    id_prefix="in",
    capacity_classes_mbps=(10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0),
    path_factor_range=(0.3, 1.0),
    prop_latency_ms_range=(5.0, 150.0),
    queue_scale_ms=1.0,
    queue_cap_ms=400.0,
    latency_jitter_sigma=0.1,
    load_mean=0.45,
    load_mean_sigma=0.7,
    daily_amplitude=1.0,
    daily_period_steps=3600,
    load_tau_steps=300.0,
    load_sigma=0.8,
    burst_rate=0.03,
    burst_mean_size=0.4,
    burst_tau_steps=10.0,
    bandwidth_noise_sigma=0.1,
    loss_noise_sigma=0.3,
    loss_floor_range=(1e-4, 2e-3),
    loss_sat=0.1,
    loss_knee=0.75,
    loss_power=2.0,
    probes_per_step=4,
    probe_packets=5,
    reliability_alpha=0.05,
    route_change_rate=1 / 1_500,
    degradation_rate=1 / 2_000,
    degradation_mean_steps=60.0,
    degradation_factor_range=(0.1, 0.5),
    degradation_loss=0.02,
)

#: Base profiles by name.
BASE_PROFILES: dict[str, LinkProfile] = {p.name: p for p in (DATACENTER, INTERNET)}
#: Every name ``FleetSimulator`` accepts: the base profiles and ``mixed``.
PROFILE_NAMES: tuple[str, ...] = (*BASE_PROFILES, "mixed")


def profile_for_link(profile: str, link_index: int) -> LinkProfile:
    """The base profile of link ``link_index``: ``mixed`` = even datacenter, odd internet."""
    if profile == "mixed":
        return DATACENTER if link_index % 2 == 0 else INTERNET
    try:
        return BASE_PROFILES[profile]
    except KeyError:
        raise ConfigError(f"profile must be one of {PROFILE_NAMES}, got {profile!r}") from None
