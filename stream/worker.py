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
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

import numpy as np

from stream.errors import ConfigError, TelemetryDecodeError
from stream.metrics import WorkerMetrics
from stream.records import N_ACTIONS, Decision, Telemetry, dlq_headers
from stream.security import faust_broker_kwargs
from stream.settings import Settings
from stream.window import Outcome, WindowStore, retry_forever, split_per_link

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

    def set_predictor(self, predictor: Predictor) -> None:
        """Swap the model; takes effect at the next micro-batch."""
        self.predictor = predictor
        self.metrics.set_model(predictor.version)

    async def process(self, batch: Sequence[InRecord]) -> BatchOutput:
        """Decode, update windows, predict - the whole batch as one chunk (tests, replays).

        The Kafka worker uses :meth:`run`, which also bounds the unacknowledged states per link.
        """
        predictor = self.predictor  # read once: a reload applies to whole batches
        out = BatchOutput(model_version=predictor.version)
        good = self._decode(batch, out)
        await self._decide(good, predictor, out)
        for f in self.observers:
            f(good, out)
        return out

    async def run(self, batch: Sequence[InRecord], publish: Callable[[BatchOutput], Any]) -> None:
        """Process a micro-batch end to end: decode, then per chunk window update, predict,
        ``await publish(out)`` (must return only once the broker acknowledged everything),
        and :meth:`confirm`.

        Chunks hold at most ``MAX_UNACKED_PER_LINK`` states of any link, so a crash (or a
        retried Redis round trip) never leaves more unacknowledged states of a link than
        the window store can rebuild decisions for.
        """
        predictor = self.predictor  # read once: a reload applies to whole batches
        first = BatchOutput(model_version=predictor.version)
        good = self._decode(batch, first)
        for i, chunk in enumerate(split_per_link(good) or [[]]):
            out = first if i == 0 else BatchOutput(model_version=predictor.version)
            await self._decide(chunk, predictor, out)
            await publish(out)
            await self.confirm(out)
            for f in self.observers:
                f(chunk, out)

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

    async def _decide(self, good: list[Telemetry], predictor: Predictor, out: BatchOutput) -> None:
        """Window updates (retried until Redis answers) and one batched predict for ``good``."""
        m = self.metrics
        t1 = time.perf_counter()
        # one atomic script call per record, one round trip
        updates = await retry_forever(
            "redis window update", lambda: self.store.update(good), first_s=self.backoff[0], cap_s=self.backoff[1],
            on_error=lambda exc: m.redis_errors.inc(),
        )
        t2 = time.perf_counter()
        m.stage_seconds.labels("redis").observe(t2 - t1)

        windows: list[np.ndarray] = []
        owed: list[Telemetry] = []
        seen: set[tuple[str, int]] = set()
        for rec, upd in zip(good, updates):
            oc = upd.outcome
            if oc is Outcome.FULL or oc is Outcome.REDELIVERED:
                key = (rec.link_id, rec.seq)
                if key in seen:  # the same state twice in one batch: one decision
                    out.duplicates += 1
                    continue
                seen.add(key)
                windows.append(upd.window)
                owed.append(rec)
            elif oc is Outcome.FILLING:
                out.filling += 1
            elif oc is Outcome.DUPLICATE:
                out.duplicates += 1
            else:
                out.stale += 1

        # one batched predict over every full window, off the event loop
        if windows:
            x = np.stack(windows)  # (n, WINDOW, 4)
            pred = await self._predict(predictor, x)
            now = self.clock_ms()
            bw = np.asarray(pred.bandwidth_mbps, dtype=np.float64)
            act = np.asarray(pred.action, dtype=np.int64)
            ref = np.asarray(pred.reference_bandwidth_mbps, dtype=np.float64)
            version = predictor.version
            out.decisions = [
                Decision.make(r.link_id, r.seq, r.ts_ms, float(b), int(a), float(f), version, now, r.profile)
                for r, b, a, f in zip(owed, bw.tolist(), act.tolist(), ref.tolist())
            ]
        m.stage_seconds.labels("predict").observe(time.perf_counter() - t2)

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
            obs = m.e2e_latency_seconds.observe
            for d in out.decisions:
                obs(max(0.0, now_s - d.ts_ms / 1000.0))
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


#: Longest time the broker may hold a fetch when no data is there. Faust hard-codes
#: 1500 ms; a broker that answers a parked fetch only at this deadline (tansu does, as
#: measured with `bwp bench pipeline --rate`) turns it into end-to-end latency.
FETCH_MAX_WAIT_MS = 10


def _patch_fetch_wait() -> None:
    from faust.transport.drivers import aiokafka as fa

    cls = fa.AIOKafkaConsumerThread
    if getattr(cls, "_bwp_patched", False):
        return
    original = cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start() for its Fetcher
        return consumer

    cls._create_worker_consumer = create
    cls._bwp_patched = True


#: Channel queues of the running take_batches() loops (one per worker process).
_BATCH_QUEUES: list[Any] = []


