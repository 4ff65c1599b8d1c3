"""The streaming worker: telemetry in, one decision per full window out.

Two layers:

* :class:`PipelineCore` - Kafka-free: decode/validate a micro-batch, update the link
  windows in Redis (:class:`stream.window.WindowStore`), run the predictor once on
  every full window of the batch, build decisions and dead letters, and (after the
  caller had them acknowledged by the broker) record the acknowledged decisions in
  Redis. Unit tests and offline replays drive it directly.
* :class:`KafkaWorker` - the Faust app (consumer group, offsets) around the core, with
  a librdkafka producer for decisions and dead letters. A batch's offsets become
  committable only after every decision and dead letter of that batch is acknowledged
  by the broker (at-least-once); see docs/pipeline.md.

Run it with ``bwp worker`` (or ``python -m stream.worker``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections import deque
from typing import Any, Awaitable, Callable, Protocol, Sequence

import numpy as np

from stream.errors import ConfigError, TelemetryDecodeError
from stream.heap import HeapGuard
from stream.metrics import WorkerMetrics, observe_many
from stream.records import N_ACTIONS, Decision, Telemetry, dlq_headers
from stream.security import faust_broker_kwargs
from stream.settings import Settings
from stream.window import MAX_UNACKED_PER_LINK, Outcome, WindowStore, retry_forever, split_per_link

log = logging.getLogger("bwp.worker")


# --- the model interface ----------------------------------------------------------------------
class PredictionLike(Protocol):
    bandwidth_mbps: np.ndarray  # (N,)
    action: np.ndarray  # (N,) int 0..9
    reference_bandwidth_mbps: np.ndarray  # (N,)


class Predictor(Protocol):
    """What the worker needs from a model (``ml.predict.Predictor`` implements it)."""

    version: str

    def predict(self, windows: np.ndarray) -> PredictionLike:
        """(N, WINDOW, 4) raw-unit windows, FEATURES order, oldest row first."""
        ...


# --- Kafka-free core --------------------------------------------------------------------------
#: Chunks between their window update and their confirmation in :meth:`PipelineCore.stream`.
PIPELINE_DEPTH = 2


@dataclass(frozen=True, slots=True)
class Owed:
    """The states of a chunk owed a decision, and their windows."""

    records: list[Telemetry]
    windows: np.ndarray  # (len(records), WINDOW, 4)


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
        predictor: Predictor,
        metrics: WorkerMetrics | None = None,
        executor: ThreadPoolExecutor | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        backoff_first_s: float = 0.1,
        backoff_cap_s: float = 2.0,
    ) -> None:
        self.store = store
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

    def set_predictor(self, predictor: Predictor) -> None:
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

    async def run(self, batch: Sequence[InRecord], publish: Callable[[BatchOutput], Any]) -> None:
        """One micro-batch end to end, nothing overlapped: decode, then per chunk window
        update, predict, ``await publish(out)`` (must return only once the broker
        acknowledged everything) and :meth:`confirm`.

        Chunks hold at most ``MAX_UNACKED_PER_LINK`` states of any link, so a crash (or a
        retried Redis round trip) never leaves more unacknowledged states of a link than
        the window store can rebuild decisions for.
        """
        predictor = self.predictor  # read once: a reload applies to whole batches
        first = BatchOutput(model_version=predictor.version)
        good = self._decode(batch, first)
        for i, chunk in enumerate(split_per_link(good) or [[]]):
            out = first if i == 0 else BatchOutput(model_version=predictor.version)
            owed = await self._update(chunk, out)
            await self._decide(owed, predictor, out)
            await publish(out)
            await self.confirm(out)
            for f in self.observers:
                f(chunk, out)

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
            "redis window update", lambda: self.store.update_batch(good), first_s=self.backoff[0], cap_s=self.backoff[1],
            on_error=lambda exc: m.redis_errors.inc(),
        )
        owed_idx = np.flatnonzero(upd.has_window()).tolist()
        windows = upd.windows  # (len(owed_idx), WINDOW, 4)
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
                windows = windows[keep]
        m.stage_seconds.labels("redis").observe(time.perf_counter() - t1)
        return Owed([good[i] for i in owed_idx], windows)

    async def _decide(self, owed: Owed, predictor: Predictor, out: BatchOutput) -> None:
        """One batched predict over every owed window, off the event loop; the decisions go to ``out``."""
        t2 = time.perf_counter()
        if owed.records:
            pred = await self._predict(predictor, owed.windows)
            now = self.clock_ms()
            bw = np.asarray(pred.bandwidth_mbps, dtype=np.float64)
            act = np.asarray(pred.action, dtype=np.int64)
            ref = np.asarray(pred.reference_bandwidth_mbps, dtype=np.float64)
            version = predictor.version
            out.decisions = [
                Decision.make(r.link_id, r.seq, r.ts_ms, b, a, f, version, now, r.profile)
                for r, b, a, f in zip(owed.records, bw.tolist(), act.tolist(), ref.tolist())
            ]
        self.metrics.stage_seconds.labels("predict").observe(time.perf_counter() - t2)

    async def _predict(self, predictor: Predictor, x: np.ndarray) -> PredictionLike:
        loop = asyncio.get_running_loop()
        n = len(x)

        async def call() -> PredictionLike:
            pred = await loop.run_in_executor(self.executor, predictor.predict, x)
            # A malformed prediction is a predictor error (retried, counted), not a crash later
            # in Decision.make / JSON encoding.
            for name in ("bandwidth_mbps", "action", "reference_bandwidth_mbps"):
                got = np.shape(getattr(pred, name))
                if got != (n,):
                    raise ValueError(f"predictor {predictor.version} returned {name} of shape {got}, expected ({n},)")
            act = np.asarray(pred.action)
            if not np.all((act >= 0) & (act < N_ACTIONS)):
                raise ValueError(f"predictor {predictor.version} returned actions outside 0..{N_ACTIONS - 1}")
            for name in ("bandwidth_mbps", "reference_bandwidth_mbps"):
                if not np.all(np.isfinite(np.asarray(getattr(pred, name), dtype=np.float64))):
                    raise ValueError(f"predictor {predictor.version} returned non-finite {name}")
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
            "redis ack update", lambda: self.store.ack((d.link_id, d.seq) for d in out.decisions),
            first_s=self.backoff[0], cap_s=self.backoff[1], on_error=lambda exc: m.redis_errors.inc(),
        )
        now_s = time.time()
        if out.decisions:
            m.decisions.labels(out.model_version).inc(len(out.decisions))
            ts_s = np.fromiter((d.ts_ms for d in out.decisions), dtype=np.float64, count=len(out.decisions)) / 1000.0
            observe_many(m.e2e_latency_seconds, np.maximum(0.0, now_s - ts_s))
        for _, _, hdrs in out.dead_letters:
            m.dead_letters.labels(hdrs[0][1].decode()).inc()
        if out.duplicates:
            m.duplicates.labels("duplicate").inc(out.duplicates)
        if out.stale:
            m.duplicates.labels("stale").inc(out.stale)
        if out.filling:
            m.windows_filling.inc(out.filling)
        m.mark_processed()
        m.stage_seconds.labels("ack").observe(time.perf_counter() - t0)


# --- Kafka ------------------------------------------------------------------------------------
class Publisher:
    """librdkafka producer for decisions and dead letters; :meth:`publish` returns when the broker acked all."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, executor: ThreadPoolExecutor) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.producer = Producer(
            settings.confluent_config(**{"linger.ms": 2, "acks": "all", "message.timeout.ms": 30_000})
        )
        self._failed: list[Any] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append((err, msg))

    def _produce_all(self, items: Sequence[tuple[str, bytes | None, bytes | None, Any]]) -> None:
        produce = self.producer.produce
        cb = self._on_delivery
        for topic, value, key, headers in items:
            while True:
                try:
                    produce(topic, value=value, key=key, headers=headers, on_delivery=cb)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.producer.poll(0.05)
        # Every message ends in a delivery report (success, or failure after
        # message.timeout.ms), so waiting for none to be left is bounded.
        while (remaining := self.producer.flush(5.0)) > 0:
            log.warning("produce: %d messages still waiting for the broker's acknowledgement", remaining)

    async def publish(self, out: BatchOutput) -> None:
        """Produce every decision and dead letter of ``out``; retry failures until all are acknowledged."""
        s = self.settings
        items: list[tuple[str, bytes | None, bytes | None, Any]] = [
            (s.dlq_topic, value, key, hdrs) for value, key, hdrs in out.dead_letters
        ]
        items.extend((s.decisions_topic, d.to_bytes(), d.link_id.encode(), None) for d in out.decisions)
        if not items:
            return
        loop = asyncio.get_running_loop()
        delay = 0.1
        while items:
            self._failed = []
            await loop.run_in_executor(self.executor, self._produce_all, items)
            items = [(m.topic(), m.value(), m.key(), m.headers()) for _, m in self._failed]
            if items:
                self.metrics.produce_errors.inc(len(items))
                log.warning("produce: %d messages not acknowledged (%s), retrying in %.1fs", len(items), self._failed[0][0], delay)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    def close(self) -> None:
        self.producer.flush(5)


