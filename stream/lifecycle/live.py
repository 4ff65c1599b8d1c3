"""Live forecast accuracy in the running worker: model vs last value, per profile.

The worker keeps each link's last forecast (the decision's ``predicted_bandwidth_mbps``)
and scores it when the link's next state (``seq + 1``) arrives, next to the last-value
forecast of the same step (the bandwidth of the state the decision was made on). Both
errors go to Prometheus histograms labelled only by predictor and profile (never per
link), and the pair feeds :class:`stream.lifecycle.drift.LiveAccuracy` (Page-Hinkley on the model's
relative error minus last-value's); a detection counts in ``bwp_drift_detections_total``
and sets the "retrain requested" flag in Redis through :class:`stream.lifecycle.drift.RetrainFlag`.

For v2/v3 decisions (h = 1 p10, p50, p90 in ``decision.forecast[0]``) the quantiles are
scored too: ``bwp_live_quantile_below_total`` over ``bwp_live_quantile_scored_total`` is the
live coverage per profile and quantile (nominal: 0.1, 0.5, 0.9), ``bwp_live_pinball_mbps``
the mean pinball loss of the served quantiles (``predictor="served"``) and of the naive
probabilistic forecaster (``"last_value"``), and **drift watches the pinball loss** of these
steps instead of the point error (:func:`stream.lifecycle.drift.relative_pinballs`, served
minus naive). The naive forecaster is the last value widened by the model's *training*
log-ratio quantiles of last value at h = 1 (``metadata["forecast"]["naive"]``, as
:mod:`ml.forecast.naive` fits and serves them, per profile or ``"*"``)::

    q_tau = (last + e) * exp(offset_tau) - e,    e = 0.01 * last + 1e-6

(:mod:`ml.forecast.naive` takes ``e`` from the window's mean bandwidth; the scorer has only the
last state, so its level stands in for the mean.) The widening is looked up by each decision's
``model_version``: :meth:`LiveScorer.set_model` registers a version's metadata (at start, and
on every hot-reload swap before the new model serves: :func:`stream.lifecycle.reload.attach_reloader`
``on_swap``), so the decisions of the old and the new model are each scored against their own
naive forecaster. A version with no such metadata (a point model, a v1 artefact, a test stand-in,
a version never registered) is scored against the degenerate naive forecaster: all three
quantiles = the last value.

Memory is bounded: at most ``max_links`` pending forecasts, least recently updated link
evicted first. Pending forecasts live in this process only, so after a rebalance (or a
restart) the first state of a link that moved here is not scored: its forecast was made
by another worker. A gap in seq drops the pending forecast (no actual for that step); a
redelivered state or decision (seq not above the link's newest) is never scored twice.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ml.forecast.naive import NaiveQuantiles
from stream.lifecycle.drift import (
    CLIP,
    FLOOR,
    PINBALL_TAUS,
    DriftEvent,
    LiveAccuracy,
    RetrainFlag,
    pinball_losses,
    relative_errors,
    relative_pinballs,
)
from stream.metrics.worker import WorkerMetrics, observe_many

log = logging.getLogger("bwp.live")

#: Pending forecasts kept (one per link); a fleet larger than this loses scores for the
#: least recently seen links, never memory.
MAX_LINKS = 200_000
#: Quantile labels of the decisions schema v2's p10, p50, p90.
QUANTILE_LABELS = ("0.1", "0.5", "0.9")
#: Model versions whose naive widening is kept (each reload registers one more). A decision takes
#: its factors when it is made, so only a decision of a version already dropped here (not the one
#: serving: it is the newest) would get the degenerate naive forecaster.
MAX_VERSIONS = 8
#: exp(offset) of the degenerate naive forecaster: all three quantiles = the last value.
NO_WIDENING = (1.0, 1.0, 1.0)
#: ``e`` of :mod:`ml.forecast.naive`'s ratio space (``ml.forecast.features``): 1 % of the level plus 1e-6.
_REL_EPS, _ABS_EPS = 0.01, 1e-6

#: profile group (or ``"*"``) -> exp of the h = 1 last-value offsets at 0.1, 0.5, 0.9
Widening = dict[str, tuple[float, float, float]]


def naive_widening(metadata: Mapping[str, Any] | None) -> Widening | None:
    """The h = 1 widening factors of the naive last-value forecaster a quantile model's metadata
    holds (``metadata["forecast"]["naive"]``, :class:`ml.forecast.naive.NaiveQuantiles`), per
    offset group, interpolated to 0.1, 0.5, 0.9 when the model has other levels. None when the
    metadata has none (point model, v1 artefact) or no h = 1 horizon, or they are malformed."""
    try:
        naive = NaiveQuantiles.from_json(metadata["forecast"]["naive"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if 1 not in naive.horizons:
        return None
    k = naive.horizons.index(1)
    out: Widening = {}
    for group, per in naive.offsets.items():
        off = np.interp(PINBALL_TAUS, naive.quantiles, per["last_value"][k])
        if not np.all(np.isfinite(off)):
            return None
        f = np.exp(off)
        out[group] = (float(f[0]), float(f[1]), float(f[2]))
    return out


def naive_quantiles(last_value: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(n,) last values and (n, 3) widening factors -> (n, 3) naive quantiles, Mbit/s (>= 0)."""
    lv = np.maximum(np.asarray(last_value, dtype=np.float64), 0.0)[:, None]
    e = _REL_EPS * lv + _ABS_EPS
    return np.maximum((lv + e) * np.asarray(factors, dtype=np.float64) - e, 0.0)


