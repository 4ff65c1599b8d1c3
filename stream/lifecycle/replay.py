"""``bwp replay``: recorded or imported telemetry files back into Kafka.

Order: records are published sorted by ``(ts_ms, seq)`` (stable, so equal keys
keep file order), keyed by ``link_id`` (one link = one partition = per-link order
kept by Kafka). Files are first scanned for their ``ts_ms`` range (recorded parts
carry it in their manifest); files whose ranges overlap are merged together and
files that do not overlap are replayed one group after the other, so memory is
bounded by the largest set of overlapping files, not the whole recording.

Timing: a record with timestamp ``ts`` is sent ``(ts - ts_first) / speed``
seconds after the start; ``speed = max`` sends as fast as the producer takes.

Namespaces: :func:`namespaced` maps settings to ``<NAME>.<topic>`` topics, the
``<NAME>.<group>`` consumer group and the ``<NAME>:<prefix>`` Redis key prefix, so
a replay and a worker started with the same ``--namespace`` never touch live
windows or decisions.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from stream.core.errors import ConfigError, DataError, StackError
from stream.core.settings import Settings
from stream.kafka.producer import DeliveryCounter, produce
from stream.lifecycle.recordings import iter_sorted


def parse_time(value: str | int | None) -> int | None:
    """ISO 8601 (naive = UTC) or epoch milliseconds -> epoch ms; None stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    v = value.strip()
    if re.fullmatch(r"-?\d+", v):
        return int(v)
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00") if v.endswith("Z") else v)
    except ValueError as exc:
        raise ConfigError(f"time must be ISO 8601 (2026-11-25T13:00:00Z) or epoch ms, got {value!r}") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def parse_speed(value: str) -> float | None:
    """``max`` -> None (no waiting), else a positive factor (``1``, ``10``, ``0.5``)."""
    if value.strip().lower() == "max":
        return None
    try:
        s = float(value)
    except ValueError:
        raise ConfigError(f"--speed must be a positive number or 'max', got {value!r}") from None
    if not s > 0:
        raise ConfigError(f"--speed must be > 0 or 'max', got {value!r}")
    return s


@dataclass
class ReplayStats:
    """What a replay sent."""

    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The counters as a dict."""
        return dict(self.__dict__)


def _eta(done: int, total: int, elapsed: float) -> str:
    if done == 0 or total <= done:
        return "0 s"
    left = elapsed / done * (total - done)
    return f"{left:.0f} s" if left < 120 else f"{left / 60:.1f} min"


def replay(
    settings: Settings,
    paths: list[Path | str],
    speed: float | None = None,
    t_from: int | None = None,
    t_to: int | None = None,
    progress: TextIO | None = sys.stderr,
    producer_factory: Callable[[dict[str, Any]], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayStats:
    """Publish the records of ``paths`` to ``settings.telemetry_topic``; returns counters.

    ``speed`` None = as fast as possible. Raises :class:`DataError` when nothing is in
    range, :class:`StackError` when deliveries fail.
    """
    total, records = iter_sorted(paths, t_from, t_to)
    if total == 0:
        raise DataError(f"no telemetry records in {[str(p) for p in paths]} within the requested time range")
    # no compression: the worker's aiokafka consumer has no lz4/snappy codecs installed
    cfg = settings.confluent_config(**{"linger.ms": 20, "enable.idempotence": False})
    if producer_factory is not None:
        producer = producer_factory(cfg)
    else:
        from confluent_kafka import Producer  # confluent-kafka: only code that talks to a broker

        producer = Producer(cfg)
    stats = ReplayStats()
    deliveries = DeliveryCounter(keep_errors=5)

    topic = settings.telemetry_topic
    started = clock()
    last_say = 0.0
    t0: int | None = None
    for rec in records:
        if t0 is None:
            t0 = rec.ts_ms
            stats.first_ts_ms = rec.ts_ms
        if speed is not None:
            wait = started + (rec.ts_ms - t0) / 1000.0 / speed - clock()
            if wait > 0:
                producer.poll(0)
                sleep(wait)
        produce(producer, topic, rec.to_bytes(), rec.link_id.encode(), on_delivery=deliveries.on_delivery)
        stats.sent += 1
        stats.last_ts_ms = rec.ts_ms
        if stats.sent % 1000 == 0:
            producer.poll(0)
            now = clock()
            if progress is not None and now - last_say >= 0.5:
                el = now - started
                progress.write(
                    f"\rbwp replay: {stats.sent:,}/{total:,} records, {stats.sent / max(el, 1e-9):,.0f} rec/s, "
                    f"ETA {_eta(stats.sent, total, el)}   "
                )
                progress.flush()
                last_say = now
    left = producer.flush(30)
    stats.failed = deliveries.failed
    stats.seconds = clock() - started
    if progress is not None:
        progress.write(
            f"\rbwp replay: {stats.sent:,} records sent to {topic} in {stats.seconds:.1f} s "
            f"({stats.sent / max(stats.seconds, 1e-9):,.0f} rec/s), {stats.failed} failed\n"
        )
        progress.flush()
    if left:
        raise StackError(
            f"{left} records were still undelivered after 30 s (is Kafka at {settings.kafka_bootstrap} up?)"
        )
    if stats.failed:
        raise StackError(f"{stats.failed} of {stats.sent} records were not delivered to {topic}: {deliveries.errors}")
    return stats
