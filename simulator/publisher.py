"""Publish telemetry to Kafka with confluent-kafka, optionally paced to a target rate.

``bwp simulate``, ``bwp demo`` and ``bwp bench pipeline`` share this code:
``TelemetryPublisher(settings).publish_paced(sim, steps, rate, stop_event)``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from stream.records import Telemetry
from stream.settings import Settings

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


@dataclass
class PublishStats:
    """What a paced run did: records produced, wall seconds, steps completed, stop reason."""

    records: int = 0
    steps: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def rate(self) -> float:
        """Records per second over the run."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


class Pacer:
    """Sleeps so that ``n`` items are done no earlier than ``n / rate`` s after the start.

    ``rate=None`` never sleeps. Waiting on ``stop_event`` keeps Ctrl-C / stop responsive.
    """

    def __init__(self, rate: float | None, stop_event: threading.Event | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 records/s, got {rate}")
        self.rate = rate
        self.stop_event = stop_event
        self.t0 = time.perf_counter()

    def wait(self, done: int) -> bool:
        """Block until ``done`` items are due; False when the stop event was set."""
        if self.stop_event is not None and self.stop_event.is_set():
            return False
        if self.rate is None:
            return True
        delay = self.t0 + done / self.rate - time.perf_counter()
        if delay > 0:
            if self.stop_event is not None:
                return not self.stop_event.wait(delay)
            time.sleep(delay)
        return True


def chunk_size(links: int, rate: float | None) -> int:
    """Records per paced chunk: about 10 ms of records (a whole step when unpaced)."""
    if rate is None:
        return links
    return max(1, min(links, int(rate / 100)))


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
            from confluent_kafka import Producer  # heavy-ish import only when publishing

            cfg = settings.confluent_config(**{**PRODUCER_DEFAULTS, **producer_config})
            producer = Producer(cfg)
        self._producer = producer
        self.produced = 0
        self.delivered = 0
        self.failed = 0
        self.errors: list[str] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            if len(self.errors) < 10:
                self.errors.append(str(err))

    def _produce(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room again.
                self._producer.poll(0.05)
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
        pacer = Pacer(rate, stop_event)
        stats = PublishStats()
        chunk = chunk_size(sim.links, rate)
        t0 = pacer.t0
        next_report = t0 + progress_every_s
        while steps is None or stats.steps < steps:
            payloads = sim.payloads()
            for i in range(0, len(payloads), chunk):
                if not pacer.wait(stats.records):
                    stats.stopped = True
                    break
                stats.records += self.publish_payloads(payloads[i : i + chunk])
            if stats.stopped:
                break
            stats.steps += 1
            now = time.perf_counter()
            if progress is not None and now >= next_report:
                stats.seconds = now - t0
                progress(stats)
                next_report = now + progress_every_s
        stats.seconds = time.perf_counter() - t0
        return stats
