"""``bwp record``: the telemetry topic to hourly gzip JSON-lines files, restart-safe.

The files' layout, manifests and compaction are described in :mod:`stream.lifecycle.recordings`.

Restart safety (no record lost, none duplicated):

1. Consumed records are buffered in memory; the consumer never auto-commits.
2. A flush (every ``flush_records`` records or ``flush_interval_s`` seconds, on
   shutdown and before partitions are revoked) writes, per hour touched, a data
   part and its manifest to temporary names, ``fsync``s them, renames the data part
   and then the manifest into place, and ``fsync``s the folder.
3. Only then are the consumed offsets committed (synchronously).

A crash before 3 leaves parts whose offsets are not committed: after a restart the
consumer re-reads them, and every message whose offset is at or below the highest
offset any manifest records for its partition is skipped (counted as
``duplicates_skipped``). A data part without a manifest (crash between the two
renames) is an unfinished flush and is deleted at start-up; its records were not
committed either, so they are consumed again. One recorder per output directory
(an ``flock`` on ``.recorder.lock`` enforces it).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stream.core.errors import DataError, StackError, TelemetryDecodeError
from stream.core.fileio import ExclusiveLock, fsync_dir, lines_temp
from stream.core.records import Telemetry
from stream.core.settings import Settings
from stream.lifecycle.recordings import (
    _ANY_PART_RE,
    INVALID_SUFFIX,
    MANIFEST_SUFFIX,
    commit_part,
    hour_of,
    manifest_path,
    offset_runs,
    remove_part,
    replaced_stems,
    write_merged_part,
)

LOCK_FILE = ".recorder.lock"


@dataclass
class _Bucket:
    """Records of one hour waiting for the next flush."""

    lines: list[bytes] = field(default_factory=list)
    invalid: list[bytes] = field(default_factory=list)
    # (topic, partition) -> offsets, in consumption (= offset) order
    offsets: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    ts_min: int | None = None
    ts_max: int | None = None


@dataclass
class RecorderStats:
    """Counters shown in the progress line and returned by :meth:`Recorder.run`."""

    consumed: int = 0
    recorded: int = 0
    invalid: int = 0
    duplicates_skipped: int = 0
    parts_written: int = 0
    orphans_removed: int = 0
    commits: int = 0
    compactions: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return dict(self.__dict__)


class Recorder:
    """Consume ``settings.telemetry_topic`` in its own group and write hourly parts under ``out_dir``."""

    def __init__(
        self,
        settings: Settings,
        out_dir: Path | str,
        group: str = "bwp-recorder",
        max_records: int | None = None,
        idle_exit_s: float | None = None,
        flush_records: int = 50_000,
        flush_interval_s: float = 30.0,
        progress: TextIO | None = sys.stderr,
        consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
        compact_grace_ms: int | None = 600_000,
    ) -> None:
        self.settings = settings
        self.out = Path(out_dir)
        self.group = group
        self.max_records = max_records
        self.idle_exit_s = idle_exit_s
        self.flush_records = flush_records
        self.flush_interval_s = flush_interval_s
        self.progress = progress
        self._consumer_factory = consumer_factory
        self.stats = RecorderStats()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._buffered = 0
        self._next: dict[tuple[str, int], int] = {}  # offsets to commit at the next flush
        self._recorded_hw: dict[tuple[str, int], int] = {}  # highest offset in any manifest
        self._part_no: dict[tuple[str, str], int] = {}
        self._live: dict[tuple[str, str], int] = {}  # parts (manifests) per hour on disk
        self._max_ts: int | None = None  # newest valid ts_ms recorded or buffered
        self.compact_grace_ms = compact_grace_ms
        self._stop = False
        self._held_lock: Any = None
        self._consumer: Any = None
        self._assigned_at: float | None = None

    # --- start-up: lock, orphans, what is already recorded ---------------------------------
    def _lock(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        lock = ExclusiveLock(
            self.out / LOCK_FILE, f"another `bwp record` is already writing to {self.out} (lock {self.out / LOCK_FILE})"
        )
        lock.acquire()
        self._held_lock = lock

    def scan(self) -> None:
        """Finish interrupted compactions, delete unfinished parts, read every manifest
        (offset high-water marks, part numbers, parts per hour, newest ts)."""
        for day in sorted(p for p in self.out.iterdir() if p.is_dir()):
            for tmp in day.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)  # a flush that never reached its rename
            for stem in replaced_stems(day):
                # a compaction committed (its manifest exists) but died before removing its inputs
                remove_part(day, stem)
            for f in sorted(day.iterdir()):
                m = _ANY_PART_RE.match(f.name)
                if not m:
                    continue
                key = (day.name, m.group(1))
                self._part_no[key] = max(self._part_no.get(key, 0), int(m.group(2)))
                if f.name.endswith(MANIFEST_SUFFIX):
                    self._live[key] = self._live.get(key, 0) + 1
                    continue
                if not (day / f"{m.group(1)}.part-{m.group(2)}{MANIFEST_SUFFIX}").is_file():
                    # renamed before its manifest: offsets never committed, records come again
                    f.unlink()
                    self.stats.orphans_removed += 1
            for man in sorted(day.glob(f"*{MANIFEST_SUFFIX}")):
                try:
                    meta = json.loads(man.read_text(encoding="utf-8"))
                    for topic, parts in meta["offsets"].items():
                        for p, ranges in parts.items():
                            tp = (topic, int(p))
                            hi = max(r[1] for r in ranges)
                            self._recorded_hw[tp] = max(self._recorded_hw.get(tp, -1), hi)
                    if meta.get("records") and meta["ts_ms"][1] is not None:
                        self._max_ts = max(self._max_ts or 0, int(meta["ts_ms"][1]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise DataError(f"recording manifest {man} is not valid: {exc}") from exc

    # --- consuming ---------------------------------------------------------------------------
    def _make_consumer(self) -> Any:
        cfg = self.settings.confluent_config(
            **{
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "session.timeout.ms": int(self.settings.broker_session_timeout_s * 1000),
                "heartbeat.interval.ms": int(min(3.0, self.settings.broker_session_timeout_s / 3) * 1000),
            }
        )
        if self._consumer_factory is not None:
            return self._consumer_factory(cfg)
        from confluent_kafka import Consumer  # confluent-kafka: only code that talks to a broker

        return Consumer(cfg)

    def _on_assign(self, consumer: Any, partitions: Any) -> None:
        self._assigned_at = time.monotonic()

    def _on_revoke(self, consumer: Any, partitions: Any) -> None:
        # our buffered records of these partitions must be on disk and committed before another
        # member of the group takes over, or it would record them a second time
        self.flush()

    def _add(self, msg: Any) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        tp = (topic, partition)
        self.stats.consumed += 1
        self._next[tp] = offset + 1
        if offset <= self._recorded_hw.get(tp, -1):
            self.stats.duplicates_skipped += 1
            return
        raw = msg.value()
        try:
            rec = Telemetry.from_bytes(raw)
            ts = rec.ts_ms
            self._max_ts = ts if self._max_ts is None else max(self._max_ts, ts)
            line = raw if b"\n" not in raw and b"\r" not in raw else rec.to_bytes()
            invalid = None
        except TelemetryDecodeError as exc:
            kts = msg.timestamp()[1] if msg.timestamp() and msg.timestamp()[0] else -1
            ts = kts if kts and kts > 0 else int(time.time() * 1000)
            line = None
            invalid = json.dumps(
                {
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "timestamp_ms": kts if kts and kts > 0 else None,
                    "error": str(exc),
                    "value_b64": base64.b64encode(raw or b"").decode(),
                },
                separators=(",", ":"),
            ).encode()
        b = self._buckets.get(hour_of(ts))
        if b is None:
            b = self._buckets[hour_of(ts)] = _Bucket()
        if line is not None:
            b.lines.append(line)
            self.stats.recorded += 1
        else:
            b.invalid.append(invalid)  # type: ignore[arg-type]
            self.stats.invalid += 1
        b.offsets[tp].append(offset)
        b.ts_min = ts if b.ts_min is None else min(b.ts_min, ts)
        b.ts_max = ts if b.ts_max is None else max(b.ts_max, ts)
        self._buffered += 1

    def flush(self) -> None:
        """Write every buffered hour as a durable part + manifest, then commit the offsets."""
        for (day, hour), b in sorted(self._buckets.items()):
            d = self.out / day
            d.mkdir(parents=True, exist_ok=True)
            n = self._part_no.get((day, hour), 0) + 1
            self._part_no[(day, hour)] = n
            stem = f"{hour}.part-{n:04d}"
            part = d / f"{stem}.jsonl.gz"
            offsets: dict[str, dict[str, list[list[int]]]] = defaultdict(dict)
            for (topic, p), offs in sorted(b.offsets.items()):
                offsets[topic][str(p)] = offset_runs(offs)
            manifest = {
                "file": part.name if b.lines else None,
                "invalid_file": f"{stem}{INVALID_SUFFIX}" if b.invalid else None,
                "hour_utc": f"{day}T{hour}:00:00Z",
                "records": len(b.lines),
                "invalid": len(b.invalid),
                "ts_ms": [b.ts_min, b.ts_max],
                "offsets": offsets,
                "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            tmp_data = lines_temp(part, b.lines, gz=True) if b.lines else None
            tmp_inv = lines_temp(d / f"{stem}{INVALID_SUFFIX}", b.invalid, gz=True) if b.invalid else None
            tmp_man = lines_temp(manifest_path(part), [json.dumps(manifest, indent=2).encode()], gz=False)
            commit_part(part, tmp_data, tmp_inv, tmp_man)
            fsync_dir(self.out)
            for tp, offs in b.offsets.items():
                self._recorded_hw[tp] = max(self._recorded_hw.get(tp, -1), max(offs))
            self._live[(day, hour)] = self._live.get((day, hour), 0) + 1
            self.stats.parts_written += 1
        self._buckets.clear()
        self._buffered = 0
        self._commit()
        if self.compact_grace_ms is not None:
            self._compact_closed()

    def _compact_closed(self) -> None:
        """Merge the parts of every hour that ended ``compact_grace_ms`` before the newest record."""
        if self._max_ts is None:
            return
        for (day, hour), n in sorted(self._live.items()):
            end = int(dt.datetime.fromisoformat(f"{day}T{hour}:00:00+00:00").timestamp() * 1000) + 3_600_000
            if n >= 2 and end + self.compact_grace_ms <= self._max_ts:
                self.compact(day, hour)

    def compact(self, day: str, hour: str) -> str | None:
        """Merge every part of one hour into a single new part; returns its name (None: nothing to do).

        Crash-safe: the merged part and its manifest (which lists the parts it
        ``replaces``) are written and renamed like any part; only then are the old
        parts removed. A crash in between leaves both; :meth:`scan` (and
        :func:`recording_files`, for readers) then ignore the replaced parts.
        Streams the data, so memory stays small whatever the hour's size.
        """
        d = self.out / day
        mans = sorted(d.glob(f"{hour}.part-*{MANIFEST_SUFFIX}"))
        if len(mans) < 2:
            return None
        n = self._part_no.get((day, hour), 0) + 1
        self._part_no[(day, hour)] = n
        part, replaces = write_merged_part(d, day, hour, f"{hour}.part-{n:04d}", mans)
        self._after_compaction_commit()
        for old in replaces:
            remove_part(d, old)
        fsync_dir(d)
        self._live[(day, hour)] = 1
        self.stats.compactions += 1
        return part.name

    def _after_compaction_commit(self) -> None:
        """Test hook: a crash here leaves merged and replaced parts side by side."""

    def _commit(self) -> None:
        if not self._next or self._consumer is None:
            return
        from confluent_kafka import KafkaException, TopicPartition  # confluent-kafka: only code that talks to a broker

        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(self._next.items())]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            # the files are durable; an uncommitted offset only means re-reading (and skipping) later
            print(f"bwp record: warning: offset commit failed, will retry at the next flush: {exc}", file=sys.stderr)
            return
        self.stats.commits += 1
        self._next.clear()

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish: flush, commit and close (signal-handler safe)."""
        self._stop = True

    def _say(self, started: float, final: bool = False) -> None:
        if self.progress is None:
            return
        s = self.stats
        rate = s.consumed / max(1e-9, time.monotonic() - started)
        self.progress.write(
            f"\rbwp record: {s.recorded} recorded, {s.invalid} invalid, {s.duplicates_skipped} duplicates skipped, "
            f"{s.parts_written} parts, {rate:,.0f} rec/s" + ("\n" if final else "")
        )
        self.progress.flush()

    def run(self, install_signals: bool = True) -> RecorderStats:
        """Consume until stopped (signal, ``max_records`` or ``idle_exit_s``); returns the counters."""
        self._lock()
        old_handlers = {}
        try:
            self.scan()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    old_handlers[sig] = signal.signal(sig, self.stop)
            self._consumer = self._make_consumer()
            self._consumer.subscribe(
                [self.settings.telemetry_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
            )
            started = last_msg = last_flush = last_say = time.monotonic()
            while not self._stop:
                msgs = self._consumer.consume(num_messages=1000, timeout=0.2)
                now = time.monotonic()
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise StackError(f"Kafka consumer failed: {err}")
                        continue  # transient (e.g. partition EOF / rebalance notices)
                    self._add(msg)
                    last_msg = now
                    if self.max_records is not None and self.stats.recorded + self.stats.invalid >= self.max_records:
                        self._stop = True
                        break
                if self._buffered >= self.flush_records or (
                    self._buffered and now - last_flush >= self.flush_interval_s
                ):
                    self.flush()
                    last_flush = now
                # idle time counts from the assignment: joining the group can take seconds
                if (
                    self.idle_exit_s is not None
                    and self._assigned_at is not None
                    and now - max(last_msg, self._assigned_at) >= self.idle_exit_s
                ):
                    break
                if now - last_say >= 2.0:
                    self._say(started)
                    last_say = now
            self.flush()
            self._say(started, final=True)
            return self.stats
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            if self._held_lock is not None:
                self._held_lock.release()
                self._held_lock = None
