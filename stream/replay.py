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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from stream.errors import ConfigError, DataError, StackError
from stream.jsonl import read_jsonl
from stream.records import Telemetry
from stream.recorder import read_manifest, recording_files
from stream.settings import Settings

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def namespaced(settings: Settings, name: str | None) -> Settings:
    """Settings whose topics, consumer group and Redis keys live in namespace ``name``.

    ``None`` or ``""`` returns ``settings`` unchanged. Topics become
    ``<name>.<topic>``, the group ``<name>.<group>``, the key prefix
    ``<name>:<prefix>`` (``replay1:bwp``).
    """
    if not name:
        return settings
    if not _NAMESPACE_RE.fullmatch(name):
        raise ConfigError(f"namespace must be 1..64 characters of [A-Za-z0-9_-], got {name!r}")
    return settings.model_copy(
        update={
            "telemetry_topic": f"{name}.{settings.telemetry_topic}",
            "decisions_topic": f"{name}.{settings.decisions_topic}",
            "dlq_topic": f"{name}.{settings.dlq_topic}",
            "consumer_group": f"{name}.{settings.consumer_group}",
            "key_prefix": f"{name}:{settings.key_prefix}",
        }
    )


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
        t = t.replace(tzinfo=dt.timezone.utc)
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
class FileInfo:
    """One telemetry file's record count and ts_ms range."""

    path: Path
    records: int
    ts_min: int
    ts_max: int


def scan_files(paths: list[Path | str] | Path | str) -> list[FileInfo]:
    """Count records and ts range of every telemetry file under ``paths`` (manifests when present)."""
    infos = []
    for f in recording_files(paths):
        man = read_manifest(f)
        if man is not None and man.get("records") is not None and man.get("ts_ms") and None not in man["ts_ms"]:
            infos.append(FileInfo(f, int(man["records"]), int(man["ts_ms"][0]), int(man["ts_ms"][1])))
            continue
        if man is not None and man.get("records") == 0:
            continue  # a part with only invalid records
        n, lo, hi = 0, None, None
        for r in read_jsonl(f):
            n += 1
            lo = r.ts_ms if lo is None else min(lo, r.ts_ms)
            hi = r.ts_ms if hi is None else max(hi, r.ts_ms)
        if n:
            infos.append(FileInfo(f, n, lo, hi))  # type: ignore[arg-type]
    return infos


def _groups(infos: list[FileInfo]) -> list[list[FileInfo]]:
    """Files grouped so that groups' ts ranges do not overlap, in time order."""
    groups: list[list[FileInfo]] = []
    hi = None
    for fi in sorted(infos, key=lambda f: (f.ts_min, f.ts_max, str(f.path))):
        if groups and hi is not None and fi.ts_min <= hi:
            groups[-1].append(fi)
            hi = max(hi, fi.ts_max)
        else:
            groups.append([fi])
            hi = fi.ts_max
    return groups


def iter_sorted(
    paths: list[Path | str] | Path | str, t_from: int | None = None, t_to: int | None = None
) -> tuple[int, Iterator[Telemetry]]:
    """(upper bound of the record count, records sorted by (ts_ms, seq), within [t_from, t_to])."""
    infos = [
        fi
        for fi in scan_files(paths)
        if (t_from is None or fi.ts_max >= t_from) and (t_to is None or fi.ts_min <= t_to)
    ]
    total = sum(fi.records for fi in infos)

    def gen() -> Iterator[Telemetry]:
        for group in _groups(infos):
            # path order inside a group, so the stable sort keeps file order for equal keys
            recs = [
                r
                for r in read_jsonl(sorted(fi.path for fi in group))
                if (t_from is None or r.ts_ms >= t_from) and (t_to is None or r.ts_ms <= t_to)
            ]
            recs.sort(key=lambda r: (r.ts_ms, r.seq))
            yield from recs

    return total, gen()


@dataclass
class ReplayStats:
    """What a replay sent."""

    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
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
        from confluent_kafka import Producer

        producer = Producer(cfg)
    stats = ReplayStats()
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            stats.failed += 1
            if len(errors) < 5:
                errors.append(str(err))

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
        value = rec.to_bytes()
        while True:
            try:
                producer.produce(topic, value=value, key=rec.link_id.encode(), on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
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
    stats.seconds = clock() - started
    if progress is not None:
        progress.write(
            f"\rbwp replay: {stats.sent:,} records sent to {topic} in {stats.seconds:.1f} s "
            f"({stats.sent / max(stats.seconds, 1e-9):,.0f} rec/s), {stats.failed} failed\n"
        )
        progress.flush()
    if left:
        raise StackError(f"{left} records were still undelivered after 30 s (is Kafka at {settings.kafka_bootstrap} up?)")
    if stats.failed:
        raise StackError(f"{stats.failed} of {stats.sent} records were not delivered to {topic}: {errors}")
    return stats