def _patch_drain() -> None:
    """Faust's fetch loop with a cheaper hand-off of each message to its stream.

    ``Consumer._drain_messages`` hands every message over with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``: two tasks and an
    ``asyncio.wait`` per record, so that a callback blocked on a full (or paused) stream
    queue cannot hold up a rebalance. When the flow is active and our stream's queue has
    room, the callback cannot block, so it is awaited directly; otherwise (rebalance, full
    buffer, unknown queue) Faust's original hand-off is used. Everything else is Faust's loop.
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
        flow_active = self.app.flow_control.is_active
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        def can_block() -> bool:
            if not flow_active() or not _BATCH_QUEUES:
                return True
            return any(q.maxsize and q.qsize() >= q.maxsize - 1 for q in _BATCH_QUEUES)

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
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
                            if can_block():
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:
                                await callback(message)
                            set_read_offset(tp, offset)
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

    _patch_fetch_wait()
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
        stream_buffer_maxsize=max(4096, 2 * settings.batch_max),
        broker_max_poll_records=max(500, settings.batch_max),
        # offsets are committed only for acked events; waiting for an empty stream at
        # shutdown would process records after the predictor executor is gone
        stream_wait_empty=False,
        **kw,
    )


async def take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[list[Any]]:
    """Faust's ``Stream.take_events`` with one change: a batch is handed over as soon as no
    further event is queued, not only when it is full or ``within`` expired.

    ``take_events`` stops buffering while the caller processes a batch and then waits the
    full ``within`` for the next one, so batches stay as small as ``within`` x Faust's
    per-event rate (about 300 records at 20 ms here) even when thousands are queued, and a
    lone record at a low rate always waits ``within``. Here a quiet stream gives one-record
    batches at once (latency), a backlog gives ``max_``-record batches (throughput).
    Acking is as in ``take_events``: a batch's events are acked when the caller asks for
    the next batch, i.e. after it has published everything the batch produced.
    """
    from mode.utils.futures import notify

    events: list[Any] = []
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future | None = None
    queue = getattr(stream.channel, "queue", None)
    queue_empty = queue.empty if queue is not None else (lambda: False)
    channel_it = aiter(stream.channel)
    stream_enable_acks = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming
        try:
            if buffer_consuming is not None:  # the caller is processing the last batch
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            events.append(event)
            if len(events) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)  # never more than max_ per batch
            elif queue_empty():
                buffer_full.set()  # nothing else is waiting: hand over what we have
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take_batches buffer: %r", exc)
            await stream.crash(exc)
        return value

    # acks are ours: the events of a batch are acked after the caller is done with it
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)  # noqa: SLF001 - exactly what take_events does
    if queue is not None:
        _BATCH_QUEUES.append(queue)
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(buffer_full, timeout=within)
            if events:
                buffer_consuming = stream.loop.create_future()
                try:
                    yield list(events)
                finally:
                    for event in events:
                        await stream.ack(event)
                    events.clear()
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_consumed.set()
    finally:
        if queue is not None and queue in _BATCH_QUEUES:
            _BATCH_QUEUES.remove(queue)
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)  # noqa: SLF001


class KafkaWorker:
    """Faust app + :class:`PipelineCore` + :class:`Publisher`."""

    def __init__(self, settings: Settings, predictor: Predictor, metrics: WorkerMetrics | None = None) -> None:
        import redis.asyncio as aioredis

        self.settings = settings
        self.metrics = metrics or WorkerMetrics.create()
        self.metrics.info.info({"consumer_group": settings.consumer_group, "telemetry_topic": settings.telemetry_topic})
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2, **settings.redis_kwargs()
        )
        self.store = WindowStore(self.redis, settings.key_prefix, settings.window_ttl_s)
        self.core = PipelineCore(self.store, predictor, self.metrics)
        self.io_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bwp-produce")
        self.publisher = Publisher(settings, self.metrics, self.io_executor)
        self.app = make_app(settings)
        self.topic = self.app.topic(settings.telemetry_topic, key_type=bytes, value_type=bytes, internal=False)
        self.batches = 0
        self._install()

    def _install(self) -> None:
        s = self.settings
        app = self.app

        @app.agent(self.topic, concurrency=1, name="bwp-decide")
        async def decide(stream: Any) -> None:
            async for events in take_batches(stream, s.batch_max, s.batch_timeout_s):
                await self.handle(events)

        @app.timer(interval=2.0)
        async def lag() -> None:
            self._update_lag()

    async def handle(self, events: Sequence[Any]) -> None:
        """Process one micro-batch of Faust events; returns only when its outputs are acknowledged."""
        try:
            batch = [
                InRecord(e.message.value, e.message.key, e.message.topic, e.message.partition, e.message.offset)
                for e in events
            ]
            await self.core.run(batch, self._publish)
            self.batches += 1
        except BaseException as exc:
            # Shutdown (or a bug) mid-batch: take_events acks the batch's events when
            # its generator is closed, which would let Faust commit offsets of records
            # whose decisions were never published. Marking the messages as already
            # acked turns those acks into no-ops, so the records are redelivered.
            for e in events:
                e.message.acked = True
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            # Anything else is a bug (Redis, predictor and produce failures are retried
            # inside). Carrying on would leave a hole below which Faust never commits
            # again; exit instead and let the supervisor restart us - redelivery and the
            # window store's ack seqs make the restart lossless and duplicate-free.
            log.critical("unexpected error in a micro-batch, exiting (code 70) for a clean restart", exc_info=True)
            logging.shutdown()
            os._exit(70)

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
        attach_reloader(w.app, w.core, settings, metrics)
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