class LiveScorer:
    """Pairs forecasts with the next state and exports the errors (see the module docstring).

    Call :meth:`update` with every micro-batch's valid records (batch order) and its
    decisions, after the decisions were published. Not thread-safe: one per worker,
    called from the event loop (it is also a ``PipelineCore`` observer: ``scorer(records, out)``).
    Register each model version that decides with :meth:`set_model` (its naive widening).
    """

    def __init__(
        self,
        metrics: WorkerMetrics,
        live: LiveAccuracy | None = None,
        max_links: int = MAX_LINKS,
        floor: float = FLOOR,
        clip: float = CLIP,
    ) -> None:
        if max_links < 1:
            raise ValueError(f"max_links must be >= 1, got {max_links}")
        self.metrics = metrics
        self.live = live if live is not None else LiveAccuracy()
        self.max_links = max_links
        self.floor = floor
        self.clip = clip
        # link -> [newest seq seen with a decision, profile, forecast, last value, scored?,
        #          h=1 (p10, p50, p90, widening factors x 3) or None]
        self._pending: OrderedDict[str, list[Any]] = OrderedDict()
        self.scored = 0
        self.evicted = 0
        self._hist: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._widening: OrderedDict[str, Widening | None] = OrderedDict()  # model version -> widening
        self._unknown: set[str] = set()  # versions warned about (decisions of an unregistered version)

    def set_model(self, version: str, metadata: Mapping[str, Any] | None) -> None:
        """Register the naive widening of ``version`` (from its metadata; None or none in it:
        the degenerate naive forecaster), for the decisions that carry that ``model_version``."""
        self._widening[version] = naive_widening(metadata)
        self._widening.move_to_end(version)
        while len(self._widening) > MAX_VERSIONS:
            self._widening.popitem(last=False)

    def register(self, predictor: Any) -> None:
        """:meth:`set_model` of a loaded predictor (``version``, ``metadata``); the reloader's ``on_swap``."""
        self.set_model(str(predictor.version), getattr(predictor, "metadata", None))

    def _factors(self, version: str, profile: str) -> tuple[float, float, float]:
        """The widening factors of a decision of ``version`` on ``profile``."""
        if version not in self._widening:
            if version not in self._unknown and len(self._unknown) < MAX_VERSIONS:
                self._unknown.add(version)
                log.warning("live accuracy: model version %s was never registered; its quantiles are scored "
                            "against the plain last value", version)  # fmt: skip
            return NO_WIDENING
        table = self._widening[version]
        if table is None:
            return NO_WIDENING
        return table.get(profile) or table.get("*") or NO_WIDENING

    def _children(self, predictor: str, profile: str) -> tuple[Any, Any]:
        key = (predictor, profile)
        h = self._hist.get(key)
        if h is None:
            m = self.metrics
            h = self._hist[key] = (
                m.live_abs_error.labels(predictor, profile),
                m.live_rel_error.labels(predictor, profile),
            )
        return h

    def _score(
        self, profile: str, forecast: np.ndarray, last_value: np.ndarray, actual: np.ndarray, q: list[Any]
    ) -> None:
        """Score one profile's (forecast, last value, actual, h=1 quantiles or None) steps of a micro-batch, in order."""
        e_model = relative_errors(forecast, actual, self.clip, self.floor)
        e_last = relative_errors(last_value, actual, self.clip, self.floor)
        for name, f, e in (("lstm", forecast, e_model), ("last_value", last_value, e_last)):
            abs_h, rel_h = self._children(name, profile)
            observe_many(abs_h, np.abs(f - actual))
            observe_many(rel_h, e)
        self.scored += len(actual)
        rows = [i for i, x in enumerate(q) if x is not None]
        if rows:
            # quantile steps: drift watches the served quantiles' pinball against the naive forecaster's
            idx = np.array(rows)
            qf = np.array([q[i] for i in rows], dtype=np.float64)  # (k, 6)
            y, served = actual[idx], qf[:, :3]
            naive = naive_quantiles(last_value[idx], qf[:, 3:])
            m = self.metrics
            observe_many(m.live_pinball.labels("served", profile), pinball_losses(served, y))
            observe_many(m.live_pinball.labels("last_value", profile), pinball_losses(naive, y))
            e_model[idx] = relative_pinballs(served, y, self.clip, self.floor)
            e_last[idx] = relative_pinballs(naive, y, self.clip, self.floor)
            self._coverage(profile, served, y)
        found = self.live.observe_errors(profile, e_model, e_last)
        if found:
            self.metrics.drift_detections.labels(profile).inc(found)

    def update(self, records: Sequence[Any], decisions: Sequence[Any]) -> None:
        """Score pending forecasts whose next state is in ``records``; remember the new ones."""
        dec = {(d.link_id, d.seq): d for d in decisions} if decisions else {}
        pending = self._pending
        # profile -> ([forecast], [last value], [actual], [h=1 quantiles + factors or None]) of the steps scored here
        steps: dict[str, tuple[list[float], list[float], list[float], list[Any]]] = {}
        for r in records:
            lid = r.link_id
            p = pending.get(lid)
            if p is not None and not p[4] and r.seq > p[0]:
                p[4] = True  # consumed: a gap (seq > newest + 1) has no actual for the forecast step
                if r.seq == p[0] + 1:
                    st = steps.get(p[1])
                    if st is None:
                        st = steps[p[1]] = ([], [], [], [])
                    st[0].append(p[2])
                    st[1].append(p[3])
                    st[2].append(r.bandwidth_mbps)
                    st[3].append(p[5])
            if not dec:
                continue
            d = dec.pop((lid, r.seq), None)
            if d is None or (p is not None and d.seq <= p[0]):
                continue  # no decision, or a redelivered one: its step was handled already
            profile = d.profile or "unknown"
            fc = getattr(d, "forecast", None)  # v2: ((h, p10, p50, p90), ...) sorted by h, h = 1 first
            q1 = (*fc[0][1:], *self._factors(d.model_version, profile)) if fc and fc[0][0] == 1 else None
            pending[lid] = [d.seq, profile, d.predicted_bandwidth_mbps, r.bandwidth_mbps, False, q1]
            pending.move_to_end(lid)
            if len(pending) > self.max_links:
                pending.popitem(last=False)
                self.evicted += 1
        for profile, (f, lv, a, q) in steps.items():
            self._score(profile, np.array(f), np.array(lv), np.array(a), q)

    def _coverage(self, profile: str, q: np.ndarray, y: np.ndarray) -> None:
        """Count h = 1 quantile hits: ``q`` is (n, 3) = p10, p50, p90, ``y`` (n,) the actuals."""
        m = self.metrics
        m.live_quantile_scored.labels(profile, "1").inc(len(y))
        for k, label in enumerate(QUANTILE_LABELS):
            m.live_quantile_below.labels(profile, "1", label).inc(int((y <= q[:, k]).sum()))

    def __call__(self, records: Sequence[Any], out: Any) -> None:
        """``PipelineCore`` observer: never lets a scoring bug stop the pipeline."""
        try:
            self.update(records, out.decisions)
        except Exception:
            log.exception("live accuracy: scoring a micro-batch failed (decisions unaffected)")

    def __len__(self) -> int:
        return len(self._pending)


