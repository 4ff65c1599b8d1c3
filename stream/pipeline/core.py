"""The streaming worker: telemetry in, one decision per full window out.

Two layers:

* :class:`PipelineCore` - Kafka-free: decode/validate a micro-batch, update the link
  windows in Redis (:class:`stream.pipeline.redis_window.WindowStore`), run the predictor once on
  every full window of the batch, build decisions and dead letters, and (after the
  caller had them acknowledged by the broker) record the acknowledged decisions in
  Redis. Unit tests and offline replays drive it directly.
* :class:`KafkaWorker` - the Faust app (consumer group, offsets) around the core, with
  a librdkafka producer for decisions and dead letters. A batch's offsets become
  committable only after every decision and dead letter of that batch is acknowledged
  by the broker (at-least-once); see docs/pipeline.md.

Run it with ``bwp worker`` (or ``python -m stream.ops.runner``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.compression import CompressionProfile
from stream.core.errors import TelemetryDecodeError
from stream.core.records import COMPRESSION_HORIZON, DECISION_SCHEMA_VERSION, Decision, Telemetry, dlq_headers
from stream.core.routes import RouteRanking
from stream.metrics.worker import WorkerMetrics, observe_many
from stream.pipeline.aci import AciParams
from stream.pipeline.model import PredictionLike, PredictorLike, build_decisions, check_prediction
from stream.pipeline.redis_window import WindowStore
from stream.pipeline.routes import MemoryRouteStore, RouteStore, entries
from stream.pipeline.window import (
    MAX_UNACKED_PER_LINK,
    Outcome,
    retry_forever,
    split_per_link,
)

log = logging.getLogger("bwp.worker")


# --- Kafka-free core --------------------------------------------------------------------------
#: Chunks between their window update and their confirmation in :meth:`PipelineCore.stream`.
PIPELINE_DEPTH = 2


@dataclass(frozen=True, slots=True)
class Owed:
    """The states of a chunk owed a decision, and their windows."""

    records: list[Telemetry]
    windows: np.ndarray  # (len(records), WINDOW, 4)
    states: np.ndarray | None = None  # (len(records), 6) long-memory state after each window


@dataclass(frozen=True, slots=True)
class InRecord:
    """One consumed Kafka record, as the core needs it."""

    value: bytes | None
    key: bytes | None = None
    topic: str = ""
    partition: int = 0
    offset: int = 0


@dataclass(slots=True)
class BatchOutput:
    """What one micro-batch produces: messages to publish and what to mark acknowledged."""

    decisions: list[Decision] = field(default_factory=list)
    #: rankings of route groups whose order changed (or whose interval passed) in this chunk
    rankings: list[RouteRanking] = field(default_factory=list)
    #: (original value, original key, headers)
    dead_letters: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = field(default_factory=list)
    model_version: str = ""
    valid: int = 0
    duplicates: int = 0
    stale: int = 0
    filling: int = 0


class PipelineCore:
    """Process micro-batches of raw telemetry into decisions (no Kafka here).

    ``predictor`` may be replaced between batches (hot reload): each batch reads
    ``self.predictor`` exactly once.
    """

    def __init__(
        self,
        store: WindowStore,
        predictor: PredictorLike,
        metrics: WorkerMetrics | None = None,
        executor: ThreadPoolExecutor | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        backoff_first_s: float = 0.1,
        backoff_cap_s: float = 2.0,
        schema_version: int = DECISION_SCHEMA_VERSION,
        compression_profile: CompressionProfile | None = None,
        compression_horizon: int = COMPRESSION_HORIZON,
        routes: RouteStore | MemoryRouteStore | None = None,
        aci: AciParams | None = None,
    ) -> None:
        self.store = store
        # Online calibration of the h = 1 interval per link (BWP_ACI_GAMMA; None or gamma 0: off).
        self.aci = aci if aci is not None and aci.gamma > 0 else None
        self.routes = routes  # None: route_group is ignored (no rankings)
        self.schema_version = schema_version  # of the published decisions (BWP_DECISIONS_SCHEMA_VERSION)
        # The v3 compression hint's profile (BWP_COMPRESSION_PROFILE; None = shipped) and horizon.
        self.compression_profile = compression_profile
        self.compression_horizon = compression_horizon
        self.metrics = metrics or WorkerMetrics.create()
        # One thread: TensorFlow calls stay off the event loop, and never run concurrently.
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bwp-predict")
        self.clock_ms = clock_ms
        self.backoff = (backoff_first_s, backoff_cap_s)
        self.predictor = predictor
        self.metrics.set_model(predictor.version)
        #: ``f(valid_records, out)`` after each chunk (in :meth:`run`: once its decisions are
        #: acknowledged); used for live accuracy (stream/live.py). Must not raise.
        self.observers: list[Callable[[list[Telemetry], BatchOutput], None]] = []
        #: Owed states of the chunks in :meth:`stream` between window update and confirmation.
        self._in_flight: deque[Owed] = deque()

    def set_predictor(self, predictor: PredictorLike) -> None:
        """Swap the model; takes effect at the next micro-batch."""
        self.predictor = predictor
        self.metrics.set_model(predictor.version)

    async def process(self, batch: Sequence[InRecord]) -> BatchOutput:
        """Decode, update windows, predict - the whole batch as one chunk (tests, replays).

        The Kafka worker uses :meth:`stream`, which also bounds the unacknowledged states
        per link and publishes.
        """
        predictor = self.predictor  # read once: a reload applies to whole batches
        out = BatchOutput(model_version=predictor.version)
        good = self._decode(batch, out)
        owed = await self._update(good, out)
        await self._decide(owed, predictor, out)
        for f in self.observers:
            f(good, out)
        return out

    # Long on purpose: the three stages are closures over one set of queues and one stop flag;
    # apart, each would take and return all of them, and the hand-offs would be harder to follow.
    async def stream(
        self,
        next_batch: Callable[[], Awaitable[Sequence[InRecord]]],
        publish: Callable[[BatchOutput], Any],
        on_done: Callable[[Sequence[InRecord]], None],
        depth: int = PIPELINE_DEPTH,
    ) -> None:
        """Process batches from ``next_batch()`` forever, in three overlapped stages.

        * front (event loop): decode, cut into chunks, update each chunk's windows in Redis;
        * decide: predict (in the predictor thread);
        * confirm: ``await publish(out)``, :meth:`confirm`, observers, and
          ``on_done(batch)`` once the batch's last chunk is confirmed.

        While the model predicts chunk k, the front decodes and updates the windows of
        chunk k+1 and the confirm stage waits for the broker's acknowledgement of chunk
        k-1: the model thread, the event loop and the broker work at the same time. (With
        prediction and confirmation in one stage, the model idled during every
        acknowledgement round trip: about a third of each cycle at 5,000 states/s.) At
        most ``depth`` chunks are between their window update and their confirmation,
        and a chunk holds at most ``MAX_UNACKED_PER_LINK // depth`` states of a link, so
        the unacknowledged states of a link stay within what the window store can
        rebuild after a crash. Chunks are published, confirmed and reported done in
        order. Returns only by an exception (cancellation included), which stops every
        stage.
        """
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        limit = max(1, MAX_UNACKED_PER_LINK // depth)
        slots: asyncio.Queue = asyncio.Queue(maxsize=depth)  # one token per unconfirmed chunk
        to_decide: asyncio.Queue = asyncio.Queue()
        to_confirm: asyncio.Queue = asyncio.Queue()
        stopping = [False]

        async def front() -> None:
            while not stopping[0]:
                batch = await next_batch()
                predictor = self.predictor  # read once: a reload applies to whole batches
                first = BatchOutput(model_version=predictor.version)
                good = self._decode(batch, first)
                chunks = split_per_link(good, limit) or [[]]
                for i, chunk in enumerate(chunks):
                    out = first if i == 0 else BatchOutput(model_version=predictor.version)
                    await slots.put(None)  # waits while ``depth`` chunks are unconfirmed
                    owed = await self._update(chunk, out)
                    self._in_flight.append(owed)
                    to_decide.put_nowait((chunk, owed, predictor, out, batch if i == len(chunks) - 1 else None))

        async def decide() -> None:
            while not stopping[0]:
                item = await to_decide.get()
                _, owed, predictor, out, _ = item
                await self._decide(owed, predictor, out)
                to_confirm.put_nowait(item)

        async def confirm() -> None:
            while not stopping[0]:
                chunk, _, _, out, done = await to_confirm.get()
                await publish(out)
                await self.confirm(out)
                self._in_flight.popleft()
                slots.get_nowait()
                for f in self.observers:
                    f(chunk, out)
                if done is not None:
                    on_done(done)

        tasks = [asyncio.ensure_future(stage()) for stage in (front, decide, confirm)]
        try:
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in finished:
                t.result()  # raises the stage's exception
        finally:
            stopping[0] = True
            # Cancel until done: a cancellation that lands in the Redis client's I/O can
            # be absorbed there (seen in this code's tests), and the stage then parks at
            # its next await; the flag makes it leave at its next loop turn instead.
            while not all(t.done() for t in tasks):
                for t in tasks:
                    t.cancel()
                await asyncio.wait(tasks, timeout=0.1)
            self._in_flight.clear()

    def _decode(self, batch: Sequence[InRecord], out: BatchOutput) -> list[Telemetry]:
        """Valid records in order; invalid ones become dead letters (original bytes) in ``out``."""
        m = self.metrics
        m.records_consumed.inc(len(batch))
        m.batch_records.observe(len(batch))
        t0 = time.perf_counter()
        good: list[Telemetry] = []
        for rec in batch:
            try:
                good.append(Telemetry.from_bytes(rec.value))
            except TelemetryDecodeError as exc:
                hdrs = dlq_headers(exc.code, exc.message, rec.topic, rec.partition, rec.offset)
                out.dead_letters.append((rec.value, rec.key, hdrs))
        out.valid = len(good)
        m.stage_seconds.labels("decode").observe(time.perf_counter() - t0)
        return good

    async def _update(self, good: list[Telemetry], out: BatchOutput) -> Owed:
        """Window updates of ``good`` (retried until Redis answers): the states owed a
        decision and their windows; counts the rest in ``out``."""
        m = self.metrics
        t1 = time.perf_counter()
        # (n records) -> outcomes (n,), windows (m, WINDOW, 4): one round trip
        upd = await retry_forever(
            "redis window update",
            lambda: self.store.update_batch(good),
            first_s=self.backoff[0],
            cap_s=self.backoff[1],
            on_error=lambda exc: m.redis_errors.inc(),
        )
        owed_idx = np.flatnonzero(upd.has_window()).tolist()
        windows = upd.windows  # (len(owed_idx), WINDOW, 4)
        states = upd.window_states()  # (len(owed_idx), 6)
        out.filling += upd.count(Outcome.FILLING)
        out.duplicates += upd.count(Outcome.DUPLICATE)
        out.stale += upd.count(Outcome.STALE)
        if upd.count(Outcome.REDELIVERED):
            # A state owed a decision that is already on its way - twice in this chunk, or
            # in a chunk not confirmed yet (the second copy finds it unacknowledged, so
            # REDELIVERED): one decision.
            seen = {(r.link_id, r.seq) for o in self._in_flight for r in o.records}
            keep: list[int] = []
            for row, i in enumerate(owed_idx):
                key = (good[i].link_id, good[i].seq)
                if key in seen:
                    out.duplicates += 1
                    continue
                seen.add(key)
                keep.append(row)
            if len(keep) < len(owed_idx):
                owed_idx = [owed_idx[r] for r in keep]
                windows, states = windows[keep], states[keep]
        m.stage_seconds.labels("redis").observe(time.perf_counter() - t1)
        return Owed([good[i] for i in owed_idx], windows, states)

    async def _decide(self, owed: Owed, predictor: PredictorLike, out: BatchOutput) -> None:
        """One batched predict over every owed window, off the event loop; the decisions go to ``out``."""
        t2 = time.perf_counter()
        if owed.records:
            pred = await self._predict(predictor, owed.windows, [r.profile for r in owed.records], owed.states)
            wire = await self._calibrate(owed.records, pred)
            out.decisions = build_decisions(
                owed.records, pred, predictor.version, self.clock_ms(), self.schema_version,
                compression_profile=self.compression_profile, compression_horizon=self.compression_horizon, wire=wire,
            )  # fmt: skip
        self.metrics.stage_seconds.labels("predict").observe(time.perf_counter() - t2)
        if self.routes is not None and out.decisions:
            await self._rank(owed, out, self.routes)

    async def _calibrate(self, records: list[Telemetry], pred: PredictionLike) -> np.ndarray | None:
        """The published forecast (N, H, 3) with each link's online-calibrated h = 1 p10/p90
        (one script call per CALL_RECORDS records), or None when calibration is off or the
        forecast has no h = 1."""
        wire = getattr(pred, "wire_quantiles", None)
        hs = [int(h) for h in getattr(pred, "horizons", ())]
        if self.aci is None or wire is None or 1 not in hs:
            return None
        wire = np.array(wire, dtype=np.float64)  # a copy: the prediction stays the model's
        col = hs.index(1)
        aci, m = self.aci, self.metrics
        served = await retry_forever(
            "redis calibration update",
            lambda: self.store.calibrate(records, wire[:, col, :], aci),
            first_s=self.backoff[0],
            cap_s=self.backoff[1],
            on_error=lambda exc: m.redis_errors.inc(),
        )  # (N, 2) published p10, p90
        wire[:, col, 0] = served[:, 0]
        wire[:, col, 2] = served[:, 1]
        return wire

    async def _rank(self, owed: Owed, out: BatchOutput, routes: RouteStore | MemoryRouteStore) -> None:
        """Update the route groups of the chunk's grouped links (one script call); their rankings go to ``out``."""
        now = self.clock_ms()
        batch = entries(owed.records, out.decisions, now)
        if not batch:  # no record of the chunk has a route_group: nothing more to do
            return
        m = self.metrics
        out.rankings = await retry_forever(
            "redis route update",
            lambda: routes.update(batch, now),
            first_s=self.backoff[0],
            cap_s=self.backoff[1],
            on_error=lambda exc: m.redis_errors.inc(),
        )

    async def _predict(
        self, predictor: PredictorLike, x: np.ndarray, profiles: list[str | None], states: np.ndarray | None = None
    ) -> PredictionLike:
        loop = asyncio.get_running_loop()
        n = len(x)
        # a model that reads the link's long-memory state gets it; every other predictor is called as before
        args = (x, profiles, states) if getattr(predictor, "context", False) and states is not None else (x, profiles)

        async def call() -> PredictionLike:
            pred = await loop.run_in_executor(self.executor, predictor.predict, *args)
            check_prediction(pred, n, predictor.version)  # a bad one is retried and counted, not published
            return pred

        def on_error(exc: BaseException) -> None:
            self.metrics.predict_errors.inc()
            log.error("predictor %s failed on %d windows: %r", predictor.version, n, exc)

        return await retry_forever("predict", call, first_s=self.backoff[0], cap_s=self.backoff[1], on_error=on_error)

    async def confirm(self, out: BatchOutput) -> None:
        """After the broker acknowledged ``out``: advance each link's ``ack`` seq and count."""
        t0 = time.perf_counter()
        m = self.metrics
        await retry_forever(
            "redis ack update",
            lambda: self.store.ack((d.link_id, d.seq) for d in out.decisions),
            first_s=self.backoff[0],
            cap_s=self.backoff[1],
            on_error=lambda exc: m.redis_errors.inc(),
        )
        now_s = time.time()
        if out.decisions:
            m.decisions.labels(out.model_version).inc(len(out.decisions))
            ts_s = np.fromiter((d.ts_ms for d in out.decisions), dtype=np.float64, count=len(out.decisions)) / 1000.0
            observe_many(m.e2e_latency_seconds, np.maximum(0.0, now_s - ts_s))
        for _, _, hdrs in out.dead_letters:
            m.dead_letters.labels(hdrs[0][1].decode()).inc()
        for rk in out.rankings:
            m.routes_published.labels(rk.reason).inc()
        if out.duplicates:
            m.duplicates.labels("duplicate").inc(out.duplicates)
        if out.stale:
            m.duplicates.labels("stale").inc(out.stale)
        if out.filling:
            m.windows_filling.inc(out.filling)
        m.mark_processed()
        m.stage_seconds.labels("ack").observe(time.perf_counter() - t0)