def _patch_fetch_wait(wait_ms: int) -> None:
    """Longest time the broker may hold a fetch when no data is there (``fetch_max_wait_ms``).

    Faust hard-codes 1500 ms; a broker that answers a parked fetch only at this deadline
    (tansu does: `bwp bench broker` measured p99 65 / 40 / 26 ms at 100 / 50 / 20 ms) turns
    it into end-to-end latency. Very short waits cost the other way: at 5,000 states/s,
    10 ms had tansu at about 65 % of a core serving fetches and the worker's latency got
    worse; 50 ms measured best (docs/pipeline.md, Performance).
    """
    from faust.transport.drivers import aiokafka as fa

    cls = fa.AIOKafkaConsumerThread
    cls._bwp_fetch_wait_ms = wait_ms
    if getattr(cls, "_bwp_patched", False):
        return
    original = cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = cls._bwp_fetch_wait_ms  # read by AIOKafkaConsumer.start() for its Fetcher
        return consumer

    cls._create_worker_consumer = create
    cls._bwp_patched = True


class BulkFeed:
    """Messages of one topic handed from Faust's fetch loop to the worker in bulk.

    Faust delivers every record through its per-event path (conductor callback, Event,
    channel queue, Stream, processors, per-event ack): about 100 us of CPU per record,
    which capped one worker well below the model's rate. For the feed's topic the
    patched fetch loop (:func:`_patch_drain`) instead hands over each ``getmany`` result
    as one list of Faust ``ConsumerMessage`` s. Faust still owns the consumer group,
    assignment, seeks and offset commits; the worker acks each message with
    ``Consumer.ack`` once the batch's outputs are acknowledged by the broker.

    Bounded by records (``max_records``), so a slow worker stops the fetch loop (and,
    through the consumer's own buffers, fetching) instead of filling memory.
    """

    def __init__(self, topic: str, max_records: int) -> None:
        self.topic = topic
        self.max_records = max_records
        self._lists: deque[list[Any]] = deque()
        self._queued = 0
        self._readable: asyncio.Event | None = None
        self._writable: asyncio.Event | None = None

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self._readable is None or self._writable is None:  # created in the running loop
            self._readable, self._writable = asyncio.Event(), asyncio.Event()
            self._writable.set()
        return self._readable, self._writable

    def has_room(self) -> bool:
        return self._queued < self.max_records

    def put_nowait(self, msgs: list[Any]) -> None:
        readable, writable = self._events()
        self._lists.append(msgs)
        self._queued += len(msgs)
        readable.set()
        if not self.has_room():
            writable.clear()

    async def put(self, msgs: list[Any]) -> None:
        """Queue ``msgs``, waiting for room first."""
        _, writable = self._events()
        while not self.has_room():
            await writable.wait()
        self.put_nowait(msgs)

    async def get(self, max_: int) -> list[Any]:
        """The next at most ``max_`` messages in fetch order (waits for at least one)."""
        readable, writable = self._events()
        while not self._lists:
            readable.clear()
            await readable.wait()
        out: list[Any] = []
        while self._lists and len(out) < max_:
            head = self._lists[0]
            room = max_ - len(out)
            if len(head) <= room:
                out.extend(self._lists.popleft())
            else:
                out.extend(head[:room])
                self._lists[0] = head[room:]
        self._queued -= len(out)
        if self.has_room():
            writable.set()
        return out

    def clear(self) -> int:
        """Drop everything queued (a rebalance: Faust seeks back to the committed offsets)."""
        n = self._queued
        self._lists.clear()
        self._queued = 0
        if self._writable is not None:
            self._writable.set()
        return n


