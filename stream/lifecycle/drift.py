"""Concept-drift detection on live forecast accuracy, and the "retrain requested" flag.

Signal, per profile, for every forecast whose actual value has arrived::

    e_model    = min(CLIP, |forecast - actual|          / max(|actual|, FLOOR))
    e_baseline = min(CLIP, |baseline_forecast - actual| / max(|actual|, FLOOR))
    x          = e_model - e_baseline

``x`` is how much worse (in absolute relative error) the model does than the
last-value baseline on the same step. For a quantile forecast (decisions schema v2/v3:
h = 1 p10, p50, p90) both errors are instead :func:`relative_pinballs`, the mean pinball
loss over the quantiles (0.1, 0.5, 0.9), times 2, over ``max(|actual|, FLOOR)``, clipped
at ``CLIP``; the baseline is then the naive probabilistic forecaster (last value widened
by the model's training quantiles, :mod:`stream.lifecycle.live`). Times 2 because twice
the mean pinball loss of quantiles that are all equal to ``f`` is ``|f - actual|``: a
point forecast scores its absolute relative error either way, so both kinds of step
can feed one test with the same ``delta`` and ``threshold``. Differencing against the baseline removes
what is simply a harder period for everyone (a bursty hour raises both errors);
what is left rises when the *model* stopped fitting the traffic. A one-sided
(increase) Page-Hinkley test (``river.drift.PageHinkley``, mode ``up``) watches the
mean of ``x``; ``delta`` is the smallest rise that matters (5 percentage points by
default) and ``threshold`` the evidence needed. Relative errors are clipped at
``CLIP`` (200 %) so one outage (actual ~ 0) cannot trigger a detection alone.

On detection :class:`LiveAccuracy` counts it and calls ``on_drift``; the usual
callback is :meth:`RetrainFlag.request`, which sets the Redis key
``<key_prefix>:retrain_requested`` and/or ``<model_dir>/retrain-requested.json``
that ``bwp retrain`` reads and clears.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.fileio import atomic_write_text

log = logging.getLogger(__name__)

#: Relative errors are clipped here (2 = 200 %).
CLIP = 2.0
#: Smallest |actual| (Mbit/s) a relative error divides by.
FLOOR = 1e-3
FLAG_FILE = "retrain-requested.json"
FLAG_KEY_SUFFIX = "retrain_requested"


def relative_error(forecast: float, actual: float, clip: float = CLIP, floor: float = FLOOR) -> float:
    """``min(clip, |forecast - actual| / max(|actual|, floor))``; NaN/inf inputs give ``clip``."""
    if not (math.isfinite(forecast) and math.isfinite(actual)):
        return clip
    return min(clip, abs(forecast - actual) / max(abs(actual), floor))


def relative_errors(forecast: Any, actual: Any, clip: float = CLIP, floor: float = FLOOR) -> Any:
    """:func:`relative_error` element-wise over arrays (float64 array out)."""
    f = np.asarray(forecast, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.minimum(clip, np.abs(f - a) / np.maximum(np.abs(a), floor))
    return np.where(np.isfinite(f) & np.isfinite(a), e, clip)


#: Quantile levels of the decisions' p10, p50, p90 (what the pinball drift signal averages over).
PINBALL_TAUS = (0.1, 0.5, 0.9)


def pinball_losses(quantiles: Any, actual: Any, taus: Any = PINBALL_TAUS) -> Any:
    """Per step, the mean pinball loss over ``taus`` of quantile forecasts ``quantiles`` (n, Q)
    for outcomes ``actual`` (n,), in the forecast's unit (float64 (n,); NaN where an input is)."""
    q = np.asarray(quantiles, dtype=np.float64).reshape(len(actual), -1)
    y = np.asarray(actual, dtype=np.float64)[:, None]
    t = np.asarray(taus, dtype=np.float64)[None, :]
    d = y - q
    with np.errstate(invalid="ignore"):
        return np.maximum(t * d, (t - 1.0) * d).mean(axis=1)


