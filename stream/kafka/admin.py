"""Topic administration: create the pipeline's topics and wait until the broker serves them."""

from __future__ import annotations

import time
from collections.abc import Iterable

from stream.core.errors import StackError
from stream.core.settings import Settings


def create_topics(
    settings: Settings, topics: Iterable[str], partitions: int, bootstrap: str | None = None, timeout_s: float = 30.0
) -> None:
    """Create Kafka topics with ``partitions`` partitions; already existing ones are fine."""
    from confluent_kafka import KafkaError, KafkaException  # confluent-kafka: only code that talks to a broker
    from confluent_kafka.admin import AdminClient, NewTopic  # confluent-kafka: only code that talks to a broker

    cfg = settings.confluent_config()
    if bootstrap:
        cfg["bootstrap.servers"] = bootstrap
    admin = AdminClient(cfg)
    deadline = time.monotonic() + timeout_s
    while True:  # the broker may still be starting
        try:
            admin.list_topics(timeout=2)
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise StackError(f"Kafka at {cfg['bootstrap.servers']} did not answer: {exc}") from exc
            time.sleep(0.2)
    wanted = list(dict.fromkeys(topics))
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in wanted])
    for topic, fut in futures.items():
        try:
            fut.result(timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise StackError(f"cannot create topic {topic!r}: {err}") from exc
