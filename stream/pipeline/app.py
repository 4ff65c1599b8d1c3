"""The Faust app and :class:`KafkaWorker`: the at-least-once intake, the batch loop's stages,
lag and commit bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stream.core.compression import profile_from
from stream.core.settings import Settings
from stream.kafka.security import faust_broker_kwargs
from stream.metrics.worker import WorkerMetrics
from stream.pipeline._faust_compat import (
    _patch_drain,
    _patch_fetch_wait,
    committed_offset,
)
from stream.pipeline.aci import AciParams
from stream.pipeline.core import BatchOutput, PipelineCore
from stream.pipeline.feed import _BULK_FEEDS, BulkFeed
from stream.pipeline.heap import HeapGuard
from stream.pipeline.model import PredictorLike
from stream.pipeline.publisher import Publisher
from stream.pipeline.redis_window import WindowStore
from stream.pipeline.routes import RouteStore
from stream.pipeline.window import retry_forever

log = logging.getLogger(__name__)


def make_app(settings: Settings) -> Any:
    """The Faust app: group = ``settings.consumer_group``, raw bytes in, no tables, no web server."""
    import faust  # Faust: only the worker's Kafka intake needs it

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

    def __init__(self, settings: Settings, predictor: PredictorLike, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics.create()
        self.metrics.info.info({"consumer_group": settings.consumer_group, "telemetry_topic": settings.telemetry_topic})
        self.redis = settings.redis_client(asyncio=True)
        self.store = WindowStore(self.redis, settings.key_prefix, settings.window_ttl_s)
        routes = RouteStore(
            self.redis, settings.key_prefix, settings.window_ttl_s, settings.routes_stale_s, settings.routes_interval_s
        )
        self.core = PipelineCore(
            self.store,
            predictor,
            self.metrics,
            schema_version=settings.decisions_schema_version,
            compression_profile=profile_from(settings.compression_profile),
            compression_horizon=settings.compression_horizon,
            routes=routes,
            aci=AciParams(settings.aci_gamma),
        )
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
        async def on_revoked(_app: Any, _revoked: Any, **_kwargs: Any) -> None:
            # Faust seeks every partition back to its committed offset after a
            # rebalance; what is queued here would be read again (or by another worker).
            dropped = self.feed.clear()
            if dropped:
                log.info(
                    "rebalance: dropped %d queued records; they are read again from the committed offsets", dropped
                )

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
                committed = committed_offset(consumer, tp)  # Faust's private bookkeeping: see _faust_compat
                if hw is not None:
                    self.metrics.consumer_lag.labels(str(tp.partition)).set(max(0, hw - (committed or 0)))
        except Exception as exc:
            log.debug("lag metric: %r", exc)

    async def start_redis(self) -> None:
        """Load the window scripts into Redis, retrying until Redis answers."""
        await retry_forever(
            "redis script load", self.store.load_scripts, on_error=lambda e: self.metrics.redis_errors.inc()
        )

    def run(self, loglevel: str = "WARNING") -> int:
        """Run until SIGTERM/SIGINT. Returns the exit code."""
        import faust  # Faust: only the worker's Kafka intake needs it

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
