"""Live forecast accuracy in the running worker: model vs last value, per profile.

The worker keeps each link's last forecast (the decision's ``predicted_bandwidth_mbps``)
and scores it when the link's next state (``seq + 1``) arrives, next to the last-value
forecast of the same step (the bandwidth of the state the decision was made on). Both
errors go to Prometheus histograms labelled only by predictor and profile (never per
link), and the pair feeds :class:`stream.lifecycle.drift.LiveAccuracy` (Page-Hinkley on the model's
relative error minus last-value's); a detection counts in ``bwp_drift_detections_total``
and sets the "retrain requested" flag in Redis through :class:`stream.lifecycle.drift.RetrainFlag`.

For v2 decisions the h = 1 quantiles are scored too: ``bwp_live_quantile_below_total``
over ``bwp_live_quantile_scored_total`` is the live coverage per profile and quantile
(nominal: 0.1, 0.5, 0.9).

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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stream.lifecycle.drift import (
    CLIP,
    FLOOR,
    DriftEvent,
    LiveAccuracy,
    RetrainFlag,
    relative_errors,
)
from stream.metrics.worker import WorkerMetrics, observe_many

log = logging.getLogger("bwp.live")

#: Pending forecasts kept (one per link); a fleet larger than this loses scores for the
#: least recently seen links, never memory.
MAX_LINKS = 200_000
#: Quantile labels of the decisions schema v2's p10, p50, p90.
QUANTILE_LABELS = ("0.1", "0.5", "0.9")


class LiveScorer:
    """Pairs forecasts with the next state and exports the errors (see the module docstring).

    Call :meth:`update` with every micro-batch's valid records (batch order) and its
    decisions, after the decisions were published. Not thread-safe: one per worker,
    called from the event loop (it is also a ``PipelineCore`` observer: ``scorer(records, out)``).
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
        # link -> [newest seq seen with a decision, profile, forecast, last value, scored?, h=1 (p10, p50, p90) or None]
        self._pending: OrderedDict[str, list[Any]] = OrderedDict()
        self.scored = 0
        self.evicted = 0
        self._hist: dict[tuple[str, str], tuple[Any, Any]] = {}

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

    def _score(self, profile: str, forecast: np.ndarray, last_value: np.ndarray, actual: np.ndarray) -> None:
        """Score one profile's (forecast, last value, actual) steps of a micro-batch, in order."""
        e_model = relative_errors(forecast, actual, self.clip, self.floor)
        e_last = relative_errors(last_value, actual, self.clip, self.floor)
        for name, f, e in (("lstm", forecast, e_model), ("last_value", last_value, e_last)):
            abs_h, rel_h = self._children(name, profile)
            observe_many(abs_h, np.abs(f - actual))
            observe_many(rel_h, e)
        self.scored += len(actual)
        found = self.live.observe_errors(profile, e_model, e_last)
        if found:
            self.metrics.drift_detections.labels(profile).inc(found)

    def update(self, records: Sequence[Any], decisions: Sequence[Any]) -> None:
        """Score pending forecasts whose next state is in ``records``; remember the new ones."""
        dec = {(d.link_id, d.seq): d for d in decisions} if decisions else {}
        pending = self._pending
        # profile -> ([forecast], [last value], [actual], [(p10, p50, p90, actual)]) of the steps scored in this batch
        steps: dict[str, tuple[list[float], list[float], list[float]]] = {}
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
                    if p[5] is not None:
                        st[3].append((*p[5], r.bandwidth_mbps))
            if not dec:
                continue
            d = dec.pop((lid, r.seq), None)
            if d is None or (p is not None and d.seq <= p[0]):
                continue  # no decision, or a redelivered one: its step was handled already
            fc = getattr(d, "forecast", None)  # v2: ((h, p10, p50, p90), ...) sorted by h, h = 1 first
            q1 = fc[0][1:] if fc and fc[0][0] == 1 else None
            pending[lid] = [d.seq, d.profile or "unknown", d.predicted_bandwidth_mbps, r.bandwidth_mbps, False, q1]
            pending.move_to_end(lid)
            if len(pending) > self.max_links:
                pending.popitem(last=False)
                self.evicted += 1
        for profile, (f, lv, a, qa) in steps.items():
            self._score(profile, np.array(f), np.array(lv), np.array(a))
            if qa:
                self._coverage(profile, np.array(qa))

    def _coverage(self, profile: str, qa: np.ndarray) -> None:
        """Count h = 1 quantile hits: ``qa`` is (n, 4) = p10, p50, p90, actual."""
        m = self.metrics
        m.live_quantile_scored.labels(profile, "1").inc(len(qa))
        for k, q in enumerate(QUANTILE_LABELS):
            m.live_quantile_below.labels(profile, "1", q).inc(int((qa[:, 3] <= qa[:, k]).sum()))

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

    Redis only (no flag file): workers mount the model dir read-only.
    """
    import river.drift  # noqa: F401 - imported now (about 1 s), not on the event loop at the first scored state

    flag = RetrainFlag.from_settings(settings, use_redis=True)
    flag.path = None
    scorer = LiveScorer(metrics, LiveAccuracy(on_drift=_flag_in_background(flag)))
    core.observers.append(scorer)
    return scorer