def _flag_in_background(flag: RetrainFlag) -> Callable[[DriftEvent], None]:
    """``on_drift`` callback that sets the flag in a thread: a slow Redis never blocks the event loop."""

    def request(ev: DriftEvent) -> None:
        def run() -> None:
            try:
                flag.request(ev)
                log.warning("live accuracy: %s; retrain requested (%s)", ev.reason, flag.key)
            except Exception as exc:
                log.error("live accuracy: %s; could not set the retrain flag %s: %r", ev.reason, flag.key, exc)

        threading.Thread(target=run, name="bwp-retrain-flag", daemon=True).start()

    return request


def attach_live_accuracy(core: Any, settings: Any, metrics: WorkerMetrics) -> LiveScorer:
    """Score every micro-batch ``core`` processes; drift sets ``<key_prefix>:retrain_requested`` in Redis.

    Redis only (no flag file): workers mount the model dir read-only. The model ``core`` serves
    now is registered (:meth:`LiveScorer.set_model`); pass ``scorer.register`` as the reloader's
    ``on_swap`` so that a hot-reloaded model is too.
    """
    import river.drift  # noqa: F401 - imported now (about 1 s), not on the event loop at the first scored state

    flag = RetrainFlag.from_settings(settings, use_redis=True)
    flag.path = None
    scorer = LiveScorer(metrics, LiveAccuracy(on_drift=_flag_in_background(flag)))
    scorer.register(core.predictor)
    core.observers.append(scorer)
    return scorer