def relative_pinballs(quantiles: Any, actual: Any, clip: float = CLIP, floor: float = FLOOR) -> Any:
    """``min(clip, 2 * pinball / max(|actual|, floor))`` per step (:func:`pinball_losses` over
    :data:`PINBALL_TAUS`); a non-finite input gives ``clip``, like :func:`relative_errors`.
    All quantiles equal to ``f``: exactly :func:`relative_errors` of ``f``."""
    a = np.asarray(actual, dtype=np.float64)
    p = pinball_losses(quantiles, a)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.minimum(clip, 2.0 * p / np.maximum(np.abs(a), floor))
    return np.where(np.isfinite(e), e, clip)


@dataclass
class DriftEvent:
    """One detection: which profile, after how many observations, and the recent mean signal."""

    profile: str
    n_observed: int
    detections: int
    recent_model_error: float
    recent_baseline_error: float
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def reason(self) -> str:
        """Human-readable reason, stored in the retrain flag."""
        return (
            f"drift on profile {self.profile}: model relative error {self.recent_model_error:.3f} vs "
            f"last-value {self.recent_baseline_error:.3f} (recent mean) after {self.n_observed} observations"
        )

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict (the retrain flag's payload)."""
        return {
            "profile": self.profile,
            "n_observed": self.n_observed,
            "detections": self.detections,
            "recent_model_error": self.recent_model_error,
            "recent_baseline_error": self.recent_baseline_error,
            "at": self.at,
            "reason": self.reason,
        }


class _ProfileState:
    """Page-Hinkley detector plus short-memory error means for one profile."""

    # weight of the newest observation in the reported recent means (about 200 steps of memory)
    _EMA = 0.005

    def __init__(self, delta: float, threshold: float, min_instances: int) -> None:
        from river.drift import PageHinkley  # river: only the drift detector

        self.detector = PageHinkley(min_instances=min_instances, delta=delta, threshold=threshold, mode="up")
        self.n = 0
        self.detections = 0
        self.model_err = math.nan
        self.base_err = math.nan

    def update(self, e_model: float, e_base: float) -> bool:
        self.n += 1
        if math.isnan(self.model_err):
            self.model_err, self.base_err = e_model, e_base
        else:
            self.model_err += self._EMA * (e_model - self.model_err)
            self.base_err += self._EMA * (e_base - self.base_err)
        self.detector.update(e_model - e_base)
        if self.detector.drift_detected:  # river resets the test itself on the next update
            self.detections += 1
            return True
        return False


class LiveAccuracy:
    """Per-profile Page-Hinkley drift detection of the model's error relative to last-value.

    Call :meth:`observe` once per (forecast, actual) pair, when the actual value of
    the forecast step arrives. Not thread-safe; one instance per worker process.
    """

    def __init__(
        self,
        delta: float = 0.05,
        threshold: float = 25.0,
        min_instances: int = 30,
        on_drift: Callable[[DriftEvent], None] | None = None,
    ) -> None:
        if delta < 0 or threshold <= 0 or min_instances < 1:
            raise ValueError(
                f"need delta >= 0, threshold > 0, min_instances >= 1; got {delta}, {threshold}, {min_instances}"
            )
        self.delta = delta
        self.threshold = threshold
        self.min_instances = min_instances
        self.on_drift = on_drift
        self._profiles: dict[str, _ProfileState] = {}
        self.events: list[DriftEvent] = []

    def observe(self, profile: str | None, forecast: float, baseline_forecast: float, actual: float) -> bool:
        """Feed one step; returns True when this observation completes a drift detection."""
        return bool(
            self.observe_errors(
                profile, [relative_error(forecast, actual)], [relative_error(baseline_forecast, actual)]
            )
        )

    def observe_errors(self, profile: str | None, e_model: Any, e_baseline: Any) -> int:
        """Feed the steps of one micro-batch as their relative errors (:func:`relative_errors`
        of the model's and the baseline's forecasts), in order. Returns the detections."""
        key = profile or "unknown"
        st = self._profiles.get(key)
        if st is None:
            st = self._profiles[key] = _ProfileState(self.delta, self.threshold, self.min_instances)
        found = 0
        update = st.update
        for em, eb in zip(
            np.asarray(e_model, dtype=np.float64).tolist(), np.asarray(e_baseline, dtype=np.float64).tolist()
        ):
            if update(em, eb):
                found += 1
                ev = DriftEvent(key, st.n, st.detections, st.model_err, st.base_err)
                self.events.append(ev)
                del self.events[:-100]  # keep the last 100 only
                if self.on_drift is not None:
                    self.on_drift(ev)
        return found

    def detections(self, profile: str | None = None) -> int:
        """Detections so far, for one profile or all together."""
        if profile is not None:
            st = self._profiles.get(profile)
            return st.detections if st else 0
        return sum(st.detections for st in self._profiles.values())

    def stats(self) -> dict[str, dict[str, float]]:
        """Per profile: observations, detections, recent mean relative errors (model, last-value)."""
        return {
            p: {
                "observed": st.n,
                "detections": st.detections,
                "model_error": st.model_err,
                "baseline_error": st.base_err,
            }
            for p, st in self._profiles.items()
        }


class RetrainFlag:
    """The "retrain requested" flag: a Redis key and/or a JSON file in the model dir.

    ``bwp retrain`` reads it (and reports the reason), then clears it after its run.
    Either location may be None. The Redis client is a synchronous ``redis.Redis``.
    """

    def __init__(self, model_dir: Path | str | None = None, redis_client: Any = None, key_prefix: str = "bwp") -> None:
        self.path = Path(model_dir) / FLAG_FILE if model_dir is not None else None
        self.redis = redis_client
        self.key = f"{key_prefix}:{FLAG_KEY_SUFFIX}"

    @classmethod
    def from_settings(cls, settings: Any, use_redis: bool = True, model_dir: Path | str | None = None) -> RetrainFlag:
        """Flag at ``model_dir`` (default ``settings.model_dir``) and (when ``use_redis``) the
        settings' Redis. A Redis Cluster client connects when built: when that fails the
        flag lives in the file only, with a warning."""
        client = None
        if use_redis:
            try:
                client = settings.redis_client(timeout_s=2)
            except Exception as exc:
                log.warning("retrain flag: Redis unreachable (%s); using the file flag only", exc)
        return cls(settings.model_dir if model_dir is None else model_dir, client, settings.key_prefix)

    def request(self, event: DriftEvent | str) -> None:
        """Set the flag (idempotent: a newer request overwrites the reason)."""
        payload = (
            event.to_dict()
            if isinstance(event, DriftEvent)
            else {
                "reason": str(event),
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
        text = json.dumps(payload, sort_keys=True)
        if self.redis is not None:
            self.redis.set(self.key, text)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text)

    __call__ = request  # so a flag can be passed as LiveAccuracy(on_drift=flag)

    def read(self) -> dict[str, Any] | None:
        """The pending request (Redis first, then file), or None."""
        raw = None
        if self.redis is not None:
            try:
                raw = self.redis.get(self.key)
            except Exception:  # Redis down must not stop a retrain run; the file may still say it
                raw = None
        if raw is None and self.path is not None and self.path.is_file():
            raw = self.path.read_text(encoding="utf-8")
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"reason": raw.decode() if isinstance(raw, bytes) else str(raw)}

    def clear(self) -> None:
        """Remove the flag from both places."""
        if self.redis is not None:
            with contextlib.suppress(Exception):  # an unreachable Redis must not block the file flag
                self.redis.delete(self.key)
        if self.path is not None:
            self.path.unlink(missing_ok=True)