#: topic name -> its BulkFeed (one worker per process).
_BULK_FEEDS: dict[str, BulkFeed] = {}


def _patch_drain() -> None:
    """Faust's fetch loop, with the messages of :data:`_BULK_FEEDS` topics handed over in bulk.

    ``Consumer._drain_messages`` hands every message to the conductor with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``: two tasks, an
    ``asyncio.wait`` and then Faust's per-event path per record. Messages of a bulk topic
    are collected instead, and each ``getmany`` result goes to its :class:`BulkFeed` in one
    step (through ``wait_first`` on ``suspend_flow`` only when the feed is full, so a
    blocked hand-off never holds up a rebalance). Other topics keep Faust's path, and
    everything else (read offsets, gaps, commit_every) is Faust's loop.
    """
    from faust.transport import consumer as fc

    cls = fc.Consumer
    if getattr(cls, "_bwp_drain_patched", False):
        return

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - exercised by the worker
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = fc.CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        bulk_feed = _BULK_FEEDS.get
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                bulk: dict[BulkFeed, list[Any]] = {}
                if not self.should_stop:
                    async for tp, message in ait:
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset:
                                if acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            feed = bulk_feed(message.topic)
                            if feed is not None:
                                msgs = bulk.get(feed)
                                if msgs is None:
                                    msgs = bulk[feed] = []
                                msgs.append(message)
                            else:
                                num_since_yield += 1
                                if num_since_yield > yield_every:
                                    await sleep(0)
                                    num_since_yield = 0
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    for feed, msgs in bulk.items():
                        if feed.has_room():
                            feed.put_nowait(msgs)
                        else:
                            # Dropped if the flow is suspended meanwhile (a rebalance):
                            # Faust then seeks back to the committed offsets.
                            await self.wait_first(feed.put(msgs), self.suspend_flow.wait())
                    unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    cls._drain_messages = _drain_messages
    cls._bwp_drain_patched = True


