"""Publish telemetry to Kafka with confluent-kafka, optionally paced to a target rate.

``bwp simulate``, ``bwp demo`` and ``bwp bench pipeline`` share this code:
``TelemetryPublisher(settings).publish_paced(sim, steps, rate, stop_event)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from simulator.pacing import PublishStats, paced_chunks
from stream.core.records import Telemetry
from stream.core.settings import Settings
from stream.kafka.producer import DeliveryCounter, produce

#: Producer settings tuned for many small records: big batches, deep queue, and a linger of
#: 20 ms. Fewer, bigger record batches are cheaper for any broker, and for the embedded tansu
#: much cheaper: its fetch cost grows with the batches stored per partition. At 5,000
#: records/s a 20 ms linger (against 5) cut p99 produce-to-decision latency from about 150 to
#: 110 ms, the linger itself included (docs/pipeline.md, Performance).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
}


class TelemetryPublisher:
    """A confluent-kafka Producer for the telemetry topic, counting deliveries.

    ``produced`` counts records handed to librdkafka, ``delivered`` / ``failed`` count
    delivery reports (``errors`` keeps the first few messages).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str | None = None,
        producer: Any = None,
        **producer_config: Any,
    ) -> None:
        self.topic = topic or settings.telemetry_topic
        if producer is None:
            from confluent_kafka import Producer  # confluent-kafka: only code that talks to a broker

            cfg = settings.confluent_config(**{**PRODUCER_DEFAULTS, **producer_config})
            producer = Producer(cfg)
        self._producer = producer
        self.produced = 0
        self._deliveries = DeliveryCounter(keep_errors=10)

    @property
    def delivered(self) -> int:
        """Records the broker acknowledged."""
        return self._deliveries.delivered

    @property
    def failed(self) -> int:
        """Records whose delivery failed."""
        return self._deliveries.failed

    @property
    def errors(self) -> list[str]:
        """The first few delivery errors."""
        return self._deliveries.errors

    def _produce(self, key: bytes, value: bytes) -> None:
        produce(self._producer, self.topic, value, key, on_delivery=self._deliveries.on_delivery)
        self.produced += 1

    def publish_payloads(self, payloads: Iterable[tuple[bytes, bytes]]) -> int:
        """Produce pre-encoded (key, value) pairs; returns how many were produced."""
        n = 0
        for key, value in payloads:
            self._produce(key, value)
            n += 1
        self._producer.poll(0)
        return n

    def publish(self, records: Iterable[Telemetry]) -> int:
        """Produce records (key = link_id, value = ``to_bytes()``); returns how many."""
        return self.publish_payloads((r.link_id.encode(), r.to_bytes()) for r in records)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Flush (at most ``timeout`` s), then release the client, so that it stops trying to
        reconnect once the broker is gone (the demo stops its broker right after). Returns
        how many records stayed undelivered; with some left the client is not closed,
        because librdkafka's ``close`` would wait for them again."""
        left = self._producer.flush(timeout)
        close = getattr(self._producer, "close", None)  # confluent-kafka >= 2.x; absent on test doubles
        if left == 0 and close is not None:
            close()
        return left

    def publish_paced(
        self,
        sim: Any,
        steps: int | None,
        rate: float | None,
        stop_event: threading.Event | None = None,
        progress: Callable[[PublishStats], None] | None = None,
        progress_every_s: float = 2.0,
    ) -> PublishStats:
        """Publish ``steps`` steps of ``sim`` (a FleetSimulator; None = until ``stop_event``).

        ``rate`` is records per second in total (None = as fast as possible). Chunks of about
        10 ms of records are paced, so a slow rate over many links is smooth, not bursty.
        Does not flush: call :meth:`flush` afterwards.
        """
        stats = PublishStats()
        for chunk in paced_chunks(sim, steps, rate, stats, stop_event, progress, progress_every_s):
            self.publish_payloads(chunk.payloads)
        return stats
