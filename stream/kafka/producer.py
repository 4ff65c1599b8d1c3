"""Producing to Kafka with confluent-kafka: one way to hand a record to librdkafka and one way
to count what the broker acknowledged, shared by the worker, the simulator's publisher and replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: How long to serve delivery reports when librdkafka's local queue is full before trying again.
BACKOFF_S = 0.05


def produce(
    producer: Any,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Any = None,
    on_delivery: Any = None,
) -> None:
    """Hand one record to ``producer``; while its local queue is full, serve delivery reports and retry.

    ``BufferError`` only says that the client's queue is full: the record was not taken, and
    it will be once deliveries drain, so waiting (never dropping) is the only right answer.
    """
    while True:
        try:
            if headers is None:  # test doubles (and older clients) take no headers argument
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            else:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(BACKOFF_S)


@dataclass
class DeliveryCounter:
    """A delivery-report callback that counts acknowledged and failed records.

    Pass :meth:`on_delivery` as ``on_delivery``. ``errors`` keeps the first ``keep_errors``
    error texts; with ``keep_failed`` the failed messages themselves are kept (to retry them).
    """

    keep_errors: int = 10
    keep_failed: bool = False
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    failed_messages: list[tuple[Any, Any]] = field(default_factory=list)

    def on_delivery(self, err: Any, msg: Any) -> None:
        """Librdkafka's delivery callback: ``err`` is None on success."""
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if len(self.errors) < self.keep_errors:
            self.errors.append(str(err))
        if self.keep_failed:
            self.failed_messages.append((err, msg))

    def take_failed(self) -> list[tuple[Any, Any]]:
        """The failed messages kept so far, and forget them."""
        out, self.failed_messages = self.failed_messages, []
        return out