def make_app(settings: Settings) -> Any:
    """The Faust app: group = ``settings.consumer_group``, raw bytes in, no tables, no web server."""
    import faust

    _patch_fetch_wait(settings.fetch_max_wait_ms)
    _patch_drain()

    datadir = settings.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    # broker URL and, when secured, SASL/TLS credentials (ConfigError on unusable TLS files)
    kw = faust_broker_kwargs(settings)

    class App(faust.App):
        def on_init_dependencies(self) -> Any:
            deps = super().on_init_dependencies()
            # Faust's Monitor sensor runs four bookkeeping hooks per event; with no Faust
            # web UI its numbers go nowhere (bwp exports its own metrics), so drop it.
            if self.monitor in set(self.sensors):
                self.sensors.remove(self.monitor)
            return deps

    return App(
        settings.consumer_group,
        key_serializer="raw",
        value_serializer="raw",
        # tansu answers joins fine, but Faust's 300 s / 60 s defaults make every
        # rebalance wait for absent members far too long
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout_s / 3),
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_allow_declare=False,
        autodiscover=False,
        web_enabled=False,
        datadir=str(datadir),
        broker_max_poll_records=max(500, settings.batch_max),
        # offsets are committed only for acked events; waiting for an empty stream at
        # shutdown would process records after the predictor executor is gone
        stream_wait_empty=False,
        **kw,
    )


