"""Decision and dead-letter publishing for the worker: produce without blocking the event loop,
count deliveries, and wait for the broker's acks before offsets are committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stream.core.settings import Settings
from stream.kafka.producer import DeliveryCounter, produce
from stream.metrics.worker import WorkerMetrics
from stream.pipeline.core import BatchOutput

log = logging.getLogger(__name__)


# --- Kafka ------------------------------------------------------------------------------------
class Publisher:
    """librdkafka producer for decisions, route rankings and dead letters; :meth:`publish` returns when the broker acked all."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, executor: ThreadPoolExecutor) -> None:
        from confluent_kafka import Producer  # confluent-kafka: only code that talks to a broker

        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.producer = Producer(
            settings.confluent_config(**{"linger.ms": 2, "acks": "all", "message.timeout.ms": 30_000})
        )
        self._deliveries = DeliveryCounter(keep_errors=0, keep_failed=True)

    def _produce_all(self, items: Sequence[tuple[str, bytes | None, bytes | None, Any]]) -> None:
        producer, cb = self.producer, self._deliveries.on_delivery
        for topic, value, key, headers in items:
            produce(producer, topic, value, key, headers, cb)
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
        items.extend((s.routes_topic, rk.to_bytes(), rk.route_group.encode(), None) for rk in out.rankings)
        if not items:
            return
        loop = asyncio.get_running_loop()
        delay = 0.1
        while items:
            await loop.run_in_executor(self.executor, self._produce_all, items)
            failed = self._deliveries.take_failed()
            items = [(m.topic(), m.value(), m.key(), m.headers()) for _, m in failed]
            if items:
                self.metrics.produce_errors.inc(len(items))
                log.warning(
                    "produce: %d messages not acknowledged (%s), retrying in %.1fs",
                    len(items),
                    failed[0][0],
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    def close(self) -> None:
        """Flush what is left (at most 5 s)."""
        self.producer.flush(5)
