"""The compression hint of a decision: a codec profile and the pure rule that picks a level.

Units (they differ on purpose: each is the unit its source measures in):

* bandwidth: **Mbit/s** (10^6 bits/s), like every bandwidth on the wire;
* compress speed: **MB/s** (10^6 bytes/s of *input* consumed by the compressor, all the
  node's cores together: ``bwp bench compression`` measures one core and multiplies by
  the cores it is told to count, as chunks are compressed in parallel, one per core);
* ratio: compressed size / original size (0 < ratio <= 1; smaller compresses better);
* chunk size: bytes.

The rule (docs/compression.md): moving one chunk of ``size`` bytes at level ``l`` takes the
longer of compressing it and sending its compressed bytes (the two overlap, chunk after chunk)::

    t_l(bw) = max(size / (speed_l * 1e6), size * ratio_l * 8 / (bw * 1e6))   seconds

"none" is level 0 with ratio 1 and infinite speed: ``t_0 = size * 8 / (bw * 1e6)``. The hint
is the level minimising ``t_l``; ties go to the lower level (less CPU for the same time).
``size`` cancels, so the choice depends on the bandwidth only, and is a step function of it:
for levels ``lo < hi`` with ``ratio_hi < ratio_lo``, ``hi`` is strictly better than ``lo``
exactly when ``bw < 8 * speed_hi * ratio_lo`` Mbit/s (compressing at ``hi`` outruns the link
carrying ``lo``'s output). :class:`CompressionProfile` precomputes those thresholds once, so
:func:`choose` is one bisection. A profile is a *ladder*: each level is at most as fast as
the one below and compresses at least as well; on a ladder less bandwidth never selects a
lower level, and infinite bandwidth selects none.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.errors import ConfigError

PROFILE_VERSION = 1
CODEC = "zstd"
ZSTD_LEVELS = range(1, 20)
#: The shipped profile (package data), measured with ``bwp bench compression`` (see its metadata).
DEFAULT_PROFILE_FILE = "compression_profile.default.json"
_PROFILE_KEYS = {"version", "codec", "chunk_bytes", "levels", "measured_on", "dropped"}
_LEVEL_KEYS = {"level", "compress_mb_s", "ratio"}


@dataclass(frozen=True, slots=True)
class Compression:
    """A decision's compression hint: ``codec`` ``"none"`` (``level`` None) or ``"zstd"`` at ``level`` 1..19."""

    codec: str
    level: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``{"codec": "none"}`` or ``{"codec": "zstd", "level": N}``."""
        return {"codec": "none"} if self.level is None else {"codec": self.codec, "level": self.level}

    @classmethod
    def from_dict(cls, obj: Any) -> Compression:
        """Parse the wire form; raises :class:`ValueError` saying what was expected and what came."""
        if isinstance(obj, dict):
            if obj == {"codec": "none"}:
                return NONE
            level = obj.get("level")
            if (
                obj.keys() == {"codec", "level"}
                and obj["codec"] == CODEC
                and type(level) is int
                and level in ZSTD_LEVELS
            ):
                return _ZSTD[level]
        raise ValueError(
            f'compression must be {{"codec": "none"}} or {{"codec": "zstd", "level": 1..19}}, got {obj!r:.80}'
        )


NONE = Compression("none")
_ZSTD = {lv: Compression(CODEC, lv) for lv in ZSTD_LEVELS}


def compression_of(level: int) -> Compression:
    """The (shared, immutable) hint of ``level``: 0 = none, 1..19 = zstd."""
    return NONE if level == 0 else _ZSTD[level]


@dataclass(frozen=True, slots=True)
class LevelProfile:
    """One zstd level as measured: compress speed (MB/s, the node's cores) and ratio (compressed / original)."""

    level: int
    compress_mb_s: float
    ratio: float


@dataclass(frozen=True)
class CompressionProfile:
    """A codec profile (see the module docstring for units); build it with :meth:`from_dict` or :func:`load_profile`."""

    levels: tuple[LevelProfile, ...]
    chunk_bytes: int = 1 << 20
    measured_on: Mapping[str, Any] = field(default_factory=dict)
    dropped: tuple[Mapping[str, Any], ...] = ()
    #: Ascending Mbit/s thresholds and, for each count ``k`` of thresholds above the
    #: bandwidth, the chosen level (0 = none): derived in ``__post_init__``.
    thresholds_mbps: tuple[float, ...] = field(init=False, repr=False)
    level_by_count: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_ladder(self.levels)
        if type(self.chunk_bytes) is not int or self.chunk_bytes < 1:
            raise ConfigError(f"compression profile chunk_bytes must be an integer >= 1, got {self.chunk_bytes!r}")
        thresholds, levels = _step_function(self.levels)
        object.__setattr__(self, "thresholds_mbps", thresholds)
        object.__setattr__(self, "level_by_count", levels)

    def options(self) -> tuple[int, ...]:
        """Every choice of the rule: 0 (none) and the profile's levels."""
        return (0, *(lv.level for lv in self.levels))

    def transfer_time_s(self, level: int, bandwidth_mbps: np.ndarray | float) -> np.ndarray:
        """Seconds to move one chunk at ``level`` (0 = none) over ``bandwidth_mbps`` (the formula above)."""
        bw = np.asarray(bandwidth_mbps, dtype=np.float64)
        with np.errstate(divide="ignore"):
            if level == 0:
                return np.asarray(self.chunk_bytes * 8 / (bw * 1e6))
            lv = next(x for x in self.levels if x.level == level)
            send = self.chunk_bytes * lv.ratio * 8 / (bw * 1e6)
        return np.maximum(self.chunk_bytes / (lv.compress_mb_s * 1e6), send)

    def to_dict(self) -> dict[str, Any]:
        """The profile file's JSON object (version :data:`PROFILE_VERSION`)."""
        return {
            "version": PROFILE_VERSION,
            "codec": CODEC,
            "chunk_bytes": self.chunk_bytes,
            "levels": [{"level": x.level, "compress_mb_s": x.compress_mb_s, "ratio": x.ratio} for x in self.levels],
            "measured_on": dict(self.measured_on),
            "dropped": [dict(d) for d in self.dropped],
        }

    @classmethod
    def from_dict(cls, obj: Any, source: str = "compression profile") -> CompressionProfile:
        """Validate a profile file's JSON object; raises :class:`ConfigError` naming ``source``."""
        if not isinstance(obj, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(obj).__name__}")
        if obj.get("version") != PROFILE_VERSION or obj.get("codec") != CODEC:
            raise ConfigError(f"{source}: expected version {PROFILE_VERSION} and codec {CODEC!r}, "
                              f"got version {obj.get('version')!r:.20} and codec {obj.get('codec')!r:.20}")  # fmt: skip
        missing, extra = {"levels", "chunk_bytes"} - obj.keys(), obj.keys() - _PROFILE_KEYS
        if missing or extra:
            raise ConfigError(f"{source}: missing fields {sorted(missing)}, unexpected fields {sorted(extra)}")
        if not isinstance(obj["levels"], list):
            raise ConfigError(f"{source}: levels must be a list, got {type(obj['levels']).__name__}")
        levels = []
        for i, lv in enumerate(obj["levels"]):
            if not isinstance(lv, dict) or lv.keys() != _LEVEL_KEYS:
                raise ConfigError(f"{source}: levels[{i}] must be an object of exactly {sorted(_LEVEL_KEYS)}, "
                                  f"got {lv!r:.80}")  # fmt: skip
            level, speed, ratio = lv["level"], lv["compress_mb_s"], lv["ratio"]
            if type(level) is not int or level not in ZSTD_LEVELS:
                raise ConfigError(f"{source}: levels[{i}].level must be an integer 1..19, got {level!r:.20}")
            for name, v in (("compress_mb_s", speed), ("ratio", ratio)):
                if type(v) not in (int, float) or not math.isfinite(v) or v <= 0:
                    raise ConfigError(f"{source}: levels[{i}].{name} must be a finite number > 0, got {v!r:.20}")
            levels.append(LevelProfile(level, float(speed), float(ratio)))
        meta, dropped = obj.get("measured_on", {}), obj.get("dropped", [])
        if not isinstance(meta, dict) or not isinstance(dropped, list):
            raise ConfigError(f"{source}: measured_on must be an object and dropped a list")
        try:
            return cls(tuple(levels), obj["chunk_bytes"], meta, tuple(dropped))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _check_ladder(levels: Sequence[LevelProfile]) -> None:
    """Raise unless levels ascend strictly with non-increasing speed and ratio, and ratio <= 1."""
    for i, lv in enumerate(levels):
        if lv.ratio > 1.0:
            raise ConfigError(f"level {lv.level} has ratio {lv.ratio:g} > 1: it expands the data and is never "
                              "better than none (bwp bench compression drops such levels)")  # fmt: skip
        if i and not (lv.level > levels[i - 1].level and lv.compress_mb_s <= levels[i - 1].compress_mb_s
                      and lv.ratio <= levels[i - 1].ratio):  # fmt: skip
            prev = levels[i - 1]
            raise ConfigError(
                f"levels must be a ladder (ascending level, non-increasing compress_mb_s and ratio), got level "
                f"{prev.level} ({prev.compress_mb_s:g} MB/s, ratio {prev.ratio:g}) then level {lv.level} "
                f"({lv.compress_mb_s:g} MB/s, ratio {lv.ratio:g})"
            )


def _step_function(levels: Sequence[LevelProfile]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """The rule as thresholds: ``hi`` beats ``lo`` (ratio_hi < ratio_lo) iff bw < 8 * speed_hi * ratio_lo."""
    ratio = [1.0, *(x.ratio for x in levels)]  # option 0 = none
    names = [0, *(x.level for x in levels)]
    beat: dict[tuple[int, int], float] = {}  # (lo, hi) option indices -> threshold, Mbit/s
    for hi in range(1, len(ratio)):
        for lo in range(hi):
            beat[lo, hi] = 8.0 * levels[hi - 1].compress_mb_s * ratio[lo] if ratio[hi] < ratio[lo] else 0.0
    asc = sorted({t for t in beat.values() if t > 0})
    chosen = []
    for k in range(len(asc) + 1):  # k thresholds lie above the bandwidth: "bw < t" holds for exactly those
        live = set(asc[len(asc) - k :])
        win = 0
        for i in range(1, len(ratio)):  # tournament; the preference is the (total) order of t at this bw
            if beat[win, i] in live:
                win = i
        chosen.append(names[win])
    # On a ladder this is already monotone; the running max keeps it so under float rounding.
    return tuple(asc), tuple(int(v) for v in np.maximum.accumulate(chosen))


def choose(bandwidth_mbps: float, profile: CompressionProfile) -> Compression:
    """The hint for a forecast ``bandwidth_mbps`` (Mbit/s; ``inf`` -> none, 0 -> the smallest ratio)."""
    if math.isnan(bandwidth_mbps):
        raise ValueError("bandwidth_mbps must be a number >= 0 or inf, got nan")
    t = profile.thresholds_mbps
    return compression_of(profile.level_by_count[len(t) - bisect.bisect_right(t, bandwidth_mbps)])


def choose_levels(bandwidth_mbps: np.ndarray, profile: CompressionProfile) -> np.ndarray:
    """:func:`choose` for many bandwidths at once: the level per bandwidth (0 = none), int64."""
    bw = np.asarray(bandwidth_mbps, dtype=np.float64)
    if np.isnan(bw).any():
        raise ValueError("bandwidth_mbps must be numbers >= 0 or inf, got nan")
    t = np.asarray(profile.thresholds_mbps, dtype=np.float64)
    count = len(t) - np.searchsorted(t, bw, side="right")
    return np.asarray(profile.level_by_count, dtype=np.int64)[count]


def load_profile(path: Path | str) -> CompressionProfile:
    """Read and validate a profile file (``bwp bench compression --out``); raises :class:`ConfigError`."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"compression profile {path}: cannot read it as JSON: {exc}") from None
    return CompressionProfile.from_dict(obj, source=f"compression profile {path}")


@functools.cache
def default_profile() -> CompressionProfile:
    """The shipped profile (package data ``stream/core/compression_profile.default.json``), loaded once."""
    text = files("stream.core").joinpath(DEFAULT_PROFILE_FILE).read_text()
    return CompressionProfile.from_dict(json.loads(text), source=f"shipped {DEFAULT_PROFILE_FILE}")


def profile_from(path: Path | str | None) -> CompressionProfile:
    """The profile at ``path`` (``BWP_COMPRESSION_PROFILE``), or the shipped one when ``None``."""
    return default_profile() if path is None else load_profile(path)


def hint_bandwidth(forecast: Sequence[tuple[int, float, float, float]], horizon: int) -> float:
    """The bandwidth the rule reads from a decision's forecast: p50 at ``horizon`` when forecast,
    else the largest horizon's p50 (h=1's when that is all there is); Mbit/s."""
    for h, _, p50, _ in forecast:
        if h == horizon:
            return p50
    return forecast[-1][2]