class KafkaWorker:
    """Faust app + :class:`PipelineCore` + :class:`Publisher`."""

    def __init__(self, settings: Settings, predictor: Predictor, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics.create()
        self.metrics.info.info({"consumer_group": settings.consumer_group, "telemetry_topic": settings.telemetry_topic})
        self.redis = settings.redis_client(asyncio=True)
        self.store = WindowStore(self.redis, settings.key_prefix, settings.window_ttl_s)
        self.core = PipelineCore(self.store, predictor, self.metrics)
        self.io_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bwp-produce")
        self.publisher = Publisher(settings, self.metrics, self.io_executor)
        self.app = make_app(settings)
        # Subscribed through Faust's conductor (group, assignment, offsets), but consumed
        # in bulk: see BulkFeed.
        self.topic = self.app.topic(settings.telemetry_topic, key_type=bytes, value_type=bytes, internal=False)
        self.app.topics.add(self.topic)
        self.feed = BulkFeed(settings.telemetry_topic, max_records=4 * settings.batch_max)
        _BULK_FEEDS[settings.telemetry_topic] = self.feed
        self.batches = 0
        self.heap = HeapGuard(self.metrics.gc_pause_seconds, enabled=settings.gc_freeze)
        self._install()

    def _install(self) -> None:
        app = self.app

        @app.task
        async def decide() -> None:
            # The one decision loop (what an agent of concurrency 1 would be): micro-batches
            # in fetch order; see PipelineCore.stream for the three overlapped stages.
            self.heap.freeze()  # model, libraries and app are loaded: see stream/heap.py
            try:
                await self.core.stream(self._next_batch, self._publish, self._done, self.settings.pipeline_depth)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise  # shutdown mid-batch: nothing unfinished was acked, so it is read again
            except BaseException:
                # A bug (Redis, predictor and produce failures are retried inside). Carrying
                # on would leave a hole below which Faust never commits again; exit instead
                # and let the supervisor restart us - redelivery and the window store's ack
                # seqs make the restart lossless and duplicate-free.
                log.critical("unexpected error in a micro-batch, exiting (code 70) for a clean restart", exc_info=True)
                logging.shutdown()
                os._exit(70)

        @app.timer(interval=2.0)
        async def lag() -> None:
            self._update_lag()

        @app.on_partitions_revoked.connect
        async def on_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
            # Faust seeks every partition back to its committed offset after a
            # rebalance; what is queued here would be read again (or by another worker).
            dropped = self.feed.clear()
            if dropped:
                log.info("rebalance: dropped %d queued records; they are read again from the committed offsets", dropped)

    async def _next_batch(self) -> list[Any]:
        """The next micro-batch of Faust ``ConsumerMessage`` s of the current generation.

        Records fetched before a rebalance are skipped, as Faust's Stream skips them:
        Faust re-reads them from the committed offsets.
        """
        while True:
            msgs = await self.feed.get(self.settings.batch_max)
            generation = self.app.consumer_generation_id  # now, not before the wait
            batch = [m for m in msgs if m.generation_id == generation]
            if batch:
                return batch

    def _done(self, batch: Sequence[Any]) -> None:
        """Every decision and dead letter of ``batch`` is acknowledged by the broker: ack its
        messages, so Faust may commit their offsets."""
        self.batches += 1
        generation = self.app.consumer_generation_id
        ack = self.app.consumer.ack
        for m in batch:
            if m.generation_id == generation:  # else: no longer ours to commit
                ack(m)

    async def _publish(self, out: BatchOutput) -> None:
        t0 = time.perf_counter()
        await self.publisher.publish(out)
        self.metrics.stage_seconds.labels("produce").observe(time.perf_counter() - t0)

    def _update_lag(self) -> None:
        try:
            consumer = self.app.consumer
            for tp in consumer.assignment():
                if tp.topic != self.settings.telemetry_topic:
                    continue
                hw = consumer.highwater(tp)
                committed = consumer._committed_offset.get(tp)  # noqa: SLF001 - no public accessor
                if hw is not None:
                    self.metrics.consumer_lag.labels(str(tp.partition)).set(max(0, hw - (committed or 0)))
        except Exception as exc:  # noqa: BLE001 - lag is best effort, never worth a crash
            log.debug("lag metric: %r", exc)

    async def start_redis(self) -> None:
        await retry_forever("redis script load", self.store.load_scripts, on_error=lambda e: self.metrics.redis_errors.inc())

    def run(self, loglevel: str = "WARNING") -> int:
        """Run until SIGTERM/SIGINT. Returns the exit code."""
        import faust

        worker = faust.Worker(self.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)

        @self.app.task
        async def _init() -> None:
            await self.start_redis()

        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            self.publisher.close()
            self.heap.close()
        return 0


class WorkerSubprocess:
    """``python -m stream.worker`` in its own process (and process group), configured through
    ``BWP_*`` env vars from ``settings``. Used by ``bwp demo`` and ``bwp bench pipeline``."""

    def __init__(self, settings: Settings, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.settings = settings
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The environment: ours, with every setting as its BWP_* variable."""
        from pydantic import SecretStr

        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
        for name in type(self.settings).model_fields:
            v = getattr(self.settings, name)
            key = f"BWP_{name.upper()}"
            if v is None:
                env.pop(key, None)
            else:
                env[key] = v.get_secret_value() if isinstance(v, SecretStr) else str(v)
        return env

    def start(self) -> "WorkerSubprocess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream.worker", *self.extra_args],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (graceful: Faust commits what was acknowledged), SIGKILL after ``timeout_s``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# --- entry points -----------------------------------------------------------------------------
def load_registry_predictor(settings: Settings, version: str | None = None) -> Predictor:
    """The registered model (current, or ``version``); raises ModelError when there is none."""
    from ml.predict import load_predictor

    return load_predictor(settings.model_dir, version)


def _factory(spec: str) -> Callable[[], Predictor]:
    import importlib

    mod, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"--predictor-factory must be module:attribute, got {spec!r}")
    return getattr(importlib.import_module(mod), attr)


def run_worker(
    settings: Settings,
    model_version: str | None = None,
    metrics_port: int | None = None,
    predictor_factory: str | None = None,
    loglevel: str = "WARNING",
) -> int:
    """Load the model, serve /metrics, run the Faust worker until stopped."""
    if predictor_factory:
        # Test hook (python -m stream.worker only): a deterministic stand-in model.
        predictor = _factory(predictor_factory)()
    else:
        predictor = load_registry_predictor(settings, model_version)
    metrics = WorkerMetrics.create()
    port = settings.metrics_port if metrics_port is None else metrics_port
    metrics.serve(port)
    w = KafkaWorker(settings, predictor, metrics)
    from stream.live import attach_live_accuracy
    from stream.reload import attach_reloader

    attach_live_accuracy(w.core, settings, metrics)
    if model_version is None and not predictor_factory:  # --model-version pins: no hot reload
        attach_reloader(w.app, w.core, settings, metrics, heap=w.heap)
    print(
        f"bwp worker: group {settings.consumer_group}, {settings.telemetry_topic} -> {settings.decisions_topic}, "
        f"model {predictor.version}" + (f", metrics on :{port}/metrics" if port else ""),
        file=sys.stderr,
        flush=True,
    )
    return w.run(loglevel)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stream.worker``: like ``bwp worker`` plus the test-only ``--predictor-factory``."""
    from stream.cli import add_settings_flags, settings_from_args

    p = argparse.ArgumentParser(prog="python -m stream.worker")
    add_worker_flags(p)
    p.add_argument("--predictor-factory", default=None, help="TESTS ONLY: module:callable returning a stand-in predictor")
    add_settings_flags(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from stream.replay import namespaced

    settings = namespaced(settings_from_args(args, **worker_overrides(args)), args.namespace)
    return run_worker(settings, args.model_version, args.metrics_port, args.predictor_factory)


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``bwp worker`` and ``python -m stream.worker``."""
    p.add_argument("--metrics-port", type=int, default=None, help="port of /metrics (0 = off; default BWP_METRICS_PORT=9464)")
    p.add_argument("--model-version", default=None, help="model version to serve (default: the registry's current)")
    p.add_argument("--group", default=None, help="consumer group (env BWP_CONSUMER_GROUP, default bwp-worker)")
    p.add_argument("--batch-max", type=int, default=None, help="largest micro-batch (env BWP_BATCH_MAX, default 2048)")
    p.add_argument("--key-prefix", default=None, help="Redis key prefix (env BWP_KEY_PREFIX, default bwp)")
    p.add_argument(
        "--namespace", default=None,
        help="replay namespace NAME: topics NAME.<topic>, group NAME.<group>, Redis prefix NAME:<prefix> (see bwp replay)",
    )  # fmt: skip


def worker_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"consumer_group": args.group, "batch_max": args.batch_max, "key_prefix": args.key_prefix}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
